"""Is the Triton GroupNorm's deviation from fp32 worse than PyTorch's norm's? Over several seeds.

    python benchmarks/norm_deviation.py --seeds 6033 1 2 3 --json out.json   # CUDA, ~2 min on an H100
    python benchmarks/norm_deviation.py --device cpu --config tiny --steps 2 --seeds 1 2   # smoke test
    python benchmarks/norm_deviation.py --images ../shared/data/objects/*/views/000.png --seeds 1 2

Why: #14 asks that the fast default's deviation from fp32 (relative L2 of the final latents, the
synthetic model) be no worse than today's 1.26e-2. Session 9 measured 1.26e-2 for PyTorch's
norms and 1.38e-2 with the Triton kernel, on one seed, although the kernel is closer to float64
than PyTorch's norm on every real shape (``norm_kernels.py``). Rows 4-8 of that table, which change
only where values are rounded, already moved between 1.26e-2 and 1.33e-2, so one seed cannot tell
a worse kernel from where roundings happened to land. This measures both on the same seeds: the
fp32 reference of every seed first (TF32 off, as ``generate.py``'s baseline), then the default
configuration (bf16 weights, half-precision norms, channels-last UNet, CUDA graph) with PyTorch's
norms and with the Triton kernel (its default rounding, "unfused", where PyTorch's code rounds;
and its first form, "fused", one rounding). Prints one line per run (input x seed) and the mean difference
with its standard error. The seeds change only the sampling noise; ``--images`` also changes the
conditioning (the synthetic weights are fixed by the spec), so a difference that holds across
inputs is less likely to be one network's amplification of where roundings land.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main(argv: list[str] | None = None) -> int:
    from generate import add_model_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--seeds", type=int, nargs="+", default=[6033, 1, 2, 3])
    parser.add_argument(
        "--images",
        type=Path,
        nargs="*",
        default=[],
        help="input images (read whole: background none) instead of the fixture's; each runs every seed",
    )
    parser.add_argument(
        "--parts",
        action="store_true",
        help="also the kernel in one part at a time (UNet, 3D volume nets, VAE): where the difference comes from",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch
    from generate import _input, _rel, _tf32

    from sd3d.core.device import resolve_device
    from sd3d.models.configs import config_by_name
    from sd3d.models.inference import cast_weights_, set_channels_last_
    from sd3d.models.norms import set_norm_implementation
    from sd3d.models.syncdreamer_checkpoint import load_syncdreamer
    from sd3d.models.synthetic import synthetic_state_dict
    from sd3d.pipelines.syncdreamer import GenerationSettings, sample_views
    from sd3d.preprocess import prepare_input

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    config = config_by_name(args.config)
    t0 = time.perf_counter()
    model = load_syncdreamer(synthetic_state_dict(config), config, device)
    gc.collect()
    print(f"# model built in {time.perf_counter() - t0:.1f} s on {device}", flush=True)
    inputs = {"fixture": _input(args.shared)} if not args.images else {}
    for path in args.images:
        inputs[path.parent.parent.name + "/" + path.name] = prepare_input(path, background="none")
    runs = [(name, seed) for name in inputs for seed in args.seeds]

    def latents(run: tuple[str, int], dtype: str) -> torch.Tensor:
        settings = GenerationSettings(steps=args.steps, batch_view_num=16, seed=run[1])
        graph = cuda and dtype != "fp32"
        return sample_views(model, inputs[run[0]], settings, dtype, cuda_graph=graph).latents

    _tf32(False)
    set_norm_implementation(model, "torch")
    refs = {}
    for run in runs:
        t0 = time.perf_counter()
        refs[run] = latents(run, "fp32").detach().clone()
        print(f"# fp32 reference, {run[0]} seed {run[1]}: {time.perf_counter() - t0:.1f} s", flush=True)
    _tf32(None)
    cast_weights_(model, torch.bfloat16, half_norms=True)
    if cuda:
        set_channels_last_(model, unet=True, volume=False)

    rows = []
    parts = {"unet": model.model, "volume": model.spatial_volume, "vae": model.first_stage_model}
    # auto = the kernel with its default rounding (unfused: where PyTorch's code rounds); fused =
    # its first form, one rounding (9-10 % further from fp32 in sessions 10 and 13)
    variants = {"torch": ("torch", "unfused"), "auto": ("auto", "unfused"), "fused": ("auto", "fused")}
    for run in runs:
        row = {"input": run[0], "seed": run[1]}
        for name, (impl, rounding) in variants.items():
            set_norm_implementation(model, impl, rounding=rounding)
            row[name] = _rel(latents(run, "bf16"), refs[run])
        row["diff"] = row["auto"] - row["torch"]
        row["diff_fused"] = row["fused"] - row["torch"]
        for name, part in parts.items() if args.parts else ():
            set_norm_implementation(model, "torch", rounding="unfused")
            set_norm_implementation(part, "auto")
            row[f"only_{name}"] = _rel(latents(run, "bf16"), refs[run]) - row["torch"]
        rows.append(row)
        print(
            f"{run[0]} seed {run[1]}: dev PyTorch norms {row['torch']:.4e}, Triton norms {row['auto']:.4e} "
            f"(Triton - PyTorch {row['diff']:+.2e}; fused rounding {row['fused']:.4e}, {row['diff_fused']:+.2e}"
            + "".join(f"; only {n}: {row[f'only_{n}']:+.2e}" for n in parts if f"only_{n}" in row)
            + ")",
            flush=True,
        )
    diffs = [r["diff"] for r in rows]
    summary = {
        "mean_torch": statistics.fmean(r["torch"] for r in rows),
        "mean_triton": statistics.fmean(r["auto"] for r in rows),
        "mean_fused": statistics.fmean(r["fused"] for r in rows),
        "mean_diff": statistics.fmean(diffs),
        "se_diff": statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan"),
        "triton_ran": cuda,
        **{
            f"mean_only_{n}": statistics.fmean(r[f"only_{n}"] for r in rows)
            for n in parts
            if f"only_{n}" in rows[0]
        },
    }
    print(
        f"mean dev: PyTorch norms {summary['mean_torch']:.4e}, Triton norms {summary['mean_triton']:.4e}; "
        f"Triton - PyTorch {summary['mean_diff']:+.2e} (SE {summary['se_diff']:.1e}, {len(rows)} runs); "
        f"with the fused rounding {summary['mean_fused']:.4e}"
        + ("" if cuda else "; not on CUDA, so both rows ran PyTorch's norms"),
        flush=True,
    )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "summary": summary, "device": str(device)}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
