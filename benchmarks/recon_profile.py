"""Where a reconstruction's time goes: one process, stage by stage and step by step.

Times CUDA start-up, reading the views, the training loop (the hull pre-fit before the first step,
the first steps while kernels are cold, the steady median step), and each export stage; optionally
runs ``torch.profiler`` over a window of steady steps and prints the top kernels. The step clock
comes from a :class:`sd3d.core.progress.Progress` whose ``advance`` records the time (with
``--sync``, after a device synchronisation, so each step's GPU work is inside its own interval).

    python benchmarks/recon_profile.py --views examples/spot --quality standard --no-cuda-graph --sync --profile 400:20
    python benchmarks/recon_profile.py --quality standard
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class StepClock:
    """A ``Progress`` stand-in that timestamps every ``advance`` of the training task."""

    def __init__(self, device, sync: bool, on_step=None) -> None:
        self.device = device
        self.sync = sync
        self.on_step = on_step
        self.stamps: dict[str, list[float]] = {}

    @contextmanager
    def task(self, description: str, total: int | None):
        import torch

        stamps = self.stamps.setdefault(description, [time.perf_counter()])

        def advance(n: int = 1, **_fields) -> None:
            if self.sync and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            stamps.append(time.perf_counter())
            if self.on_step is not None:
                self.on_step()

        yield advance


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--views", default=str(REPO / "examples" / "spot"))
    ap.add_argument("--quality", default="standard")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sync", action="store_true", help="synchronise after every step (exact step times)")
    ap.add_argument("--profile", default=None, metavar="START:COUNT", help="torch.profiler over these steps")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=None, help="folder for the GLB and the JSON")
    ap.add_argument(
        "--hash-grid", default="auto", help="auto (as sd3d: Triton on CUDA) | torch | triton | tcnn"
    )
    ap.add_argument(
        "--cuda-graph",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replay the training steps from CUDA graphs (default: as sd3d, on with a CUDA device; "
        "--no-cuda-graph for a kernel-by-kernel profile)",
    )
    args = ap.parse_args()

    t_start = time.perf_counter()
    import torch

    from recon.pipeline import export_mesh, reconstruct
    from recon.presets import ReconSettings
    from sd3d.core.device import resolve_device
    from sd3d.core.io import read_views

    t_import = time.perf_counter() - t_start
    dev = resolve_device(args.device)
    t0 = time.perf_counter()
    if dev.type == "cuda":
        torch.zeros(1, device=dev)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    t_cuda = time.perf_counter() - t0

    prof = None
    window = None
    if args.profile:
        a, n = (int(x) for x in args.profile.split(":"))
        window = (a, n)
        acts = [torch.profiler.ProfilerActivity.CPU]
        if dev.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
        prof = torch.profiler.profile(
            activities=acts,
            schedule=torch.profiler.schedule(wait=max(0, a - 1), warmup=1, active=n, repeat=1),
        )
        prof.start()
    clock = StepClock(dev, args.sync, on_step=prof.step if prof is not None else None)

    t0 = time.perf_counter()
    views = read_views(args.views)
    t_read = time.perf_counter() - t0
    result = reconstruct(
        views,
        ReconSettings(args.quality, args.steps, hash_grid=args.hash_grid, cuda_graph=args.cuda_graph),
        seed=args.seed,
        device=dev,
        progress=clock,
    )
    if prof is not None:
        prof.stop()
    out = Path(args.out) if args.out else Path("/tmp") / "recon_profile"
    out.mkdir(parents=True, exist_ok=True)
    exported = export_mesh(result, out / "mesh.glb")

    train_key = next(k for k in clock.stamps if k.startswith("reconstruct"))
    stamps = clock.stamps[train_key]
    steps = [b - a for a, b in zip(stamps[1:-1], stamps[2:], strict=False)]
    report = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "quality": result.preset.name,
        "steps": result.preset.steps,
        "hash_grid": args.hash_grid,
        "cuda_graph": args.cuda_graph,
        "sync": args.sync,
        "import_s": round(t_import, 2),
        "cuda_init_s": round(t_cuda, 2),
        "read_views_s": round(t_read, 2),
        "before_first_step_s": round(stamps[1] - stamps[0], 2),  # hull, rays, pre-fit, first step
        "first_20_steps_s": round(sum(steps[:20]), 3),
        "median_step_ms": round(1000 * _median(steps[len(steps) // 4 :]), 2),
        "last_quarter_median_step_ms": round(1000 * _median(steps[-len(steps) // 4 :]), 2),
        "train_s": round(result.timings["train"], 2),
        "export": {k: round(v, 2) for k, v in exported.timings.items()},
        "faces": exported.num_faces,
        "peak_gib": round(torch.cuda.max_memory_allocated(dev) / 2**30, 2) if dev.type == "cuda" else None,
        "wall_s": round(time.perf_counter() - t_start, 2),
        "profile_window": window,
    }
    print(json.dumps(report, indent=1))
    (out / "recon_profile.json").write_text(json.dumps(report, indent=1))
    if prof is not None:
        sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=sort, row_limit=args.top, max_name_column_width=60)
        print(table)
        (out / "recon_profile_kernels.txt").write_text(table)


if __name__ == "__main__":
    main()
