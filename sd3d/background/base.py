"""The one small interface every foreground backend implements, and helpers they share.

A backend turns an upright ``RGB``/``RGBA`` PIL image into an ``RGBA`` image of the same size whose
alpha is the object mask (the official pipeline's input format). Backends never recentre, resize or
composite: that is :mod:`sd3d.preprocess`'s job, so every backend feeds the same official recentering.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import cv2
import numpy as np
from PIL import Image


@runtime_checkable
class BackgroundBackend(Protocol):
    """``segment(image) -> RGBA`` with the same size; ``name`` is what ``--background`` calls it."""

    name: str

    def segment(self, image: Image.Image) -> Image.Image: ...


def with_alpha(image: Image.Image, alpha: np.ndarray) -> Image.Image:
    """The image's RGB with ``alpha`` (uint8 HxW) as its alpha channel."""
    rgb = image.convert("RGB") if image.mode != "RGB" else image
    if alpha.shape != (rgb.height, rgb.width):
        raise ValueError(f"alpha has shape {alpha.shape}, image is {rgb.width}x{rgb.height}")
    return Image.merge("RGBA", (*rgb.split(), Image.fromarray(np.ascontiguousarray(alpha, np.uint8), "L")))


def clean_matte(alpha: np.ndarray, floor: int = 8, min_component_fraction: float = 0.01) -> np.ndarray:
    """Drop faint haze and specks from a *predicted* matte (never applied to a user's own alpha).

    The official recentering crops to the bounding box of ``alpha > 0``, so one stray pixel of a
    soft segmentation far from the object would shrink the object in the 256x256 input. Values below
    ``floor`` become 0, and connected pieces smaller than ``min_component_fraction`` of the largest
    piece are removed; everything else (soft edges included) is kept as predicted.
    """

    out = np.where(alpha >= floor, alpha, 0).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats((out > 0).astype(np.uint8), connectivity=8)
    if count <= 2:  # background + at most one piece
        return out
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.zeros(count, bool)
    keep[1:] = areas >= min_component_fraction * areas.max()
    return np.where(keep[labels], out, 0).astype(np.uint8)
