"""Operator launches and host synchronisations per training step, per robustness method (CPU).

    OMP_NUM_THREADS=2 python benchmarks/step_ops.py [--quality draft] [--views examples/spot]

Why count rather than time: on a GPU a training step is mostly launch-bound (the standard step took
32 ms on an H200 for ~1500 small kernels), so the number of kernel-launching operators a step
dispatches, and the number of times the host must wait for the device (``.item()``, ``nonzero``,
``bool(tensor)``; not Adam's reads of its step counters, which live on the CPU), predict its GPU
time better than a CPU clock does. Both are the same on any device for the same
code, so they are counted here on the CPU with ``torch.profiler``: the leaf ``aten::`` operators of
10 steady steps (after the hash levels, the camera corrections and the sample cap have started),
leaving out the ones that launch nothing (views, reshapes, empty allocations, ``.item()`` itself).
Rows: the presets as they are, every robustness method off, and each method off alone.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

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


def count(views, masks, preset, window: tuple[int, int]) -> tuple[float, float]:
    """(launching operators, host syncs) per step over ``window`` = (first step, number of steps)."""
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

    prof.start()
    train(
        views,
        replace(preset, steps=start + steps + 1),
        torch.device("cpu"),
        seed=0,
        progress=Clock(),
        masks=masks,
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

    ops = sum(1 for e in events if e.name.startswith("aten::") and launches(e))
    # Adam's step counters are CPU tensors on every device: reading them waits for nothing
    syncs = sum(
        1 for e in events if e.name in ("aten::_local_scalar_dense", "aten::nonzero") and not in_optimizer(e)
    )
    return ops / steps, syncs / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quality", default="draft", choices=("draft", "standard", "high"))
    parser.add_argument("--views", type=Path, default=REPO / "examples" / "spot")
    parser.add_argument("--start", type=int, default=150, help="first profiled step (methods all on by then)")
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
    print(f"Launching operators and host syncs per training step, {args.quality}, CPU, steps {args.start}+\n")
    print("| preset | operators / step | syncs / step |")
    print("|---|---:|---:|")
    for label, changes in rows:
        ops, syncs = count(views, masks, replace(base, **changes), (args.start, 10))
        print(f"| {label} | {ops:.0f} | {syncs:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
