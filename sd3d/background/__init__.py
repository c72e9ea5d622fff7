"""Foreground (background removal) backends behind one small interface.

``--background`` choices: ``alpha`` (the file's own alpha), ``rembg`` (U^2-Net u2netp, optional extra),
``carvekit`` (the official tool's choice, optional extra), ``grabcut`` (OpenCV, no weights), ``none``
(whole image), and ``auto``: a non-trivial alpha channel if the image has one, else rembg when it is
installed *and* its model is present locally, else GrabCut. So the default works offline right after
set-up and never downloads anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image

from sd3d.background.base import BackgroundBackend, clean_matte, with_alpha
from sd3d.core.errors import InputImageError, UserError

BACKEND_NAMES = ("auto", "alpha", "rembg", "carvekit", "grabcut", "none")

__all__ = [
    "BACKEND_NAMES",
    "BackgroundBackend",
    "Foreground",
    "check_backend_name",
    "choose_backend",
    "clean_matte",
    "get_backend",
    "has_informative_alpha",
    "remove_background",
    "with_alpha",
]


@dataclass(frozen=True)
class Foreground:
    """``rgba``: the source-sized image with the object mask as alpha; ``backend``: who made it."""

    rgba: Image.Image
    backend: str


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
    if has_informative_alpha(image):
        return "alpha"
    from sd3d.background import rembg_u2netp

    return "rembg" if rembg_u2netp.is_available(weights_dir) else "grabcut"


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
    if key == "auto":
        key = choose_backend(image, weights_dir)
    if key not in ("alpha", "none") and _is_flat(image):
        raise InputImageError("no foreground: the image is a single flat colour")
    rgba = get_backend(key, weights_dir).segment(image)
    if not np.asarray(rgba.getchannel("A")).any():
        raise InputImageError(
            f"no foreground found by --background {key}; try another --background or crop the photo closer"
        )
    return Foreground(rgba=rgba, backend=key)


def _is_flat(image: Image.Image) -> bool:
    return all(lo == hi for lo, hi in image.convert("RGB").getextrema())
