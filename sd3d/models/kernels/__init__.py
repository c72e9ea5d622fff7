"""Hand-written GPU kernels (Triton) behind the inference fast paths of :mod:`sd3d.models`.

Triton is optional: it ships with the CUDA builds of PyTorch, but CPU installs (and CI) have none.
Nothing here imports it at import time; :func:`group_norm_module` loads the kernels on first use and
returns ``None`` (with :func:`unavailable_reason` saying why) when Triton cannot be imported, so the
layers that use them fall back to their PyTorch code, which stays the reference.

Kept in a package of their own so that the model modules never import Triton and the kernels,
their launch heuristics and their equivalence tests live side by side.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Callable
from types import ModuleType

import torch

from sd3d.core.device import triton_unsupported_gpu

IMPLEMENTATIONS = ("auto", "torch", "triton")
"""What a kernel-backed layer (the GroupNorm, GEGLU, the depth attention's middle) may run: ``auto`` the kernel where it can,
else PyTorch; ``torch`` PyTorch's code, the reference; ``triton`` the kernel or an error."""

GROUP_NORM_ROUNDINGS = ("unfused", "fused")
"""Where the GroupNorm kernel may round (:func:`sd3d.models.kernels.group_norm.group_norm`'s
``rounding``); here, without Triton, so that :mod:`sd3d.models.norms` checks the same names."""


@functools.cache
def _load(name: str) -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module(f"{__name__}.{name}"), None
    except Exception as exc:  # ImportError, or a Triton install that fails to initialise
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def group_norm_module() -> ModuleType | None:
    """:mod:`sd3d.models.kernels.group_norm`, or ``None`` when Triton cannot be imported."""
    return _load("group_norm")[0]


def geglu_module() -> ModuleType | None:
    """:mod:`sd3d.models.kernels.geglu`, or ``None`` when Triton cannot be imported."""
    return _load("geglu")[0]


def depth_attention_module() -> ModuleType | None:
    """:mod:`sd3d.models.kernels.depth_attention`, or ``None`` when Triton cannot be imported."""
    return _load("depth_attention")[0]


def unavailable_reason(name: str = "group_norm") -> str | None:
    """Why the kernels module ``name`` does not load (``None`` when it does)."""
    return _load(name)[1]


@functools.cache
def _unsupported_gpu(index: int | None) -> str | None:
    """:func:`sd3d.core.device.triton_unsupported_gpu`, once per device: this runs before every launch."""
    return triton_unsupported_gpu(torch.device("cuda", index))


def device_reason(device: torch.device, interpreted: bool) -> str | None:
    """Why no kernel here can take tensors on ``device`` (``None``: it can): the first check of every
    kernel module's ``unsupported_reason``. ``interpreted``: the module's kernels run in Triton's
    interpreter, which takes CPU tensors (tests)."""
    if device.type != "cuda" and not interpreted:
        return f"a {device.type} tensor (Triton runs CPU tensors only in its interpreter, TRITON_INTERPRET=1)"
    if device.type == "cuda":
        return _unsupported_gpu(device.index)
    return None


def check_implementation(implementation: str, layer: str) -> str:
    """``implementation`` if it is one of :data:`IMPLEMENTATIONS`, else a ValueError naming ``layer``."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"unknown {layer} implementation {implementation!r}; known: {', '.join(IMPLEMENTATIONS)}"
        )
    return implementation


def refusal(
    implementation: str, device: torch.device, load: Callable[[], ModuleType | None], name: str, tensors
) -> str | None:
    """Why a layer whose ``implementation`` is set does not launch the kernels that ``load`` (e.g.
    :func:`group_norm_module`, module ``name``) returns, on ``device``, for reasons every kernel
    shares (``None``: none of them holds; the layer then asks its kernel about the input itself).
    ``load`` is called only once the device is known to want it (no Triton import for CPU calls).
    ``tensors``: the call's inputs and parameters, looked at last (this runs before every launch),
    for a gradient no kernel here gives."""
    if implementation == "torch":
        return "implementation='torch'"
    if torch.compiler.is_compiling():
        return "traced by torch.compile"
    if implementation == "auto" and device.type != "cuda":
        return f"a {device.type} tensor"
    if load() is None:
        return f"Triton is not available ({unavailable_reason(name)})"
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "autograd (the kernel has no backward)"
    return None


def failed_before(implementation: str, kernel_error: str | None) -> str | None:
    """Why a layer set to ``implementation`` no longer tries its kernel: it failed at an earlier call
    (``kernel_error``, kept by :func:`run_or_fall_back`) and the layer may fall back (``auto``)."""
    if kernel_error is not None and implementation == "auto":
        return f"the kernel failed here: {kernel_error}"
    return None


def run_or_fall_back(
    layer, implementation: str, label: str, launch: Callable[[], torch.Tensor]
) -> torch.Tensor | None:
    """``launch()``, the kernel call of a kernel-backed ``layer``; if it raises anything but running
    out of memory, ``None`` after a warning, with the reason kept on ``layer.kernel_error`` so that
    the layer takes its PyTorch code from then on (:func:`failed_before`). Why: the kernels are the
    CUDA default, so a GPU that Triton cannot compile for must still get PyTorch's result, not an
    error. A layer set to ``"triton"`` (its ``implementation``, asked for by name) raises instead."""
    try:
        return launch()
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as exc:
        if implementation == "triton":
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        layer.kernel_error = f"{type(exc).__name__}: {first}"
        warnings.warn(
            f"the Triton {label} failed ({layer.kernel_error}); PyTorch's code runs instead",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
