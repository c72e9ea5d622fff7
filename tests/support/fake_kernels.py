"""Stand-ins for ``@triton.jit`` kernels, for the compile workers' tests (sd3d.core.triton_precompile).

A worker process imports this module by name, calls :func:`variants` for the list every worker
computes alike, and calls ``warmup`` on its share; each call is appended as one JSON line to the file
named by ``SD3D_FAKE_KERNEL_LOG`` (with the worker's pid), so the test can see what each process
compiled without a GPU or Triton.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch


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


@dataclass(frozen=True)
class FakeLaunch:
    kernel: FakeKernel
    grid: tuple
    args: tuple
    constants: dict


def variants(ok: int, raising: int = 0, dying: int = 0) -> list[FakeLaunch]:
    """``ok`` variants that compile, then ``raising`` that raise, then ``dying`` that kill their worker."""
    by_name = {k.__name__: k for k in KERNELS}
    x = torch.empty(2, 8, 4, 4, dtype=torch.bfloat16, device="meta")
    kinds = ["_ok_kernel"] * ok + ["_raising_kernel"] * raising + ["_dying_kernel"] * dying
    return [
        FakeLaunch(by_name[name], (2, 4), (x, x, 8, 16, 1e-6), {"CG": i, "num_warps": 4})
        for i, name in enumerate(kinds)
    ]
