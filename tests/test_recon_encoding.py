"""Hash grid and SDF network: tcnn-compatible layout/hash, analytic Jacobian and custom backward."""

from __future__ import annotations

import pytest
import torch

import recon.encoding as enc
from recon.encoding import HashGrid, HashGridConfig, level_layout, tcnn_available
from recon.fields import FieldConfig, NeuSField, SDFNetwork

CPU = torch.device("cpu")


def _reference_rows(grid: HashGrid, u: torch.Tensor) -> torch.Tensor:
    """tcnn's grid_index in plain int64 arithmetic: (L, N, 8) absolute table rows."""
    out = []
    offset = 0
    for scale, res, rows, dense in level_layout(grid.cfg):
        cell = torch.floor(u * torch.tensor(scale, dtype=torch.float32) + 0.5).long()  # float32, as tcnn
        per_corner = []
        for c in range(8):
            p = cell + torch.tensor([(c >> d) & 1 for d in range(3)])
            if dense:
                i = p[:, 0] + p[:, 1] * res + p[:, 2] * res * res
            else:
                i = ((p[:, 0] * 1) ^ (p[:, 1] * 2654435761) ^ (p[:, 2] * 805459861)) & 0xFFFFFFFF
            per_corner.append(i % rows + offset)
        out.append(torch.stack(per_corner, dim=-1))
        offset += rows
    return torch.stack(out)


def test_layout_follows_tcnn():
    cfg = HashGridConfig(n_levels=16, log2_hashmap_size=19, base_resolution=16, max_resolution=2048)
    layout = level_layout(cfg)
    assert cfg.per_level_scale == pytest.approx(1.3819, abs=1e-4)  # the reference's (2048/16)^(1/15)
    assert layout[0] == (15.0, 16, 4096, True)  # 16^3 = 4096 rows, indexed densely
    assert all(rows == 2**19 and not dense for _, _, rows, dense in layout[5:])
    assert all(rows % 8 == 0 for _, _, rows, _ in layout)


def test_corner_rows_match_int64_reference():
    cfg = HashGridConfig(n_levels=12, log2_hashmap_size=15, base_resolution=8, max_resolution=1024)
    grid = HashGrid(cfg, generator=torch.Generator().manual_seed(0))
    u = torch.rand(2000, 3, generator=torch.Generator().manual_seed(1))
    u[:5] = torch.tensor(
        [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.5], [0.5, 1.0, 0.0], [1e-7, 1 - 1e-7, 0.5]]
    )
    idx, _ = grid._corner_rows(u, cfg.n_levels)
    assert torch.equal(idx.long(), _reference_rows(grid, u))


@pytest.mark.parametrize("contraction", ["matmul", "elementwise"])
def test_features_and_table_gradient_match_autograd(contraction):
    cfg = HashGridConfig(n_levels=6, log2_hashmap_size=10, base_resolution=4, max_resolution=64)
    grid = HashGrid(cfg, generator=torch.Generator().manual_seed(0), contraction=contraction).double()
    with torch.no_grad():
        grid.table.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(2))
    grid.set_active_levels(5)
    u = torch.rand(300, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    weights = torch.randn(
        300, cfg.n_output_dims, generator=torch.Generator().manual_seed(4), dtype=torch.float64
    )

    fast = grid(u)
    (fast * weights).sum().backward()
    g_fast = grid.table.grad.clone()
    grid.table.grad = None
    ref = grid.reference_forward(u)
    (ref * weights).sum().backward()
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(g_fast, grid.table.grad, rtol=0, atol=1e-12)
    assert torch.all(fast[:, 5 * cfg.n_features_per_level :] == 0)  # inactive level


def _random_sdf_net() -> SDFNetwork:
    cfg = FieldConfig(
        grid=HashGridConfig(n_levels=8, log2_hashmap_size=12, base_resolution=4, max_resolution=64),
        sdf_layers=2,
    )
    gen = torch.Generator().manual_seed(0)
    net = SDFNetwork(cfg, CPU, gen).double()
    with torch.no_grad():
        net.encoding.table.normal_(0.0, 0.1, generator=gen)
        for layer in net.layers:
            layer.weight.add_(0.1 * torch.randn(layer.weight.shape, generator=gen, dtype=torch.float64))
    return net


def test_analytic_sdf_gradient_matches_autograd():
    net = _random_sdf_net()
    x = torch.rand(400, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64) - 0.5
    sdf, feat, grad = net(x, with_grad=True)
    sdf_ref, feat_ref, grad_ref = net._forward_autograd(x)
    torch.testing.assert_close(sdf, sdf_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(feat, feat_ref, rtol=0, atol=1e-12)
    # softplus switches to the identity above beta*z = 20: derivatives differ by ~e^-20 there
    torch.testing.assert_close(grad, grad_ref, rtol=0, atol=1e-7)
    assert grad.abs().mean() > 0.1  # a real gradient, not zeros


def test_eikonal_loss_gradients_match_double_backward():
    """The explicit gradient makes the eikonal loss first-order; its parameter gradients must equal
    the ones double backward gives."""
    net = _random_sdf_net()
    x = torch.rand(200, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64) - 0.5

    def grads(fn):
        net.zero_grad()
        _, _, g = fn(x)
        ((g.norm(dim=-1) - 1) ** 2).mean().backward()
        return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in net.parameters()]

    for a, b in zip(grads(lambda v: net(v, with_grad=True)), grads(net._forward_autograd), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_sphere_initialisation():
    """Geometric init: the SDF starts close to |x| - 0.5 (sign right on both sides of the sphere)."""
    field = NeuSField(FieldConfig(), CPU, generator=torch.Generator().manual_seed(0))
    pts = torch.tensor(
        [[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 0.59], [0.55, 0.0, 0.0], [0.0, -0.58, 0.0]]
    )
    sdf = field.sdf_chunked(pts)
    assert sdf[0] < -0.2 and sdf[1] < -0.1
    assert torch.all(sdf[2:] > 0)


@pytest.mark.cuda
@pytest.mark.skipif(not tcnn_available(), reason="tinycudann with CUDA not available")
def test_tcnn_equivalence():  # pragma: no cover - runs only where tinycudann is installed
    cfg = HashGridConfig(n_levels=16, log2_hashmap_size=19, base_resolution=16, max_resolution=2048)
    dev = torch.device("cuda")
    ours = HashGrid(cfg).to(dev)
    theirs = enc.TcnnHashGrid(cfg).to(dev)
    with torch.no_grad():
        ours.table.copy_(theirs.encoding.params.view_as(ours.table).float())
    u = torch.rand(10000, 3, device=dev)
    torch.testing.assert_close(ours(u), theirs(u), rtol=1e-3, atol=1e-5)


def _sh_written_out(d: torch.Tensor) -> torch.Tensor:
    """The 16 real spherical harmonics as tcnn writes them, one polynomial each (the reference)."""
    x, y, z = d.unbind(-1)
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    return torch.stack(
        [
            torch.full_like(x, 0.28209479177387814),
            -0.48860251190291987 * y,
            0.48860251190291987 * z,
            -0.48860251190291987 * x,
            1.0925484305920792 * xy,
            -1.0925484305920792 * yz,
            0.94617469575755997 * zz - 0.31539156525251999,
            -1.0925484305920792 * xz,
            0.54627421529603959 * (xx - yy),
            0.59004358992664352 * y * (-3.0 * xx + yy),
            2.8906114426405538 * xy * z,
            0.45704579946446572 * y * (1.0 - 5.0 * zz),
            0.3731763325901154 * z * (5.0 * zz - 3.0),
            0.45704579946446572 * x * (1.0 - 5.0 * zz),
            1.4453057213202769 * z * (xx - yy),
            0.59004358992664352 * x * (-xx + 3.0 * yy),
        ],
        dim=-1,
    )


def test_spherical_harmonics_as_monomials_times_a_matrix_match_the_polynomials():
    """The encoding's matrix form equals the 16 polynomials written out (values and gradients), and
    the functions are orthonormal over the sphere (mean of Y_i Y_j = delta_ij / 4 pi)."""
    from recon.fields import ColorNetwork, spherical_harmonics_deg4

    gen = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(4096, 3, generator=gen, dtype=torch.float64), dim=-1)
    torch.testing.assert_close(spherical_harmonics_deg4(d), _sh_written_out(d), rtol=0, atol=1e-14)
    d32 = d.float().requires_grad_(True)
    ref32 = d.float().requires_grad_(True)
    weights = torch.randn(4096, 16, generator=gen)
    (spherical_harmonics_deg4(d32) * weights).sum().backward()
    (_sh_written_out(ref32) * weights).sum().backward()
    torch.testing.assert_close(
        spherical_harmonics_deg4(d32.detach()), _sh_written_out(d.float()), rtol=0, atol=1e-6
    )
    torch.testing.assert_close(d32.grad, ref32.grad, rtol=1e-5, atol=1e-5)
    assert spherical_harmonics_deg4(d.view(64, 64, 3)).shape == (64, 64, 16)
    many = torch.nn.functional.normalize(torch.randn(400_000, 3, generator=gen, dtype=torch.float64), dim=-1)
    y = spherical_harmonics_deg4(many)
    gram = y.T @ y / many.shape[0] * 4 * torch.pi
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), rtol=0, atol=0.02)
    net = ColorNetwork(FieldConfig(), torch.device("cpu"))
    assert "sh_coefficients" not in net.state_dict()  # a constant, not part of a saved field
