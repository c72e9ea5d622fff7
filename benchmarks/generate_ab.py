"""A/B of the CUDA default against its predecessor, on one GPU in one short run.

    python benchmarks/generate_ab.py --json out.json [--shared DIR] [--parity]
    python benchmarks/generate_ab.py --render out.json        # print the table of a saved run again
    python benchmarks/generate_ab.py --device cpu --config tiny --steps 2   # smoke test

``benchmarks/generate.py`` measures every optimisation cumulatively from the fp32 baseline (about
8 minutes of an H100); this measures only what one change needs, for a session with little device
time: the full-size synthetic-weights model, then rows timed exactly like ``generate.py``'s (same
``Bench``: first call, median of ``--repeats``, peak allocated, deviation of the final latents):

1. fp32, TF32 off, eager, PyTorch's norms: the reference the deviations are measured against;
2. the previous CUDA default: bf16 weights and half-precision norms computed by PyTorch's
   GroupNorm, CUDA graph, channels-last UNet (every norm of a channels-last UNet copies in and out
   of NCHW: PyTorch has no channels-last CUDA GroupNorm);
3. + the Triton GroupNorm (:mod:`sd3d.models.kernels.group_norm`: the input's own layout, the
   per-channel bias and the SiLU / ReLU fused) = the new default;
4. + channels-last 3D nets (without PyTorch's GroupNorm, their NCDHW copies are gone too; kept by
   the default only if it pays);

then the kernel profile of the faster of rows 3 and 4, and with ``--parity`` the fp32 CUDA parity
check against the golden fixture (TF32 off; norms by the library default, i.e. the Triton kernel
in float32). The JSON is written after every row. The first call of row 3 includes compiling the
Triton kernels (cached on disk for later processes).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import generate as full  # noqa: E402  (the benchmark this one shares its rows and table with)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--config", default="official", help="official or tiny (smoke tests)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=6033)
    parser.add_argument("--batch-view-num", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parity", action="store_true", help="also the fp32 CUDA parity check")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--render", type=Path, default=None, help="print the table of a saved --json")
    args = parser.parse_args(argv)
    if args.render:
        print(full.render(json.loads(args.render.read_text())))
        return 0

    import torch

    from sd3d.core.device import resolve_device
    from sd3d.models.configs import config_by_name
    from sd3d.models.inference import cast_weights_, set_channels_last_
    from sd3d.models.norms import set_norm_implementation
    from sd3d.models.syncdreamer_checkpoint import load_syncdreamer
    from sd3d.models.synthetic import synthetic_state_dict
    from sd3d.pipelines.syncdreamer import GenerationSettings, sample_views

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    config = config_by_name(args.config)
    env, flops = full.describe_run(args, device, config)
    env["benchmark"] = "generate_ab.py"
    t0 = time.perf_counter()
    state_dict = synthetic_state_dict(config)
    model = load_syncdreamer(state_dict, config, device)  # fp32 weights: row 1
    set_norm_implementation(model, "torch")  # rows 1-2: PyTorch's GroupNorm
    if not args.parity:
        del state_dict  # else kept on the host for the parity model
        gc.collect()
    env["build_s"] = time.perf_counter() - t0
    print(f"# model built with synthetic weights in {env['build_s']:.1f} s", flush=True)

    prepared = full._input(args.shared)
    bench = full.Bench(args, model, prepared, device, env, flops)
    sample_views(model, prepared, GenerationSettings(steps=2, batch_view_num=args.batch_view_num), "fp32")
    full._tf32(False)
    bench.run("fp32, TF32 off, eager (reference)", dtype="fp32", cuda_graph=False, repeats=0, keep_ref="fp32")
    full._tf32(None)  # PyTorch's defaults from here on: what users get

    cast_weights_(model, torch.bfloat16, half_norms=True)
    gc.collect()
    if cuda:
        set_channels_last_(model, unet=True, volume=False)
    bench.run(
        "previous default: bf16 weights and norms (PyTorch GroupNorm), CUDA graph, channels-last UNet",
        dtype="bf16",
        cuda_graph=cuda,
        repeats=args.repeats,
        keep_ref="previous",
    )
    set_norm_implementation(model, "auto")
    triton_cl = bench.run(
        "+ Triton GroupNorm (input layout kept, bias and SiLU fused) = default on CUDA",
        dtype="bf16",
        cuda_graph=cuda,
        repeats=args.repeats,
    )
    if cuda:
        set_channels_last_(model, unet=True, volume=True)
    triton_3d = bench.run(
        "+ Triton GroupNorm, channels-last 3D nets too",
        dtype="bf16",
        cuda_graph=cuda,
        repeats=args.repeats,
    )
    if cuda and triton_cl.get("median_s", 1e9) < triton_3d.get("median_s", 1e9):
        set_channels_last_(model, unet=True, volume=False)
    bench.record_breakdown()
    if args.parity:

        def fp32_model():
            nonlocal model
            bench.model = model = None  # the bf16 model: its weights lost their float32 values
            gc.collect()
            torch.cuda.empty_cache()
            return load_syncdreamer(state_dict, config, device)

        bench.record_parity(fp32_model)
    bench.note(f"benchmark wall time {bench.elapsed():.0f} s")
    print()
    print(full.render(bench.result))
    return 0 if all(p[3] for p in bench.result["parity"]) else 1


if __name__ == "__main__":
    sys.exit(main())
