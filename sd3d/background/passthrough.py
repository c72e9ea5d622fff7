"""Backends that segment nothing: ``alpha`` (trust the file's own alpha) and ``none`` (all opaque)."""

from __future__ import annotations

import numpy as np
from PIL import Image

from sd3d.background.base import with_alpha
from sd3d.core.errors import InputImageError


class AlphaBackend:
    """Use the image's alpha channel as the object mask, exactly as the official pipeline expects."""

    name = "alpha"

    def segment(self, image: Image.Image) -> Image.Image:
        if image.mode != "RGBA":
            raise InputImageError(
                "the image has no alpha channel; use --background auto, rembg or grabcut to find the object"
            )
        alpha = np.asarray(image.getchannel("A"))
        if not alpha.any():
            raise InputImageError(
                "the image's alpha channel is fully transparent (no foreground); "
                "use --background grabcut or rembg to ignore it"
            )
        return image


class NoneBackend:
    """No background removal: the whole picture (alpha dropped) is the object."""

    name = "none"

    def segment(self, image: Image.Image) -> Image.Image:
        return with_alpha(image, np.full((image.height, image.width), 255, np.uint8))
