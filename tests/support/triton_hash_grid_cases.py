"""Measurements behind tests/test_triton_hash_grid.py, runnable in-process (CUDA) or as a script (CPU,
Triton's interpreter, which must be switched on before Triton is imported: hence a subprocess).

    TRITON_INTERPRET=1 python tests/support/triton_hash_grid_cases.py CASE [CASE ...] [--e2e]

prints one JSON object: ``{case name: measure(case), ..., "e2e": end_to_end()}``.

The Triton grid and the PyTorch :class:`~recon.encoding.HashGrid` share one table and compute the
same corners and the same float32 weights (bit for bit, by construction); they differ only in the
order of float32 sums. Every difference is therefore held against the worst-case rounding bound of
those sums (Higham's ``gamma_n = n u / (1 - n u)``, ``u = 2^-24``), computed here in float64 from the
grid's own coefficients:

* features: each side sums 8 rounded products ``w_c v_c``: ``|fl - exact| <= gamma_8 sum_c |w_c v_c|``,
  so the two differ by at most ``2 gamma_8 sum_c |w_c| |v_c|``;
* Jacobian: 8 products, 7 sums and the multiplication by the level's scale ``s``:
  ``2 gamma_9 s sum_c |d_c| |v_c|`` per axis (``d_c`` the corner's derivative coefficient);
* table gradient, row ``r`` reached by ``K_r`` (point, level, corner) contributions ``t_k``: each
  ``t_k = w gf + dx gx' + dy gy' + dz gz'`` (``g' = g s``, rounded identically by both) is an inner
  product of length <= 4 (``gamma_4``), and their sum in any order (PyTorch's ``index_add_`` or the
  kernel's atomic adds) adds ``gamma_{K_r - 1}`` of the absolute sum, together at most
  ``gamma_{K_r + 3} S_r`` with ``S_r = sum_k (|w| |gf| + |dx| |gx'| + |dy| |gy'| + |dz| |gz'|)``;
  the two differ by at most twice that.

``violations`` counts elements over their bound (must be 0); ``worst`` is the largest ratio of the
difference to its bound (<= 1; typically far below: the bound is for the worst case).
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

UNIT = 2.0**-24  # float32 unit roundoff


def gamma(n: torch.Tensor | int) -> torch.Tensor | float:
    return n * UNIT / (1 - n * UNIT)


@dataclass(frozen=True)
class Case:
    """One grid and batch: ``levels`` levels of ``features`` features, ``active`` of them on,
    ``n`` points (the first ones at cube corners and faces, exactly 0 and 1), ``block`` points per
    program (small blocks: several programs and a partial last one even for small ``n``)."""

    name: str
    levels: int
    features: int
    log2_size: int
    base: int
    max_res: int
    active: int
    n: int
    block: int = 128


def _grid(case: Case, device: torch.device):
    from recon.encoding import HashGrid, HashGridConfig

    cfg = HashGridConfig(case.levels, case.features, case.log2_size, case.base, case.max_res)
    grid = HashGrid(cfg, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():  # larger than tcnn's init, so that every feature carries information
        grid.table.copy_(torch.randn(grid.table.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    grid.set_active_levels(case.active)
    return grid


def points(n: int, seed: int, device: torch.device) -> torch.Tensor:
    """``n`` points in [0, 1]^3: the cube's 8 corners, face centres and edge points first (exactly 0
    and 1), then uniform ones."""
    special = torch.tensor(
        [[(c >> d) & 1 for d in range(3)] for c in range(8)]
        + [[0.5, 0.5, 0.0], [1.0, 0.5, 0.5], [0.0, 1.0, 0.25], [1.0, 1.0, 0.75], [0.5, 0.0, 1.0]],
        dtype=torch.float32,
    )
    u = torch.rand(n, 3, generator=torch.Generator().manual_seed(seed))
    u[: min(n, len(special))] = special[:n]
    return u.to(device)


def _compare(got: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor) -> dict:
    err = (got.double() - ref.double()).abs()
    over = err > bound
    ratio = err[bound > 0] / bound[bound > 0]
    return {
        "violations": int(over.sum()),
        "worst": float(ratio.max()) if ratio.numel() else 0.0,
        "max_abs": float(err.max()) if err.numel() else 0.0,
        "finite": bool(torch.isfinite(got).all()),
    }


def _table_grad(grid, u: torch.Tensor, kernel: str, upstream: str, gf, gj) -> torch.Tensor:
    grid.kernel = kernel
    grid.table.grad = None
    if upstream == "features":  # the Jacobian-free path: forward()
        loss = (grid(u) * gf).sum()
    else:
        feats, jac = grid.forward_with_jacobian(u)
        loss = (jac * gj).sum() if upstream == "jacobian" else (feats * gf).sum() + (jac * gj).sum()
    loss.backward()
    return grid.table.grad.detach().clone()


def measure(case: Case, device: torch.device) -> dict:
    """The kernel's features, Jacobian and table gradients (upstream on both outputs, on the
    features only, on the Jacobian only) against PyTorch's, each within its rounding bound."""
    grid = _grid(case, device)
    u = points(case.n, sum(map(ord, case.name)), device)
    gen = torch.Generator().manual_seed(2)
    gf = torch.randn(case.n, grid.n_output_dims, generator=gen).to(device)
    gj = torch.randn(case.n, grid.n_output_dims, 3, generator=gen).to(device)

    from recon.kernels import hash_grid

    saved = hash_grid.BLOCK
    hash_grid.BLOCK = case.block
    try:
        grid.kernel = "torch"
        with torch.no_grad():
            ref_f, ref_j = grid.forward_with_jacobian(u)
        grid.kernel = "triton"
        with torch.no_grad():
            got_f, got_j = grid.forward_with_jacobian(u)
            got_plain = grid(u)
        grads = {
            up: (_table_grad(grid, u, "torch", up, gf, gj), _table_grad(grid, u, "triton", up, gf, gj))
            for up in ("both", "features", "jacobian")
        }
    finally:
        hash_grid.BLOCK = saved

    # the bounds, in float64 from the grid's own float32 corners and coefficients
    levels = case.active
    with torch.no_grad():
        idx, frac = grid._corner_rows(u, levels)  # (L, N, 8), (L, N, 3)
        coef = grid._coefficients(frac, with_grad=True).double().abs()  # (L, N, 4, 8): w, d/dx, d/dy, d/dz
        vals = grid.table[idx.long()].double().abs()  # (L, N, 8, F)
        sums = coef @ vals  # (L, N, 4, F): sum_c |coef_c| |v_c|
        scales = grid.scales[:levels].double()[:, None, None, None]
        f_bound = grid._to_point_major(2 * gamma(8) * sums[:, :, 0])
        j_bound = grid._to_point_major(2 * gamma(9) * (scales * sums[:, :, 1:]).transpose(-1, -2))
        # upstream gradients in level-major (L, N, F, 4): gf, then gj * scale rounded in float32
        per = case.features
        g_lm = gf[:, : levels * per].reshape(case.n, levels, per).transpose(0, 1)
        gj_lm = gj[:, : levels * per].reshape(case.n, levels, per, 3).transpose(0, 1)
        gj_lm = gj_lm * grid.scales[:levels, None, None, None]
        upstreams = {
            "both": torch.cat([g_lm[..., None], gj_lm], dim=-1),
            "features": torch.cat([g_lm[..., None], torch.zeros_like(gj_lm)], dim=-1),
            "jacobian": torch.cat([torch.zeros_like(g_lm[..., None]), gj_lm], dim=-1),
        }
        rows = idx.reshape(-1).long()
        count = torch.bincount(rows, minlength=grid.table.shape[0]).double()[:, None]
        grad_bounds = {}
        for up, g in upstreams.items():
            contrib = coef.transpose(-1, -2) @ g.double().abs().transpose(-1, -2)  # (L, N, 8, F)
            s = torch.zeros(grid.table.shape, dtype=torch.float64, device=device)
            s.index_add_(0, rows, contrib.reshape(-1, per))
            grad_bounds[up] = 2 * gamma(count + 3) * s

    out = {
        "features": _compare(got_f, ref_f, f_bound),
        "jacobian": _compare(got_j, ref_j, j_bound),
        "plain_equals_with_jacobian": bool(torch.equal(got_plain, got_f)),
        "inactive_zero": bool(
            (got_f[:, levels * case.features :] == 0).all()
            and (got_j[:, levels * case.features :] == 0).all()
        ),
        "shapes_ok": got_f.shape == ref_f.shape and got_j.shape == ref_j.shape,
        "n_dense": grid.n_dense,
    }
    for up, (ref_g, got_g) in grads.items():
        out[f"grad_{up}"] = _compare(got_g, ref_g, grad_bounds[up])
        out[f"grad_{up}"]["nonzero"] = bool((ref_g != 0).any())
    return out


def end_to_end(device: torch.device) -> dict:
    """A small :class:`~recon.fields.SDFNetwork` built with ``encoding_backend="triton"`` and the same
    network with the PyTorch grid, float32, plus a float64 copy of the latter as the exact reference:
    forward (sdf, feature, grad) and the parameter gradients of one loss with an sdf, a feature and
    an eikonal term. Per quantity: the relative L2 error against float64 of each float32 run."""
    from dataclasses import replace

    from recon.encoding import HashGridConfig
    from recon.fields import FieldConfig, SDFNetwork

    cfg = FieldConfig(
        grid=HashGridConfig(n_levels=8, log2_hashmap_size=12, base_resolution=4, max_resolution=64),
        sdf_layers=2,
        sdf_hidden=32,
    )
    ref = SDFNetwork(cfg, torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in ref.named_parameters():  # every weight non-zero (the geometric init zeroes some)
            std = 0.1 if "encoding" in name else 0.3
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    ref.encoding.set_active_levels(6)
    # built on the device: outside the interpreter the Triton backend refuses a CPU device
    fused = SDFNetwork(replace(cfg, encoding_backend="triton"), device)
    fused.load_state_dict(ref.state_dict())
    fused.encoding.set_active_levels(6)
    exact = copy.deepcopy(ref).double()
    nets = {"torch": ref.to(device), "triton": fused.to(device), "float64": exact.to(device)}
    # a few points outside the grid's box: clamped to exactly 0 or 1
    x = ((torch.rand(300, 3, generator=gen) * 2 - 1) * 0.7).to(device)

    results = {}
    for name, net in nets.items():
        xi = x.double() if name == "float64" else x
        sdf, feature, grad = net(xi)
        loss = (
            sdf.square().mean()
            + 0.1 * feature.square().mean()
            + 0.1 * (grad.norm(dim=-1) - 1).square().mean()
        )
        loss.backward()
        results[name] = {
            "sdf": sdf.detach(),
            "feature": feature.detach(),
            "grad": grad.detach(),
            **{f"d_{n}": p.grad.detach().clone() for n, p in net.named_parameters()},
        }
    out = {"kernel": fused.encoding.kernel, "quantities": {}}
    for key, exact_val in results["float64"].items():
        norm = float(exact_val.norm())
        out["quantities"][key] = {
            run: float((results[run][key].double() - exact_val).norm()) / norm for run in ("torch", "triton")
        }
        out["quantities"][key]["norm"] = norm
    return out


# Small enough for the interpreter (a few seconds in all): a grid with dense and hashed levels at
# F = 2 and F = 4, fewer active levels than levels (only dense ones, or both kinds), a hashed-only
# and a dense-only grid with F = 1 and F = 8, blocks that leave a partial last program.
INTERPRETER_CASES = (
    Case("mixed_f2", levels=6, features=2, log2_size=10, base=4, max_res=64, active=6, n=300),
    Case(
        "mixed_f4_active4", levels=6, features=4, log2_size=10, base=4, max_res=64, active=4, n=257, block=64
    ),
    Case(
        "mixed_f2_active2_dense",
        levels=6,
        features=2,
        log2_size=11,
        base=4,
        max_res=64,
        active=2,
        n=150,
        block=64,
    ),
    Case(
        "hashed_f1_active3", levels=5, features=1, log2_size=8, base=8, max_res=128, active=3, n=100, block=32
    ),
    Case("dense_f8", levels=3, features=8, log2_size=12, base=2, max_res=8, active=3, n=70, block=32),
)

# The standard preset's grid (16 levels, 2^19 rows, base 16, max 1024) at a realistic batch. CUDA only.
CUDA_CASES = (
    Case("standard_grid", levels=16, features=2, log2_size=19, base=16, max_res=1024, active=16, n=60_000),
    Case(
        "standard_grid_active9",
        levels=16,
        features=2,
        log2_size=19,
        base=16,
        max_res=1024,
        active=9,
        n=30_001,
    ),
)

CASES = {case.name: case for case in INTERPRETER_CASES + CUDA_CASES}


def main(argv: list[str]) -> int:
    device = torch.device("cpu")
    result: dict = {name: measure(CASES[name], device) for name in argv if name != "--e2e"}
    if "--e2e" in argv:
        result["e2e"] = end_to_end(device)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main(sys.argv[1:]))
