"""A dispatch mode that records the operators making the host wait for the device's results."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostWaits(TorchDispatchMode):
    """Records the operators that make the host wait for the device's results."""

    WAITS = ("aten._local_scalar_dense", "aten.nonzero", "aten.is_nonzero")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        bool_index = name.startswith("aten.index.Tensor") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None
        )
        # by the operator's name without its overload: nonzero waits, nonzero_static does not
        if name.rsplit(".", 1)[0] in self.WAITS or bool_index:
            self.seen.append(name)
        return func(*args, **(kwargs or {}))
