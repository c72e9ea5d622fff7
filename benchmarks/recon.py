"""Reconstruction benchmark: GT views of the shared objects -> textured GLB -> metrics vs the GT mesh.

For each object: ``reconstruct`` (timed: training), ``export_mesh`` to ``<out>/<name>.glb`` (timed:
marching cubes, decimation, UV unwrap, baking, writing), then the written GLB is read back, rotated
to our +Z-up frame and scored against ``mesh_normalized.ply`` with :func:`recon.metrics.mesh_metrics`
(Chamfer, F-score, volume IoU). Peak GPU memory is ``torch.cuda.max_memory_allocated``; on CPU the
process' peak RSS. Prints a table and writes JSON.

    python benchmarks/recon.py --quality standard --out out/bench            # all four objects
    python benchmarks/recon.py --quality draft --objects spot --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OBJECTS = ("spot", "bob", "duck", "banana")


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def run_object(
    name: str,
    shared: Path,
    out_dir: Path,
    quality: str,
    steps,
    seed: int,
    device,
    robust: bool = True,
    cuda_graph: bool | None = None,
) -> dict:
    import numpy as np
    import torch
    import trimesh

    from recon.export import gltf_to_world
    from recon.metrics import mesh_metrics
    from recon.pipeline import export_mesh, reconstruct
    from recon.presets import ReconSettings
    from sd3d.core.io import read_views

    obj = shared / "data" / "objects" / name
    views = read_views(obj / "views")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    settings = ReconSettings(quality, steps, cuda_graph=cuda_graph)
    result = reconstruct(views, settings, seed=seed, device=device, robust=robust)
    exported = export_mesh(result, out_dir / f"{name}.glb")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    total = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else _peak_rss_gb()

    loaded = trimesh.load(out_dir / f"{name}.glb", force="mesh", process=False)
    pred = trimesh.Trimesh(
        gltf_to_world(np.asarray(loaded.vertices)), np.asarray(loaded.faces), process=False
    )
    gt = trimesh.load(obj / "mesh_normalized.ply", process=False)
    metrics = mesh_metrics(pred, gt)
    timings = {**result.timings, **exported.timings}
    return {
        "object": name,
        **metrics,
        "seconds_total": total,
        "seconds": timings,
        "peak_memory_gb": peak,
        "faces": exported.num_faces,
        "textured": exported.textured,
        "final_loss": result.final_loss,
        "graph_captures": result.graph_captures,
        "final_inv_s": result.history[-1]["inv_s"] if result.history else None,
        "history": result.history[:: max(1, len(result.history) // 20)],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quality", default="standard")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--objects", nargs="+", default=list(OBJECTS))
    ap.add_argument(
        "--shared", type=Path, default=Path(os.environ.get("SD3D_SHARED", REPO.parent / "shared"))
    )
    ap.add_argument("--out", type=Path, default=REPO / "out" / "bench-recon")
    ap.add_argument("--json", type=Path, default=None, help="default: <out>/results.json")
    ap.add_argument("--no-warmup", action="store_true", help="skip the short CUDA warm-up run")
    ap.add_argument(
        "--plain",
        action="store_true",
        help="the plain NeuS: the preset with recon.presets.ROBUSTNESS_OFF (no robustness methods)",
    )
    ap.add_argument(
        "--cuda-graph",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train with the steps replayed from CUDA graphs (default: as sd3d, on with a CUDA device)",
    )
    args = ap.parse_args(argv)

    import torch

    from sd3d.core.device import resolve_device

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    device = resolve_device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda" and not args.no_warmup:  # CUDA context, cuBLAS handles, allocator
        from recon.pipeline import export_mesh, reconstruct
        from recon.presets import ReconSettings
        from sd3d.core.io import read_views

        warm = reconstruct(
            read_views(args.shared / "data/objects" / args.objects[0] / "views"),
            ReconSettings(args.quality, steps=20),
            device=device,
        )
        export_mesh(warm, args.out / "warmup.ply")
    rows = []
    for name in args.objects:
        row = run_object(
            name,
            args.shared,
            args.out,
            args.quality,
            args.steps,
            args.seed,
            device,
            robust=not args.plain,
            cuda_graph=args.cuda_graph,
        )
        rows.append(row)
        s = row["seconds"]
        print(
            f"{name:8s} chamfer {row['chamfer']:.4f}  IoU {row['volume_iou']:.3f}  F@0.01 {row['fscore_0.01']:.3f}  "
            f"time {row['seconds_total']:.1f}s (train {s['train']:.1f}, mc {s['marching_cubes']:.1f}, "
            f"uv {s.get('uv', 0):.1f}, bake {s.get('bake', 0):.1f})  peak {row['peak_memory_gb']:.2f} GB",
            flush=True,
        )
    mean = {
        k: sum(r[k] for r in rows) / len(rows)
        for k in ("chamfer", "volume_iou", "fscore_0.01", "fscore_0.02", "seconds_total")
    }
    print(
        f"{'mean':8s} chamfer {mean['chamfer']:.4f}  IoU {mean['volume_iou']:.3f}  F@0.01 {mean['fscore_0.01']:.3f}  "
        f"time {mean['seconds_total']:.1f}s  peak {max(r['peak_memory_gb'] for r in rows):.2f} GB"
    )
    report = {
        "quality": args.quality,
        "plain": args.plain,
        "steps": args.steps,
        "seed": args.seed,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "objects": rows,
        "mean": mean,
    }
    out_json = args.json or args.out / "results.json"
    out_json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
