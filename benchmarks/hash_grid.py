"""Hash-grid micro-benchmark: the PyTorch HashGrid against the fused Triton kernels, on a GPU.

    python benchmarks/hash_grid.py                          # standard preset's grid, N = 65k, 262k, 350k
    python benchmarks/hash_grid.py --n 65536 --reps 50      # other batch sizes / repetitions
    python benchmarks/hash_grid.py --train-steps 200        # + K training steps per backend (spot's views)
    python benchmarks/hash_grid.py --json out.json          # the numbers as JSON too
    python benchmarks/hash_grid.py --interpret              # CPU smoke run in Triton's interpreter (tiny N)

For each N, both kernels run on the same table (random normal, std 0.1) and the same uniform points
in [0, 1]^3 at the standard preset's grid (16 levels, 2^19 rows per level, base 16, max 1024, F = 2):

* ``fwd``: ``forward_with_jacobian`` without autograd (features and Jacobian);
* ``fwd+bwd``: ``forward_with_jacobian`` and the backward of random upstream gradients on both
  outputs to the table (what one training step asks of the grid);
* ``peak MiB``: the peak allocation of one ``fwd+bwd`` above what was allocated before it;
* ``max |diff|``: features, Jacobian and table gradient, Triton against PyTorch.

Times are CUDA-event medians of ``--reps`` calls after warm-up (compilation, allocator), the L2
cache flushed before each (``norm_kernels.Timer``: in a training step other work evicts the table
between calls). Uniform
points spread the atomic adds of the backward over the table; a training batch clusters near the
surface, so ``--train-steps`` also times whole training steps of :func:`recon.train.train` with each
backend (median step, synchronised; the hull pre-fit before the first step is not in the median).
Needs CUDA and Triton, except with ``--interpret`` (timings then mean nothing: a smoke test).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = (65_536, 262_144, 350_000)
BACKENDS = ("torch", "triton")


def bench_size(n: int, cfg, timer, device) -> dict:
    import torch

    from recon.encoding import HashGrid

    gen = torch.Generator().manual_seed(0)
    grid = HashGrid(cfg, generator=gen).to(device)
    with torch.no_grad():
        grid.table.copy_(torch.randn(grid.table.shape, generator=gen) * 0.1)
    u = torch.rand(n, 3, generator=gen).to(device)
    gf = torch.randn(n, grid.n_output_dims, generator=gen).to(device)
    gj = torch.randn(n, grid.n_output_dims, 3, generator=gen).to(device)
    cuda = device.type == "cuda"

    def forward():
        with torch.no_grad():
            return grid.forward_with_jacobian(u)

    def step():
        grid.table.grad = None
        feats, jac = grid.forward_with_jacobian(u)
        torch.autograd.backward([feats, jac], [gf, gj])

    row: dict = {"n": n}
    outputs = {}
    for kernel in BACKENDS:
        grid.kernel = kernel
        step()
        feats, jac = forward()
        outputs[kernel] = (feats, jac, grid.table.grad.clone())
        row[f"{kernel}_fwd_ms"] = timer(forward)
        row[f"{kernel}_step_ms"] = timer(step)
        if cuda:
            grid.table.grad = None
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            row[f"{kernel}_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    for name, a, b in zip(
        ("features", "jacobian", "table_grad"), outputs["torch"], outputs["triton"], strict=True
    ):
        row[f"diff_{name}"] = float((a - b).abs().max())
        row[f"scale_{name}"] = float(a.abs().max())
    return row


def bench_training(views_dir: Path, steps: int, device) -> dict:
    """``steps`` standard-preset training steps per backend on one object's views: median step time,
    total training time (hull pre-fit included), final loss and peak memory."""
    import torch
    from recon_profile import StepClock  # benchmarks/ is on sys.path when this script runs

    from recon.presets import get_preset
    from recon.train import train
    from sd3d.core.io import read_views

    views = read_views(views_dir)
    base = get_preset("standard", steps)
    out = {"views": str(views_dir), "steps": steps}
    for backend in BACKENDS:
        preset = replace(base, field=replace(base.field, encoding_backend=backend))
        clock = StepClock(device, sync=True)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        result = train(views, preset, device, seed=0, progress=clock)
        stamps = next(v for k, v in clock.stamps.items() if k.startswith("reconstruct"))
        step_s = [b - a for a, b in zip(stamps[1:-1], stamps[2:], strict=False)]
        out[backend] = {
            "median_step_ms": 1000 * statistics.median(step_s) if step_s else float("nan"),
            "train_s": result.seconds,
            "final_loss": result.final_loss,
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        }
    return out


def render(result: dict) -> str:
    env = result["env"]
    lines = [
        f"## Hash grid: PyTorch vs Triton ({env['device']}, torch {env['torch']}, triton {env['triton']})",
        "",
        f"Grid: {env['grid']}. ms = median of {env['reps']} calls after warm-up, L2 flushed; fwd = features + Jacobian "
        "(no autograd); fwd+bwd = the same and the table gradient from random upstream gradients on "
        "both outputs; peak = one fwd+bwd above the memory allocated before it; max |diff| = Triton vs "
        "PyTorch (features / Jacobian / table gradient).",
        "",
        "| N | torch fwd ms | triton fwd ms | torch fwd+bwd ms | triton fwd+bwd ms | speed-up (fwd+bwd) "
        "| torch peak MiB | triton peak MiB | max diff feat / jac / grad |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in result["rows"]:
        peak = [f"{r[k]:.0f}" if k in r else "-" for k in ("torch_peak_mib", "triton_peak_mib")]
        lines.append(
            f"| {r['n']} | {r['torch_fwd_ms']:.3f} | {r['triton_fwd_ms']:.3f} | {r['torch_step_ms']:.3f} "
            f"| {r['triton_step_ms']:.3f} | {r['torch_step_ms'] / r['triton_step_ms']:.2f}x | {peak[0]} | {peak[1]} "
            f"| {r['diff_features']:.1e} / {r['diff_jacobian']:.1e} / {r['diff_table_grad']:.1e} |"
        )
    if result.get("training"):
        t = result["training"]
        lines += [
            "",
            f"### {t['steps']} training steps, standard preset ({t['views']})",
            "",
            "| backend | median step ms | train s (incl. hull pre-fit) | final loss | peak GiB |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for backend in BACKENDS:
            b = t[backend]
            peak = f"{b['peak_gib']:.2f}" if b["peak_gib"] is not None else "-"
            lines.append(
                f"| {backend} | {b['median_step_ms']:.1f} | {b['train_s']:.1f} | {b['final_loss']:.4f} | {peak} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=None, help=f"batch sizes (default {SIZES})")
    parser.add_argument("--reps", type=int, default=20, help="timed calls per measurement (median)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--train-steps", type=int, default=0, metavar="K", help="also K training steps per backend"
    )
    parser.add_argument(
        "--views",
        type=Path,
        default=None,
        help="views folder for --train-steps (default: the shared 'spot' object's views, else examples/spot)",
    )
    parser.add_argument(
        "--interpret",
        action="store_true",
        help="CPU smoke run in Triton's interpreter (tiny N, timings meaningless)",
    )
    args = parser.parse_args(argv)

    if args.interpret:  # must be set before Triton is imported
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    from recon import kernels
    from recon.presets import PRESETS

    if args.interpret:
        device = torch.device("cpu")
        sizes = args.n or (300,)
        reps = min(args.reps, 2)
    else:
        if not torch.cuda.is_available():
            print(
                "hash_grid.py needs a CUDA device (the Triton kernels' compiled path); "
                "--interpret runs a tiny smoke test in Triton's CPU interpreter",
                file=sys.stderr,
            )
            return 2
        device = torch.device("cuda")
        sizes = args.n or SIZES
        reps = args.reps
    reason = kernels.unavailable_reason(device)
    if reason is not None:
        print(f"the Triton hash grid is unavailable: {reason}", file=sys.stderr)
        return 2
    import triton

    cfg = PRESETS["standard"].field.grid
    result: dict = {
        "env": {
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (Triton interpreter)",
            "torch": torch.__version__,
            "triton": triton.__version__,
            "grid": f"{cfg.n_levels} levels, F = {cfg.n_features_per_level}, 2^{cfg.log2_hashmap_size} rows, "
            f"base {cfg.base_resolution}, max {cfg.max_resolution}",
            "reps": reps,
        },
        "rows": [],
    }
    from norm_kernels import Timer  # benchmarks/ is on sys.path when this script runs

    timer = Timer(device, reps)
    for n in sizes:
        row = bench_size(n, cfg, timer, device)
        result["rows"].append(row)
        print(f"# {json.dumps(row)}", flush=True)
    if args.train_steps > 0:
        if device.type != "cuda":
            print(
                "--train-steps needs CUDA (a standard-preset step takes minutes in the interpreter)",
                file=sys.stderr,
            )
            return 2
        views = args.views
        if views is None:
            shared = Path(os.environ.get("SD3D_SHARED", REPO.parent / "shared")) / "data/objects/spot/views"
            views = shared if shared.is_dir() else REPO / "examples" / "spot"
        result["training"] = bench_training(views, args.train_steps, device)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
