"""A dispatch mode that records which storages a stretch of code reads without having made them."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class StepInputs(TorchDispatchMode):
    """The storages that the operators run inside the mode read but did not produce.

    Why: a CUDA graph captured from that code keeps reading those very memory addresses on every
    replay. State that is replaced between steps by a new tensor (rebound rather than updated in
    place) would show up as a different address here, as it would be missed by a replayed graph.
    Addresses are those of the underlying storages, so a view counts as its base.
    """

    def __init__(self) -> None:
        super().__init__()
        self.made: set[int] = set()
        self.read: dict[int, str] = {}  # storage address -> the first operator that read it

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for t in tree_leaves((args, kwargs)):
            if isinstance(t, torch.Tensor) and t.numel() > 0:
                address = t.untyped_storage().data_ptr()
                if address not in self.made:
                    self.read.setdefault(address, str(func))
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() > 0:
                self.made.add(t.untyped_storage().data_ptr())
        return out
