"""Normalisation layers of the denoiser, the 3D nets and the VAE: where their arithmetic happens.

The official code normalises in float32 (CompVis ``GroupNorm32``; autocast lists ``group_norm`` and
``layer_norm`` as float32 ops). With bf16 activations that costs a float32 copy of every
normalised tensor and casts on both sides, which together with the float32 norm kernels took a
large share of a SyncDreamer step's GPU time (the profile is in benchmarks/RESULTS.md).

PyTorch's CUDA and CPU GroupNorm / LayerNorm kernels accumulate their statistics in float32 for
bf16 / fp16 input (``acc_type``), so the part that needs float32 gets it without a float32 copy;
only the normalised output is rounded to the input's precision, which the next convolution would
do anyway. So each layer here decides from its *parameters'* dtype, set once when a model is
prepared for inference (:func:`sd3d.models.inference.cast_weights_`):

* float32 parameters: the official numerics (``GroupNorm32`` upcasts half input and returns the
  input's dtype; ``GroupNorm`` / ``LayerNorm`` behave like ``torch.nn``'s, float32 under autocast);
* half-precision parameters: the layer normalises the input in that dtype, autocast disabled for
  the call, with the kernel's float32 statistics.

Float64 input (the tests' reference runs) is always computed in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HALF_DTYPES = (torch.bfloat16, torch.float16)


def computes_in_half(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` normalises ``x`` in its half-precision parameter dtype."""
    weight = getattr(module, "weight", None)
    return weight is not None and weight.dtype in HALF_DTYPES and x.dtype != torch.float64


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm``; with half-precision parameters, computed on the half-precision input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if computes_in_half(self, x):
            with torch.autocast(x.device.type, enabled=False):
                return F.group_norm(
                    x.to(self.weight.dtype), self.num_groups, self.weight, self.bias, self.eps
                )
        return super().forward(x)


class GroupNorm32(GroupNorm):
    """CompVis ``GroupNorm32``: with float32 parameters, half input is normalised in float32 and
    returned in its own dtype; with half parameters, like :class:`GroupNorm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if computes_in_half(self, x) or x.dtype == torch.float64:
            return super().forward(x)
        return nn.GroupNorm.forward(self, x.float()).to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm``; with half-precision parameters, computed on the half-precision input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if computes_in_half(self, x):
            with torch.autocast(x.device.type, enabled=False):
                return F.layer_norm(
                    x.to(self.weight.dtype), self.normalized_shape, self.weight, self.bias, self.eps
                )
        return super().forward(x)


HALF_CAPABLE_NORMS = (GroupNorm, LayerNorm)
