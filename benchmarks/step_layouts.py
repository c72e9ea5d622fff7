"""Which element-wise operators of one guided denoising step miss PyTorch's vectorised CUDA kernel.

    python benchmarks/step_layouts.py --device cuda [--official] [--json out.json]
    OMP_NUM_THREADS=2 python benchmarks/step_layouts.py            # the tiny model on the CPU

Why: session 15's and 16's kernel profiles put 2.38 ms of a 26.9 ms step (H100) in 190 launches of
``elementwise_kernel<128, 4, gpu_kernel_impl_nocast<add>>``, PyTorch's fallback for operands that
do not line up as one dense block (a broadcast operand, or operands whose strides differ); the
vectorised add ran 102 times in 0.89 ms. A profile names the kernel but not the call site, so this
runs one ``predict_eps`` under a dispatch mode that records, for every element-wise operator, why it
would miss the vectorised path (dtype mix, broadcast, strides unlike the output's), grouped by the
line of ``sd3d`` that called it. The model is set up as a generation sets it up
(:func:`sd3d.models.inference.prepare_for_inference`, bf16 weights, autocast); on the CPU the
GroupNorms run PyTorch's code, so its own affine additions show up there and not on CUDA.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ELEMENTWISE = frozenset(
    f"aten.{name}"
    for name in (
        "add.Tensor",
        "add_.Tensor",
        "mul.Tensor",
        "mul_.Tensor",
        "sub.Tensor",
        "div.Tensor",
        "addcmul.default",
        "where.self",
        "silu.default",
        "gelu.default",
        "copy_.default",
    )
)


def call_site() -> str:
    """The innermost frame inside ``sd3d/`` (the model line that asked for the operator)."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        if "/sd3d/" in frame.filename:
            return f"{frame.filename.split('/sd3d/')[-1]}:{frame.lineno} {frame.name}"
    return "?"


def misses(out, operands) -> list[str]:
    """Why TensorIterator would not see one dense block (empty: it would vectorise)."""
    import torch

    why = []
    if any(t.dtype != out.dtype for t in operands):
        why.append("dtypes " + "/".join(str(t.dtype).removeprefix("torch.") for t in operands))
    for t in operands:
        if t.numel() == 1:
            continue  # a scalar operand is passed by value
        if tuple(t.shape) != tuple(out.shape):
            why.append(f"broadcast {tuple(t.shape)} -> {tuple(out.shape)}")
        elif t.stride() != out.stride():
            why.append(f"strides {t.stride()} vs the output's {out.stride()}")
    dense = out.is_contiguous() or (out.dim() == 4 and out.is_contiguous(memory_format=torch.channels_last))
    if not dense and out.dim() in (3, 4):
        why.append(f"output strides {out.stride()}")
    return why


def trace_step(device: str, official: bool) -> dict:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from sd3d.models.configs import official_config, tiny_config
    from sd3d.models.inference import prepare_for_inference
    from sd3d.models.syncdreamer_checkpoint import load_syncdreamer
    from sd3d.models.synthetic import synthetic_state_dict

    class Recorder(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.missed: collections.Counter = collections.Counter()
            self.vectorised: collections.Counter = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if str(func) in ELEMENTWISE and isinstance(out, torch.Tensor):
                operands = [a for a in args if isinstance(a, torch.Tensor)]
                why = misses(out, operands)
                key = (str(func), call_site(), "; ".join(why))
                (self.missed if why else self.vectorised)[key] += 1
            return out

    config = official_config() if official else tiny_config()
    dev = torch.device(device)
    model = load_syncdreamer(synthetic_state_dict(config), config, dev, torch.bfloat16)
    model = prepare_for_inference(model, torch.bfloat16, offload=False)
    gen = torch.Generator().manual_seed(0)
    image = (torch.rand(1, 3, config.image_size, config.image_size, generator=gen) * 2 - 1).to(dev)
    x = torch.randn(
        1, config.view_num, config.latent_channels, config.latent_size, config.latent_size, generator=gen
    )
    x = x.to(dev)
    t = torch.tensor(981, device=dev)
    with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16):
        cond = model.condition(image, [30.0])
        model.predict_eps(x, t, cond, 2.0, 16)  # compiles the kernels outside the trace
        recorder = Recorder()
        with recorder:
            model.predict_eps(x, t, cond, 2.0, 16)

    def rows(counter):
        return [
            {"count": n, "op": op, "site": site, "why": why}
            for (op, site, why), n in sorted(counter.items(), key=lambda r: -r[1])
        ]

    return {
        "device": str(dev),
        "model": "official" if official else "tiny",
        "missed_total": sum(recorder.missed.values()),
        "vectorised_total": sum(recorder.vectorised.values()),
        "missed": rows(recorder.missed),
        "vectorised": rows(recorder.vectorised),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--official", action="store_true", help="the official-size config (default: tiny)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = trace_step(args.device, args.official)
    print(
        f"{result['model']} model on {result['device']}: {result['missed_total']} element-wise launches miss the "
        f"vectorised kernel, {result['vectorised_total']} hit it"
    )
    for title in ("missed", "vectorised"):
        print(title)
        for r in result[title]:
            print(f"  {r['count']:4d} {r['op']:22s} {r['site']:52s} {r['why'][:140]}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
