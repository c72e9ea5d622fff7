"""A cheap multiview-consistency score for picking the best of several generated samples.

Why silhouettes: a set of views that shows one solid object has masks that agree with the visual
hull carved from all of them (every mask is reproduced when the hull is projected back). Views that
disagree carve each other away, so the hull's reprojection covers less of each mask. The score is
the mean IoU between each view's mask and the reprojected hull: 1 for perfectly consistent masks.
It needs no weights and runs in about a second on CPU, so ``sd3d run --samples N`` can rank samples
before paying for a reconstruction. (The 3DiM score, which fits a field on held-out views, is the
thorough measure: ``sd3d eval consistency``.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recon.hull import hull_mesh, visual_hull
from recon.masks import view_masks
from recon.raster import render_silhouettes
from sd3d.core.io import ViewSet


@dataclass(frozen=True)
class SilhouetteConsistency:
    """``score``: mean IoU of view masks vs the reprojected visual hull; ``per_view`` IoUs."""

    score: float
    per_view: tuple[float, ...]


def silhouette_consistency(views: ViewSet, resolution: int = 64) -> SilhouetteConsistency:
    """Mask-vs-reprojected-hull IoU of a :class:`ViewSet` (see the module docstring)."""
    coverage, _ = view_masks(views)
    masks = coverage > 0.5
    occupancy = visual_hull(masks.astype(np.float32), views.cameras, resolution).numpy()
    if not occupancy.any():
        return SilhouetteConsistency(0.0, tuple(0.0 for _ in views.cameras))
    verts, faces = hull_mesh(occupancy)
    sil = render_silhouettes(verts, faces, views.cameras) > 0.5
    inter = (sil & masks).sum(axis=(1, 2))
    union = (sil | masks).sum(axis=(1, 2))
    ious = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return SilhouetteConsistency(float(ious.mean()), tuple(float(x) for x in ious))
