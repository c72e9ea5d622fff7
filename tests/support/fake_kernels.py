"""Stand-ins for ``@triton.jit`` kernels, for the compile workers' tests (sd3d.models.kernels.precompile).

A worker process imports this module by name and calls ``warmup`` on its ``KERNELS``; each call is
appended as one JSON line to the file named by ``SD3D_FAKE_KERNEL_LOG`` (with the worker's pid), so the
test can see what each process was asked to compile without a GPU or Triton.
"""

from __future__ import annotations

import json
import os


class FakeKernel:
    def __init__(self, name: str, behaviour: str = "ok") -> None:
        self.__name__ = name
        self.behaviour = behaviour

    def warmup(self, *args, grid, **constants) -> None:
        if self.behaviour == "raise":
            raise RuntimeError("ptxas said no")
        if self.behaviour == "die":
            os._exit(3)
        record = {
            "pid": os.getpid(),
            "kernel": self.__name__,
            "args": [str(a) for a in args],
            "grid": list(grid),
            "constants": constants,
        }
        with open(os.environ["SD3D_FAKE_KERNEL_LOG"], "a") as log:
            log.write(json.dumps(record) + "\n")


KERNELS = (
    FakeKernel("_ok_kernel"),
    FakeKernel("_raising_kernel", "raise"),
    FakeKernel("_dying_kernel", "die"),
)
