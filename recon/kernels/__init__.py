"""Fused GPU kernels (Triton) for the reconstruction's hot paths; PyTorch code stays the reference.

Triton is optional: it ships with the CUDA builds of PyTorch, but CPU installs (and CI) have none.
Nothing here imports it at import time; :func:`hash_grid_module` loads the kernel module on first use
and returns ``None`` (with :func:`unavailable_reason` saying why) when Triton cannot be imported. A
caller that asked for the kernel explicitly gets a :class:`~sd3d.core.errors.MissingDependencyError`
from :func:`require_hash_grid` instead of a silent fallback.

On a CPU tensor the kernels run only in Triton's interpreter, which is chosen when Triton is first
imported (``TRITON_INTERPRET=1`` in the environment before that): the tests use it, nothing else should.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import torch

from sd3d.core.device import triton_unsupported_gpu
from sd3d.core.errors import MissingDependencyError


@functools.cache
def _load_hash_grid() -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module(f"{__name__}.hash_grid"), None
    except ImportError as exc:
        if (exc.name or "").split(".")[0] == "triton":
            return None, "Triton is not installed (it ships with the CUDA builds of PyTorch)"
        return None, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a Triton install that fails to initialise
        return (
            None,
            f"Triton does not initialise ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
        )


def hash_grid_module() -> ModuleType | None:
    """:mod:`recon.kernels.hash_grid`, or ``None`` when Triton cannot be imported."""
    return _load_hash_grid()[0]


def unavailable_reason(device: torch.device) -> str | None:
    """Why the Triton hash grid cannot run on ``device`` (``None``: it can)."""
    module, reason = _load_hash_grid()
    if module is None:
        return reason
    if device.type == "cuda":
        return triton_unsupported_gpu(device)
    if module.INTERPRETED:
        return None
    return (
        f"it runs on CUDA devices, not {device.type} (Triton's CPU interpreter, for tests, "
        "is enabled by TRITON_INTERPRET=1 before Triton is imported)"
    )


def require_hash_grid(device: torch.device) -> ModuleType:
    """The kernel module, or a :class:`MissingDependencyError` saying why it cannot run on ``device``."""
    reason = unavailable_reason(device)
    if reason is not None:
        raise MissingDependencyError(
            f"the Triton hash grid is unavailable: {reason}; use the PyTorch grid (--hash-grid torch)"
        )
    return _load_hash_grid()[0]
