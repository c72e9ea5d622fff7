"""Convolution biases without cuDNN's separate addition (inference on CUDA).

cuDNN convolves without a bias; PyTorch adds a convolution's bias afterwards, in place, with a
broadcasting element-wise kernel: one more read and write of the whole output. In a SyncDreamer
step those additions were 190 launches and 2.38 of 26.9 ms on an H100 (session 16's profile,
``elementwise_kernel<..., CUDAFunctor_add>``; ``benchmarks/step_layouts.py`` found that almost none of
them are visible as operators, so they are the convolutions' own). Where a convolution's output goes
next decides where its bias can go instead:

* into the GroupNorm that reads it, as a pre-norm term (the kernel of
  :mod:`sd3d.models.kernels.group_norm` adds up to two such terms, each rounded as PyTorch rounds
  ``x + bias``): a ResBlock's first convolution (next to the time embedding) and a depth
  transformer's input projection. Same numbers as before, bit for bit on CUDA;
* into the epilogue of a matrix product: a 1x1 convolution of a channels-last input is a matrix
  product over the channels, and cuBLAS adds the bias to the float32 accumulator before rounding
  once (a spatial transformer's projections, a ResBlock's skip projection, which then carries the
  block's last convolution's bias as well). Not bit for bit: one rounding fewer.

:func:`set_conv_bias_folding` turns this on per model (``prepare_for_inference`` does on CUDA); off,
the layers run ``nn.Conv2d`` as the official code does. The CPU reference path keeps it off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_without_bias(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` less its bias (see :func:`bias_term` for the bias)."""
    return conv._conv_forward(x, conv.weight, None)


def bias_term(conv: nn.Conv2d, like: torch.Tensor) -> torch.Tensor:
    """``conv``'s bias as a (1, C, 1, 1) term in ``like``'s dtype: what ``conv(x)`` adds per channel."""
    return conv.bias.to(like.dtype).view(1, -1, 1, 1)


def is_pointwise(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` is a plain 1x1 convolution (a matrix product over the channels)."""
    return (
        conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.padding in ((0, 0), "valid", "same")
    )


def channels_last_rows(x: torch.Tensor) -> torch.Tensor | None:
    """A dense channels-last (B, C, H, W) tensor as the (B*H*W, C) matrix it is in memory (a view);
    ``None`` for any other layout."""
    if x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
        return None
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def pointwise_conv2d(
    conv: nn.Conv2d, x: torch.Tensor, extra_bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``conv(x) + extra_bias`` for a 1x1 ``conv`` (``extra_bias``: (C_out,) or None). On a
    channels-last ``x``, one matrix product with both biases in its epilogue, returning a
    channels-last tensor; otherwise the convolution and an addition."""
    rows = channels_last_rows(x) if is_pointwise(conv) else None
    if rows is None:
        out = conv(x)
        return out if extra_bias is None else out + extra_bias.to(out.dtype).view(1, -1, 1, 1)
    bias = conv.bias
    if extra_bias is not None:
        wide = torch.promote_types(bias.dtype if bias is not None else extra_bias.dtype, torch.float32)
        bias = extra_bias if bias is None else bias.to(wide) + extra_bias.to(wide)
        bias = bias.to(conv.weight.dtype)  # F.linear wants one dtype (autocast casts all three anyway)
    b, _, h, w = x.shape
    weight = conv.weight.reshape(conv.out_channels, conv.in_channels)
    out = F.linear(rows, weight, bias)
    return out.view(b, h, w, -1).permute(0, 3, 1, 2)


def set_conv_bias_folding(model: nn.Module, enabled: bool) -> nn.Module:
    """Turn the folding on or off on every layer of ``model`` that has it; returns ``model``."""
    for module in model.modules():
        if hasattr(module, "fold_conv_bias"):
            module.fold_conv_bias = enabled
    return model
