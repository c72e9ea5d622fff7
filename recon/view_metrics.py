"""Image metrics over whole views folders (``sd3d eval nvs``), on white backgrounds.

PSNR and SSIM per view and their means, as the official ``eval_nvs.py`` computes them: RGBA views
are composited on white, RGB views are used as is, PSNR is ``10 log10(1 / MSE)`` over all pixels and
channels, SSIM is torchmetrics' default (Gaussian 11, sigma 1.5). LPIPS needs the VGG weights of the
``lpips`` package (and torchvision): it is computed only when that package imports and its weights are
already on disk, and the result says why it was skipped otherwise; nothing is downloaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from recon.metrics import psnr, ssim
from sd3d.core.errors import ViewsFolderError
from sd3d.core.io import ViewSet


@dataclass(frozen=True)
class NVSResult:
    """Per-view and mean metrics; ``lpips`` is None when skipped (``lpips_note`` says why)."""

    psnr: tuple[float, ...]
    ssim: tuple[float, ...]
    lpips: tuple[float, ...] | None = None
    lpips_note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def mean_psnr(self) -> float:
        finite = [p for p in self.psnr if math.isfinite(p)]
        return float(np.mean(finite)) if len(finite) == len(self.psnr) else math.inf

    @property
    def mean_ssim(self) -> float:
        return float(np.mean(self.ssim))

    def as_dict(self) -> dict:
        return {
            "mean_psnr": self.mean_psnr,
            "mean_ssim": self.mean_ssim,
            "mean_lpips": float(np.mean(self.lpips)) if self.lpips is not None else None,
            "lpips_note": self.lpips_note,
            "per_view": [
                {
                    "view": i,
                    "psnr": p,
                    "ssim": s,
                    "lpips": (self.lpips[i] if self.lpips is not None else None),
                }
                for i, (p, s) in enumerate(zip(self.psnr, self.ssim, strict=True))
            ],
        }


def _lpips_model():
    """The VGG LPIPS model if it can be built offline, else (None, reason)."""
    try:
        import lpips  # noqa: F401  (needs torchvision)
    except Exception as exc:  # ImportError, or torchvision failing to import
        return None, f"LPIPS skipped: the lpips package is not usable here ({type(exc).__name__})"
    try:
        import lpips

        return lpips.LPIPS(net="vgg", verbose=False), ""
    except Exception as exc:  # its VGG weights would have to be downloaded
        return None, f"LPIPS skipped: its VGG weights are not available locally ({type(exc).__name__})"


def nvs_metrics(pred: ViewSet, gt: ViewSet, with_lpips: bool = True) -> NVSResult:
    """PSNR / SSIM (/ LPIPS) of ``pred`` against ``gt``, view by view (same count and size)."""
    if pred.num_views != gt.num_views:
        raise ViewsFolderError(f"{pred.num_views} predicted views but {gt.num_views} ground-truth views")
    if pred.images.shape != gt.images.shape:
        raise ViewsFolderError(f"view sizes differ: {pred.images.shape[1:3]} vs {gt.images.shape[1:3]}")
    p_all = [psnr(p, g) for p, g in zip(pred.images, gt.images, strict=True)]
    s_all = [ssim(p, g) for p, g in zip(pred.images, gt.images, strict=True)]
    lp, note = None, "LPIPS not requested"
    if with_lpips:
        model, note = _lpips_model()
        if model is not None:
            with torch.no_grad():
                to_t = lambda x: torch.from_numpy(np.asarray(x, np.float32)).permute(2, 0, 1)[None] * 2 - 1  # noqa: E731
                lp = tuple(
                    float(model(to_t(g), to_t(p))) for p, g in zip(pred.images, gt.images, strict=True)
                )
            note = "LPIPS (VGG)"
    return NVSResult(psnr=tuple(p_all), ssim=tuple(s_all), lpips=lp, lpips_note=note)
