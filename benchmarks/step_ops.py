"""Operator launches and host synchronisations per training step, per robustness method (CPU).

    OMP_NUM_THREADS=2 python benchmarks/step_ops.py [--quality draft] [--views examples/spot] [--adam foreach]
        [--engine static]

Why count rather than time: on a GPU a training step is mostly launch-bound (the standard step took
32 ms on an H200 for ~1200 small kernels, as counted below), so the number of kernel-launching operators a step
dispatches, and the number of times the host must wait for the device (``.item()``, ``nonzero``,
``bool(tensor)``; not Adam's reads of step counters that live on the CPU), predict its GPU time
better than a CPU clock does. They are counted here on the CPU with ``torch.profiler``: the leaf
``aten::`` operators of 10 steady steps (after the hash levels, the camera corrections and the sample
cap have started), leaving out the ones that launch nothing (views, reshapes, empty allocations,
``.item()`` itself).

Two columns, because the CPU dispatches some work the GPU does not:

* **CPU operators**: every launching leaf operator, as the CPU runs it;
* **GPU launches**: what the same code launches on CUDA. Element-wise operators whose inputs differ in
  dtype convert the odd input into a temporary copy on the CPU only (``aten::to`` inside the
  operator; CUDA kernels cast as they load), so those copies are left out; a multi-tensor or fused
  optimizer kernel (``aten::_foreach_*``, ``aten::_fused_*``) counts once, not as the per-tensor
  operators its CPU fallback runs. The optimizer is built as on CUDA (fused Adam, see
  ``recon.train._adam``) for both columns. The hash grid's own operators differ by device too (the CPU path
  contracts its corner weights with a matrix product, see ``recon.encoding``): their count is the
  CPU's in both columns.

Rows: the presets as they are, every robustness method off, and each method off alone.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from unittest.mock import patch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NO_LAUNCH = frozenset(
    f"aten::{name}"
    for name in (
        "as_strided",
        "empty_strided",
        "view",
        "resolve_conj",
        "empty",
        "detach",
        "resolve_neg",
        "_reshape_alias",
        "unsqueeze",
        "squeeze",
        "expand",
        "slice",
        "select",
        "t",
        "transpose",
        "permute",
        "alias",
        "lift_fresh",
        "_unsafe_view",
        "unbind",
        "split",
        "chunk",
        "narrow",
        "reshape",
        "set_",
        "split_with_sizes",
        "diagonal",
        "movedim",
        "unflatten",
        "view_as",
        "is_nonzero",
        "detach_",
        "_local_scalar_dense",
        "item",
        "empty_like",
        "result_type",
        "contiguous",
        "to",
        "_to_copy",
        "type_as",
        "expand_as",
        "flatten",
        "squeeze_",
        "unsqueeze_",
        "zeros",
        "ones",
        "full",
        "zeros_like",
        "ones_like",
        "full_like",
        "new_zeros",
        "new_empty",
        "new_full",
        "scalar_tensor",
        "matmul",
        "linear",
        "einsum",
    )
)
"""Operators that launch no kernel of their own (or whose work shows as a child operator)."""


# Element-wise (TensorIterator) operators: an ``aten::to`` inside one of them is the CPU's promotion
# of a mixed-dtype input, which a CUDA kernel does while loading instead.
ELEMENTWISE = frozenset(
    f"aten::{name}"
    for name in (
        "add", "add_", "sub", "sub_", "rsub", "mul", "mul_", "div", "div_", "where", "ge", "gt", "le",
        "lt", "eq", "ne", "maximum", "minimum", "pow", "clamp", "clamp_", "lerp_", "addcmul_",
        "addcdiv_", "bitwise_and", "bitwise_or", "bitwise_xor", "logical_and", "logical_or",
        "remainder", "fmod", "floor_divide", "masked_fill_", "copysign", "atan2",
    )
)  # fmt: skip
GROUPED = ("aten::_foreach_", "aten::_fused_")
"""Multi-tensor and fused kernels: one launch each on CUDA (a few tensors per parameter group)."""


def count(
    views, masks, preset, window: tuple[int, int], adam: str = "fused", engine: str = "eager"
) -> tuple[float, float, float]:
    """(CPU operators, GPU launches, host syncs) per step over ``window`` = (first step, number of
    steps); see the module docstring for the difference between the first two. ``adam``: the
    optimizer's form, ``fused`` (what recon.train builds on CUDA) or ``foreach`` (PyTorch's CUDA
    default, which recon.train used before session 7). ``engine``: ``eager`` or ``static`` (the
    fixed-shape step that ``--cuda-graph`` captures: its launches are what one graph replay holds)."""
    import torch

    from recon.train import train

    start, steps = window
    prof = torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU],
        schedule=torch.profiler.schedule(wait=start - 2, warmup=2, active=steps, repeat=1),
    )

    class Clock:
        """Steps the profiler at each training step (and ignores the other progress tasks)."""

        @contextmanager
        def task(self, description: str, total):
            training = description.startswith("reconstruct")
            yield (lambda n=1, **_: prof.step()) if training else (lambda n=1, **_: None)

    from recon.adam import Adam

    def adam_as_on_cuda(groups):  # recon.train._adam's optimizer in its CUDA form
        if adam == "fused":
            return Adam(groups, betas=(0.9, 0.99), eps=1e-15, fused=True)
        return torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15, foreach=True)

    prof.start()
    with patch("recon.train._adam", adam_as_on_cuda):
        train(
            views,
            replace(preset, steps=start + steps + 1),
            torch.device("cpu"),
            seed=0,
            progress=Clock(),
            masks=masks,
            engine=engine,
        )
    prof.stop()
    events = prof.events()

    def launches(e) -> bool:
        return e.name not in NO_LAUNCH and not any(
            c.name.startswith("aten::") and c.name not in NO_LAUNCH for c in e.cpu_children
        )

    def in_optimizer(e) -> bool:
        while e is not None:
            if e.name.startswith("Optimizer.step"):
                return True
            e = e.cpu_parent
        return False

    def ancestors(e):
        e = e.cpu_parent
        while e is not None:
            yield e
            e = e.cpu_parent

    def cpu_only(e) -> bool:
        """Inside a grouped optimizer kernel, or a CPU dtype promotion inside an element-wise op."""
        chain = [e, *ancestors(e)]
        if any(a.name.startswith(GROUPED) for a in chain[1:]):
            return True
        return any(
            a.name == "aten::to" and a.cpu_parent is not None and a.cpu_parent.name in ELEMENTWISE
            for a in chain
        )

    aten = [e for e in events if e.name.startswith("aten::")]
    ops = sum(1 for e in aten if launches(e))
    gpu = sum(1 for e in aten if (e.name.startswith(GROUPED) or launches(e)) and not cpu_only(e))
    # Adam's step counters are CPU tensors on every device: reading them waits for nothing
    syncs = sum(
        1 for e in events if e.name in ("aten::_local_scalar_dense", "aten::nonzero") and not in_optimizer(e)
    )
    return ops / steps, gpu / steps, syncs / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quality", default="draft", choices=("draft", "standard", "high"))
    parser.add_argument("--views", type=Path, default=REPO / "examples" / "spot")
    parser.add_argument("--start", type=int, default=150, help="first profiled step (methods all on by then)")
    parser.add_argument(
        "--adam", default="fused", choices=("fused", "foreach"), help="the optimizer's form (see count())"
    )
    parser.add_argument(
        "--engine",
        default="eager",
        choices=("eager", "static"),
        help="the training step's form (see count())",
    )
    args = parser.parse_args(argv)

    import torch

    from recon.masks import view_masks
    from recon.presets import ROBUSTNESS_OFF, get_preset
    from sd3d.core.io import read_views

    torch.set_num_threads(2)
    views = read_views(args.views)
    masks, _ = view_masks(views)
    base = get_preset(args.quality)
    rows = [("presets", {}), ("every method off", ROBUSTNESS_OFF)]
    rows += [(f"without {k}", {k: v}) for k, v in ROBUSTNESS_OFF.items() if getattr(base, k) != v]
    rows = [(label, k) for label, k in rows if label != "without texture_source"]  # export only
    print(
        f"Launching operators and host syncs per training step, {args.quality}, CPU, steps {args.start}+, "
        f"Adam {args.adam}, {args.engine} step\n"
    )
    print("| preset | CPU operators / step | GPU launches / step | syncs / step |")
    print("|---|---:|---:|---:|")
    for label, changes in rows:
        ops, gpu, syncs = count(
            views, masks, replace(base, **changes), (args.start, 10), args.adam, args.engine
        )
        print(f"| {label} | {ops:.0f} | {gpu:.0f} | {syncs:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
