"""The 3DiM 3D-consistency score of a views folder.

Fit our reconstruction field on a subset of the views (default: 12 of the 16, every 4th held out),
render the held-out cameras from the field, and compare with the held-out views (PSNR / SSIM on
white). Views that show one consistent 3D object are predicted well from the others; views that
disagree with each other (a swapped pair, a view rotated by a few degrees, independent per-view
generation) cannot all be explained by one field, so the held-out views are predicted worse. This is
what makes the score measure consistency rather than image quality alone. The field is the plain
NeuS, without the per-view colour correction and down-weighting that reconstruction uses to forgive
such disagreements.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from recon.metrics import psnr, ssim
from recon.pipeline import reconstruct
from recon.presets import ReconSettings
from recon.render import camera_rays, render_rays
from sd3d.core import defaults
from sd3d.core.errors import UserError
from sd3d.core.io import ViewSet
from sd3d.core.progress import Progress


@dataclass(frozen=True)
class ConsistencyScore:
    """Held-out view indices with their PSNR / SSIM, and the means."""

    held_out: tuple[int, ...]
    psnr: tuple[float, ...]
    ssim: tuple[float, ...]
    train_seconds: float

    @property
    def mean_psnr(self) -> float:
        return float(np.mean(self.psnr))

    @property
    def mean_ssim(self) -> float:
        return float(np.mean(self.ssim))

    def as_dict(self) -> dict:
        return {
            "held_out": list(self.held_out),
            "mean_psnr": self.mean_psnr,
            "mean_ssim": self.mean_ssim,
            "per_view": [
                {"view": v, "psnr": p, "ssim": s}
                for v, p, s in zip(self.held_out, self.psnr, self.ssim, strict=True)
            ],
            "train_seconds": self.train_seconds,
        }


def default_held_out(num_views: int, every: int = 4) -> tuple[int, ...]:
    """Every ``every``-th view, starting at ``every - 1`` (3, 7, 11, 15 for 16 views)."""
    return tuple(range(every - 1, num_views, every))


def subset(views: ViewSet, keep: list[int]) -> ViewSet:
    return replace(
        views,
        images=views.images[keep],
        alphas=None if views.alphas is None else views.alphas[keep],
        cameras=[views.cameras[i] for i in keep],
    )


@torch.no_grad()
def render_field_view(result, camera, chunk: int = 8192) -> np.ndarray:
    """(H, W, 3) RGB on white of a trained :class:`recon.pipeline.ReconResult` at ``camera``."""

    origins, dirs = camera_rays(camera)
    h, w = origins.shape[:2]
    o = torch.from_numpy(origins.reshape(-1, 3)).to(result.device)
    d = torch.from_numpy(dirs.reshape(-1, 3)).to(result.device)
    out = []
    for i in range(0, o.shape[0], chunk):
        with torch.enable_grad():  # NeuS needs SDF gradients for its opacity
            r = render_rays(
                result.field, result.grid, o[i : i + chunk], d[i : i + chunk], result.preset.step_size
            )
        out.append(r.rgb.detach()[: r.num_rays])
    return torch.cat(out).clamp(0, 1).reshape(h, w, 3).cpu().numpy()


def consistency_score(
    views: ViewSet,
    held_out: tuple[int, ...] | None = None,
    quality: str = "draft",
    steps: int | None = None,
    seed: int = defaults.SEED,
    device: str = "auto",
    progress: Progress | None = None,
) -> ConsistencyScore:
    """Fit on the views not in ``held_out``, score the held-out ones (see the module docstring)."""

    held_out = default_held_out(views.num_views) if held_out is None else tuple(sorted(set(held_out)))
    if not held_out or any(i < 0 or i >= views.num_views for i in held_out):
        raise UserError(f"held-out views must be in 0..{views.num_views - 1}, got {list(held_out)}")
    keep = [i for i in range(views.num_views) if i not in held_out]
    if len(keep) < 4:
        raise UserError("keep at least 4 views to fit the field on")
    result = reconstruct(
        subset(views, keep),
        ReconSettings(quality, steps),
        seed=seed,
        device=device,
        progress=progress,
        robust=False,  # a field that forgives disagreeing views would hide what is measured
    )
    psnrs, ssims = [], []
    for i in held_out:
        pred = render_field_view(result, views.cameras[i])
        psnrs.append(psnr(pred, views.images[i]))
        ssims.append(ssim(pred, views.images[i]))
    return ConsistencyScore(tuple(held_out), tuple(psnrs), tuple(ssims), result.timings.get("train", 0.0))
