"""Foreground masks for reconstruction: from alpha when the views have it, else from the white background.

Generated views are RGB on white, so without alpha the mask is "not white" (any channel darker than
``1 - threshold``) restricted to its largest connected component, which drops specks of noise. Holes
are *not* filled: a hole through the object (a handle, a ring) shows background and must stay one.
A view whose mask is empty, or that has no background at all, cannot constrain the shape: that is a
:class:`ViewsFolderError` naming the view.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import label

from sd3d.core.errors import ViewsFolderError
from sd3d.core.io import VIEW_FILES, ViewSet

WHITE_THRESHOLD = 0.04  # ~10/255 below white counts as foreground
MIN_COVERAGE = 1e-4  # fraction of the image; below this a mask counts as empty
MAX_COVERAGE = 0.97  # above this the view has no usable background


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 8-connected component of a boolean mask."""

    labels, count = label(mask.astype(bool), structure=np.ones((3, 3), bool))
    if count <= 1:
        return mask.astype(bool)
    biggest = 1 + int(np.argmax(np.bincount(labels.reshape(-1))[1:]))
    return labels == biggest


def mask_from_white(image: np.ndarray, threshold: float = WHITE_THRESHOLD) -> np.ndarray:
    """(H, W, 3) float [0, 1] on white -> (H, W) float32 {0, 1} foreground."""
    fg = (image < 1.0 - threshold).any(axis=-1)
    return largest_component(fg).astype(np.float32)


def view_masks(views: ViewSet) -> tuple[np.ndarray, str]:
    """(N, H, W) float32 foreground coverage in [0, 1] and its source (``alpha`` or ``white``)."""
    if views.alphas is not None:
        masks, source = np.clip(views.alphas.astype(np.float32), 0.0, 1.0), "alpha"
    else:
        masks, source = np.stack([mask_from_white(im) for im in views.images]), "white"
    names = (
        VIEW_FILES if views.num_views == len(VIEW_FILES) else [f"view {i}" for i in range(views.num_views)]
    )
    for name, m in zip(names, masks, strict=True):
        coverage = float((m > 0.5).mean())
        if coverage < MIN_COVERAGE:
            raise ViewsFolderError(f"{name} has an empty foreground mask ({source}): nothing to reconstruct")
        if coverage > MAX_COVERAGE:
            raise ViewsFolderError(
                f"{name} has no background ({source} mask covers {coverage:.0%} of the view)"
            )
    return masks, source
