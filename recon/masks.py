"""Foreground masks for reconstruction: from alpha when the views have it, else from the white background.

Generated views are RGB on white, so without alpha the mask is "not white" (any channel darker than
``1 - threshold``) restricted to its largest connected component, which drops specks of noise. Holes
are *not* filled: a hole through the object (a handle, a ring) shows background and must stay one.
A view whose mask is empty, or that has no background at all, cannot constrain the shape: that is a
:class:`ViewsFolderError` naming the view.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import distance_transform_edt, label

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


def edge_distance(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hard mask (coverage > 0.5) and each pixel's distance to its boundary, in pixels.

    The distance of a pixel centre to the nearest pixel of the other side, minus half a pixel: the
    distance to the boundary between them (inside and outside alike). Training weighs the mask loss
    by it and baking weighs each view's colours by it, so both read the edge the same way.
    """
    hard = mask > 0.5
    return hard, np.where(hard, distance_transform_edt(hard), distance_transform_edt(~hard)) - 0.5


def edge_weights(mask: np.ndarray, edge_px: float) -> np.ndarray:
    """(H, W) float32 weight of each pixel by its distance to the mask's edge: 0 at the edge,
    rising linearly to 1 at ``edge_px`` pixels (both sides of it).

    Why: a generated view's mask is least trustworthy at its edge (where the object blends into the
    background and where neighbouring views disagree by a pixel or two); the interior and the
    far background are not in doubt.
    """
    _, dist = edge_distance(mask)
    return np.clip(dist / edge_px, 0.0, 1.0).astype(np.float32)


def inner_edge_weight(mask: np.ndarray, edge_px: float) -> np.ndarray:
    """(H, W) float32: 0 outside the mask, rising linearly from its edge to 1 at ``edge_px`` inside."""
    hard, dist = edge_distance(mask)
    if edge_px <= 0:
        return hard.astype(np.float32)
    return np.where(hard, np.clip(dist / edge_px, 0.0, 1.0), 0.0).astype(np.float32)
