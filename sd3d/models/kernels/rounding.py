"""Rounding to a half-precision dtype inside a Triton kernel, the same in the interpreter and on a GPU.

Shared by the GroupNorm, GEGLU and depth-attention kernels, each of which rounds where PyTorch does
(or once, at its output) and must do so identically in the tests' interpreter and on CUDA.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_HALF_CODE = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
"""A dtype's ``HALF`` constant for :func:`_round_to`."""


@triton.jit
def _round_to(v, HALF: tl.constexpr):
    """``v`` (float32) rounded to the nearest ``HALF`` value (1: bfloat16, 2: float16; 0: left as
    it is), ties to even, kept in float32. bfloat16 by its bits: Triton's interpreter truncates a
    float32 -> bfloat16 cast, the compiled kernel rounds to nearest; this is the same in both."""
    if HALF == 1:
        bits = v.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return tl.where(v != v, v, bits.to(tl.float32, bitcast=True))
    elif HALF == 2:
        return v.to(tl.float16).to(tl.float32)
    else:
        return v
