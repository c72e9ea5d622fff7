"""Batch engines that need an optional extra, imported only when asked for."""

from __future__ import annotations

from types import ModuleType

from sd3d.core.errors import MissingDependencyError


def ray_engine() -> ModuleType:
    """:mod:`sd3d.workflows.batch_ray`, or the one-line instruction to install Ray (an optional extra)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise MissingDependencyError("--engine ray needs Ray: pip install 'sd3d[ray]'") from None
    from sd3d.workflows import batch_ray

    return batch_ray
