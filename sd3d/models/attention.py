"""Scaled dot-product attention for every attention layer of the models, from the kernels named here.

Why not PyTorch's own choice of kernel: on an H100 (torch 2.11, session 13) a process's first
generation spent 2.0 s of host time in its first attention calls, most of the first denoising step,
against well under a millisecond per call afterwards. PyTorch may pick cuDNN's attention there, and
cuDNN builds an execution plan for every new shape on first use; the flash and memory-efficient
kernels are compiled into PyTorch. :data:`BACKENDS` leaves cuDNN's out, so a cold ``sd3d generate``
/ ``sd3d run`` does not pay for plans it uses for one generation (benchmarks/RESULTS.md, session 13,
has the first-generation times and the steady-state step either way). On CPU the list changes
nothing: PyTorch's CPU attention is its flash kernel or the math fallback, both in the list.

The context is entered per call (it sets PyTorch's backend flags and restores them), so nothing
global changes for other code in the process.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS: tuple[SDPBackend, ...] = (
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
)
"""The kernels :func:`attention` may use, in PyTorch's order of preference (it picks the first that
supports the inputs)."""


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` over the last two dims, by one of :data:`BACKENDS`."""
    with sdpa_kernel(list(BACKENDS)):
        return F.scaled_dot_product_attention(q, k, v)
