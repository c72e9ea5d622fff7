"""Weight-free estimate of the input photo's camera elevation (``sd3d elevation``).

SyncDreamer needs the elevation of the input view (it was trained on -10..40 deg) and the official
tool makes the user guess it. Render-and-compare of silhouettes:

1. Carve a visual hull from the masks of 16 views at known cameras (the generated views, or any
   views at the target cameras): a voxel survives if it projects inside every mask.
2. Render the hull's silhouette from azimuth 0 at candidate elevations (``-20..60``, coarse then
   fine) with the target cameras' distance and field of view.
3. Compare each with the input's mask in a frame that removes scale and translation (the input is
   recentred and rescaled by preprocessing): the silhouette's width maps to a fixed size, its
   horizontal centre and its top row to fixed positions. Width and top are where a hull carved
   from cameras at 30 deg elevation is tight; its bottom is not (nothing sees under the object),
   which is why the bounding-box height is not used.
4. Score = ``1 - (missed + w * excess) / area(input)``: ``missed`` is input mask outside the hull's
   silhouette (impossible at the right elevation: the hull contains the object), ``excess`` hull
   silhouette outside the input mask, down-weighted by ``w`` (the hull is an over-estimate) and not
   counted at all below the input's lowest row (where the hull's unobserved underside shows).
   The best candidate's neighbours refine it with a parabola.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image

from recon.hull import hull_mesh, visual_hull
from recon.masks import view_masks
from recon.raster import render_silhouettes
from sd3d import DEFAULT_SEED
from sd3d.core import cameras as cam
from sd3d.core.errors import InputImageError, UserError, ViewsFolderError
from sd3d.core.progress import Progress, resolve
from sd3d.pipelines.syncdreamer import generate_views

ELEVATION_RANGE_DEG = cam.ELEVATION_SEARCH_RANGE_DEG
FRAME_SIZE = 96  # side of the normalised comparison frame, pixels
FRAME_WIDTH = 0.8  # the silhouette's width in the frame, as a fraction of its side
FRAME_TOP = 0.1  # the silhouette's top row in the frame, as a fraction of its side
EXCESS_WEIGHT = 0.5


@dataclass(frozen=True)
class ElevationEstimate:
    """``elevation_deg``: the estimate; ``score``: its silhouette agreement in [.., 1] (1 = perfect);
    ``curve``: (elevation, score) of every candidate rendered, sorted by elevation;
    ``seconds``: wall time of the estimate."""

    elevation_deg: float
    score: float
    curve: tuple[tuple[float, float], ...]
    seconds: float

    def as_dict(self) -> dict:
        return {
            "elevation_deg": self.elevation_deg,
            "score": self.score,
            "seconds": self.seconds,
            "curve": [{"elevation_deg": e, "score": s} for e, s in self.curve],
        }


# ------------------------------------------------------------------------------------------------
# comparison
# ------------------------------------------------------------------------------------------------


def normalized_frame(mask: np.ndarray, size: int = FRAME_SIZE) -> np.ndarray:
    """``mask`` resampled (area-averaged) so its width spans ``FRAME_WIDTH * size`` pixels, centred,
    with its top row at ``FRAME_TOP * size``: a frame free of the mask's scale and position."""

    m = np.asarray(mask, np.float32)
    ys, xs = np.nonzero(m > 0.5)
    if len(xs) == 0:
        raise InputImageError("the mask is empty: no object to compare")
    left, right, top = float(xs.min()), float(xs.max() + 1), float(ys.min())
    scale = FRAME_WIDTH * size / (right - left)  # frame pixels per mask pixel
    cx = 0.5 * (left + right)
    x0, y0 = cx - 0.5 * size / scale, top - FRAME_TOP * size / scale
    span = size / scale
    # pad so the source box never leaves the image, then let Pillow area-average the box
    pad = int(math.ceil(span)) + 2
    padded = np.pad(m, pad)
    im = Image.fromarray(padded, mode="F")
    box = (x0 + pad, y0 + pad, x0 + pad + span, y0 + pad + span)
    return np.asarray(im.resize((size, size), Image.Resampling.BOX, box=box), np.float32)


def silhouette_score(
    hull_frame: np.ndarray,
    input_frame: np.ndarray,
    excess_weight: float = EXCESS_WEIGHT,
    below_free: bool = True,
) -> float:
    """``1 - (missed + w * excess) / area(input)`` of two normalised frames (see module doc);
    ``below_free``: excess below the input's lowest row costs nothing."""
    missed = np.clip(input_frame - hull_frame, 0.0, None).sum()
    extra = np.clip(hull_frame - input_frame, 0.0, None)
    if below_free:
        rows = np.nonzero((input_frame > 0.5).any(axis=1))[0]
        if len(rows):
            extra[rows.max() + 1 :] = 0.0
    excess = extra.sum()
    return float(1.0 - (missed + excess_weight * excess) / max(float(input_frame.sum()), 1e-9))


# ------------------------------------------------------------------------------------------------
# the estimate
# ------------------------------------------------------------------------------------------------


def estimate_elevation(
    input_mask: np.ndarray,
    views,
    *,
    elevation_range: tuple[float, float] = ELEVATION_RANGE_DEG,
    steps: tuple[float, ...] = (10.0, 5.0, 1.0),
    hull_resolution: int = 64,
    render_size: int = 160,
    hull_faces: int | None = 4000,
    excess_weight: float = EXCESS_WEIGHT,
    progress: Progress | None = None,
) -> ElevationEstimate:
    """Elevation (degrees) of the camera that saw ``input_mask``, from 16 ``views`` (a ViewSet).

    ``input_mask``: (H, W) coverage in [0, 1] of the input photo (any size and framing; e.g. the
    alpha of ``sd3d.preprocess.prepare_input``). The input camera is assumed at azimuth 0 (as the
    generator assumes) and at the views' distance. Coarse-to-fine search: every ``steps[0]``
    degrees over ``elevation_range``, then every ``steps[k]`` degrees strictly between the best
    candidate's neighbours at the previous step, then a parabola through the best and its
    neighbours at the last step.
    """
    start = time.perf_counter()
    lo, hi = elevation_range
    if not lo < hi:
        raise UserError(f"empty elevation range {lo}..{hi}")
    masks, _ = view_masks(views)
    distance = float(
        np.mean([c.distance if c.distance is not None else np.linalg.norm(c.center) for c in views.cameras])
    )
    target = normalized_frame(input_mask)
    if not steps or any(b <= 0 or b > a for a, b in zip((math.inf, *steps), steps, strict=False)):
        raise UserError(f"elevation search steps must be positive and decreasing, got {steps}")
    coarse = list(np.arange(lo, hi + 1e-9, steps[0]))
    refine_counts = [max(0, 2 * int(round(a / b)) - 2) for a, b in zip(steps, steps[1:], strict=False)]
    with resolve(progress).task("elevation", 1 + len(coarse) + sum(refine_counts)) as advance:
        occupancy = visual_hull(masks, views.cameras, hull_resolution).numpy()
        if not occupancy.any():
            raise ViewsFolderError("the views' masks do not agree on any volume: is cameras.json right?")
        verts, faces = hull_mesh(occupancy, max_faces=hull_faces)
        advance(info="visual hull")
        scores: dict[float, float] = {}

        def evaluate(elevations: list[float]) -> None:
            todo = [
                round(float(e), 6) for e in elevations if lo <= e <= hi and round(float(e), 6) not in scores
            ]
            if not todo:
                return
            cameras = [cam.orbit_camera(e, 0.0, distance, render_size) for e in todo]
            sils = render_silhouettes(verts, faces, cameras, supersample=1)
            for e, sil in zip(todo, sils, strict=True):
                if (sil > 0.5).any():
                    scores[e] = silhouette_score(normalized_frame(sil), target, excess_weight)
                else:
                    scores[e] = -math.inf
            advance(len(todo), info=f"{len(scores)} candidates")

        evaluate(coarse)
        best = max(scores, key=scores.get)
        for previous, step in zip(steps, steps[1:], strict=False):
            evaluate(list(np.arange(best - previous + step, best + previous - 1e-9, step)))
            best = max(scores, key=scores.get)
    estimate = _parabola_peak(best, steps[-1], scores)
    curve = tuple(sorted(scores.items()))
    return ElevationEstimate(
        elevation_deg=float(np.clip(estimate, lo, hi)),
        score=float(scores[best]),
        curve=curve,
        seconds=time.perf_counter() - start,
    )


def _parabola_peak(best: float, step: float, scores: dict[float, float]) -> float:
    """Sub-step peak of the parabola through the best candidate and its two neighbours."""
    left, right = scores.get(round(best - step, 6)), scores.get(round(best + step, 6))
    if left is None or right is None or not (math.isfinite(left) and math.isfinite(right)):
        return best
    denom = left - 2.0 * scores[best] + right
    if denom >= 0:
        return best
    return best + 0.5 * step * (left - right) / denom


def generate_views_for_estimation(
    prepared_input, seed: int = DEFAULT_SEED, weights_dir=None, device: str = "auto"
):
    """Make the 16 target views to estimate the elevation from, with the generator.

    The views are generated for an input elevation of 30 deg (the middle of the model's training
    range); the silhouettes of the generated views carry the object's shape, which is what the
    render-and-compare needs. ``sd3d run`` regenerates at the estimate when it differs.
    """

    return generate_views(
        prepared_input, weights_dir=weights_dir, elevation_deg=30.0, seed=seed, device=device
    )[0]
