"""SyncDreamer generation benchmark: full-size model with synthetic weights (no checkpoint file needed).

    python benchmarks/generate.py                      # CUDA: parity (fp32, TF32 off), then fp32 + bf16 timings
    python benchmarks/generate.py --dtypes bf16 --batch-view-num 8 --json out.json
    python benchmarks/generate.py --device cpu --steps 2 --skip-parity   # smoke test without a GPU

1. Builds the official-size model (1.39 G parameters) with the Appendix B synthetic weights directly
   in memory and moves it to the device.
2. Parity: runs the golden fixture's call sequence (``sd3d.models.golden``) in fp32 with TF32 off and
   compares every stage with the spec's tolerances (needs ``--shared``; skipped if absent).
3. Timing: for each dtype, 1 sample x 16 views x ``--steps`` DDIM steps at cfg 2 (after a 1-step
   warm-up), wall time and ``torch.cuda.max_memory_allocated``.
Prints a markdown table at the end (paste into benchmarks/RESULTS.md). Never asks for input.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _input(shared: Path | None):
    """The fixture's input image (alarm, crop 200) when available, else a synthetic disc."""
    import numpy as np

    from sd3d.preprocess import PreparedInput

    npz = shared / "reference" / "syncdreamer-golden-synthetic.npz" if shared else None
    if npz is not None and npz.is_file():
        with np.load(npz) as data:
            rgb = data["input_image_alarm_crop200"].astype(np.float32)
    else:
        yy, xx = np.mgrid[:256, :256]
        rgb = np.ones((256, 256, 3), np.float32)
        rgb[(yy - 128) ** 2 + (xx - 128) ** 2 < 90**2] = (0.6, -0.2, -0.7)
    u8 = np.clip((rgb + 1) * 127.5, 0, 255).astype(np.uint8)
    rgba = np.concatenate([u8, np.full((256, 256, 1), 255, np.uint8)], axis=-1)
    return PreparedInput(rgba=rgba, model_rgb=rgb, crop_box=(0, 0, 256, 256), background="alpha", source=None)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _parity(model, shared: Path) -> list[tuple[str, float, float, bool]]:
    import numpy as np
    import torch

    from sd3d.models import golden as g

    with np.load(shared / "reference" / "syncdreamer-golden-synthetic.npz") as data:
        fixture = {k: data[k] for k in data.files}
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        stages = g.run_stages(model, fixture)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    rows = [(n, err, tol, err <= tol) for n, err, tol in g.compare(stages, fixture)]
    sens = g.rel_err(stages["eps_view2_zero_volume"], fixture["eps_nocfg_views0to3"][2])
    rows.append(("eps_view2_zero_volume (must exceed)", sens, 5 * g.OUTPUT_RTOL, sens > 5 * g.OUTPUT_RTOL))
    return rows


def _time_generation(model, prepared, dtype: str, steps: int, bvn: int | None) -> dict:
    import torch

    from sd3d.pipeline import GenerationSettings, run_generation

    device = model.device
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    run_generation(model, prepared, GenerationSettings(steps=1, batch_view_num=bvn), dtype=dtype)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    views = run_generation(model, prepared, GenerationSettings(steps=steps, batch_view_num=bvn), dtype=dtype)
    _sync(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    settings = views[0].provenance["settings"]
    return {
        "dtype": settings["dtype"],
        "batch_view_num": settings["batch_view_num"],
        "steps": steps,
        "seconds": round(seconds, 2),
        "seconds_per_step": round(seconds / steps, 3),
        "peak_gib": round(peak / 2**30, 2),
        "mean_pixel": round(float(views[0].images.mean()), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared", type=Path, default=Path(os.environ.get("SD3D_SHARED", REPO.parent / "shared"))
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtypes", default="fp32,bf16", help="comma-separated: fp32, bf16, fp16")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-view-num", type=int, default=None, help="default: chosen from free memory")
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from sd3d.device import resolve_device
    from sd3d.models.checkpoint import load_syncdreamer
    from sd3d.models.configs import official_config
    from sd3d.models.synthetic import synthetic_state_dict

    device = resolve_device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    env = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "python": platform.python_version(),
    }
    print(f"# device: {env['device']} (torch {env['torch']})", flush=True)

    t0 = time.perf_counter()
    state_dict = synthetic_state_dict(official_config())
    model = load_syncdreamer(state_dict, official_config(), device)
    del state_dict
    gc.collect()
    build_s = time.perf_counter() - t0
    print(f"# model built with synthetic weights in {build_s:.1f} s", flush=True)

    parity: list = []
    if not args.skip_parity:
        if (args.shared / "reference" / "syncdreamer-golden-synthetic.npz").is_file():
            t0 = time.perf_counter()
            parity = _parity(model, args.shared)
            print(f"# parity (fp32, TF32 off) in {time.perf_counter() - t0:.1f} s", flush=True)
        else:
            print(f"# parity skipped: no fixture under {args.shared}", flush=True)

    prepared = _input(args.shared)
    timings = []
    for dtype in [d.strip() for d in args.dtypes.split(",") if d.strip()]:
        try:
            timings.append(_time_generation(model, prepared, dtype, args.steps, args.batch_view_num))
            print(f"# {dtype}: {timings[-1]}", flush=True)
        except torch.cuda.OutOfMemoryError as exc:  # report and go on with the next dtype
            timings.append({"dtype": dtype, "error": f"out of memory: {str(exc).splitlines()[0]}"})
            torch.cuda.empty_cache()

    print("\n## SyncDreamer generation (1 sample x 16 views, cfg 2, DDIM)\n")
    print(f"device: {env['device']}, torch {env['torch']}; model build {build_s:.1f} s\n")
    print("| dtype | steps | batch_view_num | wall s | s / step | peak GiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for t in timings:
        if "error" in t:
            print(f"| {t['dtype']} | - | - | {t['error']} | | |")
        else:
            print(
                f"| {t['dtype']} | {t['steps']} | {t['batch_view_num']} | {t['seconds']:.1f} | "
                f"{t['seconds_per_step']:.3f} | {t['peak_gib']:.2f} |"
            )
    ok = all(r[3] for r in parity)
    if parity:
        print(
            f"\n## Parity vs the golden fixture on {device.type} (fp32, TF32 off): {'PASS' if ok else 'FAIL'}\n"
        )
        print("| stage | rel error | bound | ok |")
        print("| --- | ---: | ---: | :---: |")
        for name, err, tol, good in parity:
            print(f"| {name} | {err:.2e} | {tol:.0e} | {'yes' if good else 'NO'} |")
    if args.json:
        args.json.write_text(json.dumps({"env": env, "timings": timings, "parity": parity}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
