"""What an official-size generation costs on a machine without a CUDA GPU (fp32, PyTorch's CPU path).

    OMP_NUM_THREADS=2 python benchmarks/cpu_generation.py [--steps 1 2] [--json out.json]

Why: README told CPU users "about an hour per core" without a measurement behind it. A CPU user's
``sd3d generate`` runs the official-size model (synthetic weights of docs/reference/syncdreamer.md
§7.2 here, built in-process: the same shapes and work as the real checkpoint) for 1 sample x 16
views at cfg 2 and DDIM 50 steps by default. Full 50-step runs take too long to repeat, so this
times whole generations of a few step counts (conditioning, the steps, decoding) and fits
``time = fixed + per_step * steps``, then predicts the default 50 steps. Prints one JSON line.
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
sys.path.insert(0, str(REPO / "benchmarks"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 2], help="step counts to time")
    parser.add_argument("--default-steps", type=int, default=50, help="the step count to predict")
    parser.add_argument(
        "--shared", type=Path, default=Path(os.environ.get("SD3D_SHARED", REPO.parent / "shared"))
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if len(set(args.steps)) < 2:
        parser.error("--steps needs two different step counts to separate the fixed cost")
    from sd3d.core.errors import UserError
    from sd3d.pipelines.syncdreamer import GenerationSettings

    for steps in args.steps:
        try:
            GenerationSettings(steps=steps).check()  # before minutes of building and sampling
        except UserError as exc:
            parser.error(str(exc))

    import torch
    from generate import _input  # the generation benchmark's input (the fixture's photo when present)

    from sd3d.models.configs import official_config
    from sd3d.models.syncdreamer_checkpoint import load_syncdreamer
    from sd3d.models.synthetic import synthetic_state_dict
    from sd3d.pipelines.syncdreamer import sample_views

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    t0 = time.perf_counter()
    state_dict = synthetic_state_dict(official_config())
    model = load_syncdreamer(state_dict, official_config(), torch.device("cpu"))
    del state_dict
    gc.collect()
    build_s = time.perf_counter() - t0
    prepared = _input(args.shared if args.shared.is_dir() else None)

    timings = {}
    for steps in args.steps:
        t0 = time.perf_counter()
        sample_views(model, prepared, GenerationSettings(steps=steps), "auto")
        timings[steps] = time.perf_counter() - t0
        print(f"# {steps} step(s): {timings[steps]:.1f} s", flush=True)
    lo, hi = min(timings), max(timings)
    per_step = (timings[hi] - timings[lo]) / (hi - lo)
    fixed = timings[lo] - per_step * lo
    result = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "build_s": round(build_s, 1),
        "timings_s": {str(k): round(v, 1) for k, v in timings.items()},
        "per_step_s": round(per_step, 1),
        "fixed_s": round(fixed, 1),
        f"predicted_{args.default_steps}_steps_min": round((fixed + per_step * args.default_steps) / 60, 1),
    }
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
