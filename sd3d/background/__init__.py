"""Foreground (background removal) backends behind one small interface.

``--background`` choices: ``alpha`` (the file's own alpha), ``rembg`` (U^2-Net u2netp, optional extra),
``carvekit`` (the official tool's choice, optional extra), ``grabcut`` (OpenCV, no weights), ``none``
(whole image), and ``auto``: a non-trivial alpha channel if the image has one, else rembg when it is
installed *and* the weights manager finds its model (:func:`sd3d.weights.find`: the weights folder,
the checkout's ``weights/``, ``~/.cache/sd3d``), else GrabCut. So the default works offline right
after set-up and never downloads anything; :class:`Foreground` says which backend ran and why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sd3d.core.errors import InputImageError, UserError

if TYPE_CHECKING:
    from PIL import Image

    from sd3d.background.base import BackgroundBackend, clean_matte, with_alpha

BACKEND_NAMES = ("auto", "alpha", "rembg", "carvekit", "grabcut", "none")
"""The one list of ``--background`` choices (every command's help and check read it). Importing
this package stays cheap (no numpy or Pillow) so the CLI can build its help from it."""

_LAZY = ("BackgroundBackend", "clean_matte", "with_alpha")


def __getattr__(name: str) -> Any:
    """The shared helpers of :mod:`sd3d.background.base`, imported on first use."""
    if name in _LAZY:
        from sd3d.background import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BACKEND_NAMES",
    "BackgroundBackend",
    "Foreground",
    "check_backend_name",
    "choose_backend",
    "clean_matte",
    "describe",
    "get_backend",
    "has_informative_alpha",
    "remove_background",
    "with_alpha",
]


@dataclass(frozen=True)
class Foreground:
    """``rgba``: the source-sized image with the object mask as alpha; ``backend``: who made it;
    ``note``: how it was chosen and what it used (the model file, why ``auto`` fell back), so a
    silent fallback never goes unnoticed (commands print it and ``sd3d run`` records it)."""

    rgba: Image.Image
    backend: str
    note: str = ""


def describe(backend: str | None, note: str = "") -> str:
    """``backend (note)``: which backend ran and why, as commands print it, e.g.
    ``grabcut (auto: no alpha channel; rembg is not installed ...)``."""
    name = backend or "none"
    return f"{name} ({note})" if note else name


def check_backend_name(name: str) -> str:
    key = (name or "").strip().lower()
    if key not in BACKEND_NAMES:
        raise UserError(f"unknown --background {name!r}; choose one of: {', '.join(BACKEND_NAMES)}")
    return key


def has_informative_alpha(image: Image.Image) -> bool:
    """An alpha channel that says something: not all opaque (fully transparent counts: it is an error
    the ``alpha`` backend reports)."""
    if image.mode != "RGBA":
        return False
    lo, hi = image.getchannel("A").getextrema()
    return lo < 255 or hi < 255


def choose_backend(image: Image.Image, weights_dir: str | os.PathLike | None = None) -> str:
    """The ``auto`` rule (see the module docstring)."""
    return _auto_choice(image, weights_dir)[0]


def _auto_choice(image: Image.Image, weights_dir: str | os.PathLike | None) -> tuple[str, str]:
    """``auto``'s backend and why it was chosen."""
    if has_informative_alpha(image):
        return "alpha", "auto: the image has an alpha channel"
    from sd3d.background import rembg_u2netp

    missing = rembg_u2netp.missing_model_hint(weights_dir)
    if missing:
        return "grabcut", f"auto: no alpha channel; {missing}"
    return "rembg", "auto: no alpha channel"


def _backend_note(key: str, weights_dir: str | os.PathLike | None) -> str:
    """What a backend ran with (the model file for rembg)."""
    if key == "rembg":
        from sd3d.background import rembg_u2netp

        return f"model {rembg_u2netp.model_path(weights_dir)}"
    return ""


def get_backend(name: str, weights_dir: str | os.PathLike | None = None) -> BackgroundBackend:
    """A backend instance by name (``auto`` is resolved by :func:`choose_backend`, not here)."""
    key = check_backend_name(name)
    if key == "alpha":
        from sd3d.background.passthrough import AlphaBackend

        return AlphaBackend()
    if key == "none":
        from sd3d.background.passthrough import NoneBackend

        return NoneBackend()
    if key == "grabcut":
        from sd3d.background.grabcut import GrabCutBackend

        return GrabCutBackend()
    if key == "rembg":
        from sd3d.background.rembg_u2netp import RembgBackend

        return RembgBackend(weights_dir)
    if key == "carvekit":
        from sd3d.background.carvekit_tracer import CarvekitBackend

        return CarvekitBackend()
    raise UserError("--background auto must be resolved with choose_backend() first")


def remove_background(
    image: Image.Image, method: str = "auto", weights_dir: str | os.PathLike | None = None
) -> Foreground:
    """Find the object in an upright RGB/RGBA image; raises InputImageError if nothing is found."""
    key = check_backend_name(method)
    why = ""
    if key == "auto":
        key, why = _auto_choice(image, weights_dir)
    if key not in ("alpha", "none") and _is_flat(image):
        raise InputImageError("no foreground: the image is a single flat colour")
    import numpy as np

    rgba = get_backend(key, weights_dir).segment(image)
    if not np.asarray(rgba.getchannel("A")).any():
        raise InputImageError(
            f"no foreground found by --background {key}; try another --background or crop the photo closer"
        )
    note = "; ".join(part for part in (why, _backend_note(key, weights_dir)) if part)
    return Foreground(rgba=rgba, backend=key, note=note)


def _is_flat(image: Image.Image) -> bool:
    return all(lo == hi for lo, hi in image.convert("RGB").getextrema())
