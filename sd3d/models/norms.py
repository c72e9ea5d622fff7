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

On CUDA, :class:`GroupNorm` (and so :class:`GroupNorm32`) runs a Triton kernel instead
(:mod:`sd3d.models.kernels.group_norm`) that reads and writes the input's own layout, so a
channels-last UNet no longer pays an NCHW copy in and out of every norm, and that can add a
per-(sample, channel) bias before the norm and apply the SiLU / ReLU after it in the same pass.
The kernel reproduces the arithmetic the PyTorch code above asks for (float32 statistics, the same
output dtype) and, by default, the roundings of PyTorch's CUDA path too (``kernel_rounding="unfused"``:
each ``x + term`` rounded to the input's dtype; the group's mean and 1/std rounded to the input's
dtype, as ``native_group_norm`` returns them in it and its CUDA affine reads them back; ``a * x + b``;
the norm's output rounded before the activation), so the choice is per
object (``implementation``: ``"auto"`` = the kernel for CUDA tensors when Triton imports, the dtypes
and layout are supported, no gradient is needed and ``torch.compile`` is not tracing; ``"torch"``;
``"triton"``) and the PyTorch code stays the reference. A module's own default is ``"torch"``;
inference models get ``"auto"`` from ``prepare_for_inference`` (its ``norm_kernel``, since session 14)
or ``set_norm_implementation(model, "auto")``. Why the roundings: the kernel's first form (``kernel_rounding="fused"``, one
rounding) is closer to float64 than PyTorch's norm on every real shape, yet a whole generation with
it ends 9-10 % further from the float32 model's latents (1.38e-2 vs 1.26e-2 over five seeds, SE of
the difference 2.5e-5, session 10; the same on other inputs, mostly from the UNet's norms, session
13; benchmarks/RESULTS.md), which #14 does not allow. Session 14 found why the first unfused form
(float32 statistics, PyTorch's CPU roundings) still differed from PyTorch on an H100 in 27 % of the
outputs and ended 6 % further from float32: PyTorch's CUDA GroupNorm rounds its statistics to
bfloat16 before the affine map, which makes it less accurate per call, yet it is the model's
reference. The unfused form now rounds them too; in Triton's interpreter it equals an emulation of
that CUDA path bit for bit (tests/test_triton_norms.py, whose CUDA run checks the emulation against
PyTorch). On an H100 it then differs from PyTorch in at most 4.8e-4 of the outputs (statistics that
round the other way), its generation ends as close to float32 as PyTorch's norms (1.262e-2 vs
1.269e-2 over six runs), and the graphed step takes 32.1 ms instead of 41.1 ms: so it is the default. The fusions are spelled out by the callers: ``norm(x, pre_bias=..., activation=...)``,
or :class:`NormActSequential`, an ``nn.Sequential`` (same children, same state-dict keys) that
hands each GroupNorm the activation module that follows it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sd3d.models import kernels

HALF_DTYPES = (torch.bfloat16, torch.float16)
IMPLEMENTATIONS = kernels.IMPLEMENTATIONS
ROUNDINGS = kernels.GROUP_NORM_ROUNDINGS
ACTIVATIONS = ("silu", "relu")

PreBias = torch.Tensor | Sequence[torch.Tensor] | None
"""Terms added to a norm's input before normalising, each broadcasting as (N, C, 1, ..., 1)."""


def computes_in_half(module: nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` normalises ``x`` in its half-precision parameter dtype."""
    weight = getattr(module, "weight", None)
    return weight is not None and weight.dtype in HALF_DTYPES and x.dtype != torch.float64


def check_implementation(implementation: str) -> str:
    return kernels.check_implementation(implementation, "norm")


def _terms(pre_bias: PreBias) -> list[torch.Tensor]:
    if pre_bias is None:
        return []
    return [pre_bias] if isinstance(pre_bias, torch.Tensor) else list(pre_bias)


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    """``F.silu`` / ``F.relu`` as ``nn.SiLU`` / ``nn.ReLU`` would apply them (in place on the norm's
    fresh output unless autograd needs it)."""
    if activation is None:
        return y
    inplace = not (torch.is_grad_enabled() and y.requires_grad)
    return F.silu(y, inplace=inplace) if activation == "silu" else F.relu(y, inplace=inplace)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm``; with half-precision parameters, computed on the half-precision input.

    ``forward(x, pre_bias=None, activation=None)`` is ``act(norm(x + pre_bias terms))``, by the
    Triton kernel or the PyTorch code according to ``implementation`` (module docstring).
    """

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
        implementation: str = "torch",
    ) -> None:
        super().__init__(num_groups, num_channels, eps, affine, device, dtype)
        self.implementation = check_implementation(implementation)
        # where the kernel rounds (sd3d.models.kernels.group_norm.group_norm's ``rounding``):
        # "unfused" = where the PyTorch code rounds; "fused" only to measure the difference
        self.kernel_rounding = "unfused"
        # why the kernel failed on this module (then it takes PyTorch's path: implementation "auto")
        self.kernel_error: str | None = None

    def extra_repr(self) -> str:
        return super().extra_repr() + (
            "" if self.implementation == "auto" else f", implementation={self.implementation}"
        )

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The PyTorch computation (the kernel's reference)."""
        if computes_in_half(self, x):
            with torch.autocast(x.device.type, enabled=False):
                return F.group_norm(
                    x.to(self.weight.dtype), self.num_groups, self.weight, self.bias, self.eps
                )
        return nn.GroupNorm.forward(self, x)

    def output_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The dtype :meth:`reference_forward` returns for ``x`` where the kernel computes the same
        thing (float32 statistics and affine); ``None`` where it does not (float64, mixed dtypes)."""
        if x.dtype == torch.float64:
            return None
        if computes_in_half(self, x):
            return self.weight.dtype
        if torch.is_autocast_enabled(x.device.type):
            return torch.float32  # group_norm is one of autocast's float32 ops
        if self.weight is None or self.weight.dtype == x.dtype:
            return x.dtype
        return None

    def kernel_unavailable(self, x: torch.Tensor, pre_bias: PreBias = None) -> str | None:
        """Why this call does not run the Triton kernel (``None``: it does)."""
        if (failed := kernels.failed_before(self.implementation, self.kernel_error)) is not None:
            return failed
        tensors = itertools.chain((x,), self.parameters(), _terms(pre_bias))  # read only if reached
        reason = kernels.refusal(
            self.implementation, x.device, kernels.group_norm_module, "group_norm", tensors
        )
        if reason is not None:
            return reason
        module = kernels.group_norm_module()
        out_dtype = self.output_dtype(x)
        if out_dtype is None or (self.weight is not None and self.weight.dtype not in module.DTYPES):
            return f"input {x.dtype} with {self.weight.dtype if self.weight is not None else 'no'} parameters"
        return module.unsupported_reason(x, self.num_groups, out_dtype, self.kernel_rounding)

    def forward(
        self, x: torch.Tensor, pre_bias: PreBias = None, activation: str | None = None
    ) -> torch.Tensor:
        if activation is not None and activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; known: {', '.join(ACTIVATIONS)}")
        reason = self.kernel_unavailable(x, pre_bias)
        if reason is None:
            out = kernels.run_or_fall_back(
                self,
                self.implementation,
                "GroupNorm",
                lambda: kernels.group_norm_module().group_norm(
                    x,
                    self.num_groups,
                    self.weight,
                    self.bias,
                    self.eps,
                    activation=activation,
                    pre_bias=pre_bias,
                    out_dtype=self.output_dtype(x),
                    rounding=self.kernel_rounding,
                ),
            )
            if out is not None:
                return out
            reason = self.kernel_error
        if self.implementation == "triton":
            raise RuntimeError(f"GroupNorm(implementation='triton') cannot run its kernel here: {reason}")
        for term in _terms(pre_bias):
            x = x + term
        return _activate(self.reference_forward(x), activation)


class GroupNorm32(GroupNorm):
    """CompVis ``GroupNorm32``: with float32 parameters, half input is normalised in float32 and
    returned in its own dtype; with half parameters, like :class:`GroupNorm`."""

    def reference_forward(self, x: torch.Tensor) -> torch.Tensor:
        if computes_in_half(self, x) or x.dtype == torch.float64:
            return super().reference_forward(x)
        return nn.GroupNorm.forward(self, x.float()).to(x.dtype)

    def output_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        if computes_in_half(self, x) or x.dtype == torch.float64:
            return super().output_dtype(x)
        return x.dtype


_FUSABLE_ACTIVATIONS = {nn.SiLU: "silu", nn.ReLU: "relu"}


class NormActSequential(nn.Sequential):
    """``nn.Sequential`` whose GroupNorms get the SiLU / ReLU module that follows them as a fused
    ``activation`` (that module is then skipped), and whose ``forward(x, pre_bias)`` hands
    ``pre_bias`` to the leading GroupNorm. Same children, so the same state-dict keys; with the
    PyTorch implementation the same operations as ``nn.Sequential``."""

    def forward(self, x: torch.Tensor, pre_bias: PreBias = None) -> torch.Tensor:  # type: ignore[override]
        layers = list(self)
        if pre_bias is not None and not (layers and isinstance(layers[0], GroupNorm)):
            raise ValueError("pre_bias needs a GroupNorm as the first layer")
        i = 0
        while i < len(layers):
            layer = layers[i]
            if isinstance(layer, GroupNorm):
                following = type(layers[i + 1]) if i + 1 < len(layers) else None
                activation = _FUSABLE_ACTIVATIONS.get(following)
                x = layer(x, pre_bias=pre_bias, activation=activation)
                i += 2 if activation else 1
            else:
                x = layer(x)
                i += 1
            pre_bias = None
        return x


def set_norm_implementation(model: nn.Module, implementation: str, rounding: str | None = None) -> nn.Module:
    """Set ``implementation`` (``auto``, ``torch`` or ``triton``) on every :class:`GroupNorm` of
    ``model``, and the kernel's ``rounding`` (``unfused`` or ``fused``) when given; returns ``model``."""
    check_implementation(implementation)
    if rounding is not None and rounding not in ROUNDINGS:
        raise ValueError(f"unknown kernel rounding {rounding!r}; known: {', '.join(ROUNDINGS)}")
    for module in model.modules():
        if isinstance(module, GroupNorm):
            module.implementation = implementation
            if rounding is not None:
                module.kernel_rounding = rounding
    return model


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
