"""Where a process's first generation goes: its first denoising steps against the later ones.

    python benchmarks/first_generation.py --json first.json                  # CUDA, the official size
    python benchmarks/first_generation.py --device cpu --config tiny --steps 3  # smoke test

Why: in ``sd3d run`` (session 13, one H100) the first generation's 50 steps took 5.5 s and the
second's 2.0 s: the first five steps alone took about 4 s. That is work every cold process pays
once (kernel loading, library handles, algorithm choice, the CUDA graph's capture). This builds
the full-size synthetic model the way ``load_model`` prepares it, runs three generations of the
same input and records when each denoising step was handed on (the step's host time: the first
step runs eagerly, the second is captured, the rest replay). ``--profile`` runs cProfile over the
first generation: its top functions by own time say what the first steps wait for.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main(argv: list[str] | None = None) -> int:
    from generate import add_model_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, shared=False)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile the first generation")
    parser.add_argument(
        "--sdpa",
        choices=("ours", "torch"),
        default="ours",
        help="attention kernels: ours (sd3d.models.attention.BACKENDS) or torch (PyTorch's choice, cuDNN's included)",
    )
    parser.add_argument(
        "--deviation",
        action="store_true",
        help="then the final latents' rel L2 from the fp32 model (TF32 off) with either --sdpa choice",
    )
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="no GroupNorm kernel warm-up (load_model starts one while the checkpoint loads; this mirrors it)",
    )
    parser.add_argument(
        "--depth-attention",
        choices=("fast", "folded"),
        default=None,
        help="the depth attention's form (sd3d.models.depth_attention; default: the model's own)",
    )
    parser.add_argument(
        "--geglu",
        choices=("torch", "auto"),
        default=None,
        help="GEGLU's implementation (auto: the fused Triton kernel, sd3d.models.kernels.geglu; default: the model's own)",
    )
    parser.add_argument(
        "--warmup-threads",
        action="store_true",
        help="compile the warm-up's variants on threads of this process (session 14's way), not in worker processes",
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    t_start = time.perf_counter()
    import torch
    from generate import _input, _rel, _sync, _tf32
    from torch.nn.attention import SDPBackend

    from sd3d.core.device import resolve_device
    from sd3d.core.progress import Progress
    from sd3d.models import attention
    from sd3d.models.configs import config_by_name
    from sd3d.models.depth_attention import set_depth_attention_impl
    from sd3d.models.inference import prepare_for_inference
    from sd3d.models.syncdreamer_checkpoint import load_syncdreamer
    from sd3d.models.synthetic import synthetic_state_dict
    from sd3d.models.unet import set_geglu_implementation
    from sd3d.pipelines.syncdreamer import GenerationSettings, sample_views, start_kernel_warmup

    class StepClock(Progress):
        """Records the host time of every ``advance`` of every task."""

        def __init__(self) -> None:
            super().__init__(enabled=False)
            self.marks: dict[str, list[float]] = {}

        @contextlib.contextmanager
        def task(self, description: str, total: int | None):
            marks = self.marks.setdefault(description, [time.perf_counter()])

            def advance(n: int = 1, info=None) -> None:
                marks.append(time.perf_counter())

            yield advance

    ours = attention.BACKENDS
    choices = {"ours": ours, "torch": (*ours, SDPBackend.CUDNN_ATTENTION)}  # PyTorch's priority order
    attention.BACKENDS = choices[args.sdpa]
    device = resolve_device(args.device)
    half = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = config_by_name(args.config)
    t0 = time.perf_counter()
    # as load_model: started before the weights are made
    warmup = (
        None
        if args.no_warmup
        else start_kernel_warmup(config, device, half, processes=not args.warmup_threads)
    )
    model = prepare_for_inference(load_syncdreamer(synthetic_state_dict(config), config, device, half), half)
    model.kernel_warmup = warmup
    if args.depth_attention:
        set_depth_attention_impl(model, args.depth_attention)
    if args.geglu:
        set_geglu_implementation(model, args.geglu)
    _sync(device)
    built = time.perf_counter() - t0
    print(f"# imports {t0 - t_start:.2f} s, model built {built:.2f} s on {device}", flush=True)
    prepared = _input(None)
    settings = GenerationSettings(steps=args.steps, seed=6033)
    runs = []
    for run in range(args.runs):
        clock = StepClock()
        profiler = cProfile.Profile() if args.profile and run == 0 else None
        _sync(device)
        t0 = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        generation = sample_views(model, prepared, settings, "auto", clock)
        _sync(device)
        if profiler is not None:
            profiler.disable()
        wall = time.perf_counter() - t0
        steps = clock.marks.get("denoising", [t0])
        host = [round(b - a, 4) for a, b in zip(steps[:-1], steps[1:], strict=True)]
        record = {
            "run": run,
            "wall_s": round(wall, 3),
            "before_steps_s": round(steps[0] - t0, 3),
            "step_host_s": host[:6],
            "steps_after_5_s": round(sum(host[5:]), 3),
            "decode_s": round(t0 + wall - steps[-1], 3),
            **(
                {"kernel_warmup": generation.record["kernel_warmup"]}
                if "kernel_warmup" in generation.record
                else {}
            ),
        }
        runs.append(record)
        print(json.dumps(record), flush=True)
        if profiler is not None:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue(), flush=True)
    deviation = {}
    if args.deviation:
        latents = {}
        for name, backends in choices.items():
            attention.BACKENDS = backends
            latents[name] = sample_views(model, prepared, settings, "auto").latents.float()
        del model
        _tf32(False)
        reference = load_syncdreamer(synthetic_state_dict(config), config, device)
        ref = sample_views(reference, prepared, settings, "fp32", cuda_graph=False).latents.float()
        deviation = {name: _rel(lat, ref) for name, lat in latents.items()}
        print("# rel L2 of the final latents from fp32:", json.dumps(deviation), flush=True)
    if args.json:
        record = {
            "device": str(device),
            "sdpa": args.sdpa,
            "depth_attention": args.depth_attention,
            "geglu": args.geglu,
            "build_s": built,
            "runs": runs,
            "deviation": deviation,
        }
        args.json.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
