"""Weight-free foreground segmentation with OpenCV GrabCut, seeded from the image border.

The offline default when no alpha channel and no rembg model are available: a band along the image
border is declared background, everything inside "probably foreground", and GrabCut's colour models
sort it out. Works well for an object photographed against a plain, contrasting backdrop (the
setting SyncDreamer expects anyway); an object that touches the border loses what lies in the band.
Runs on a copy downscaled to ``work_size`` (GrabCut is O(pixels) per iteration), then the mask is
upsampled. Deterministic: OpenCV seeds GrabCut's k-means identically on every call.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from sd3d.background.base import clean_matte, with_alpha


class GrabCutBackend:
    name = "grabcut"

    def __init__(self, work_size: int = 512, border_fraction: float = 0.02, iterations: int = 5) -> None:
        self.work_size = work_size
        self.border_fraction = border_fraction
        self.iterations = iterations

    def segment(self, image: Image.Image) -> Image.Image:
        return with_alpha(image, self.mask(image))

    def mask(self, image: Image.Image) -> np.ndarray:
        """uint8 HxW, 255 = object, 0 = background."""

        rgb = np.asarray(image.convert("RGB"))
        h, w = rgb.shape[:2]
        scale = min(1.0, self.work_size / max(h, w))
        small = (
            rgb
            if scale == 1.0
            else cv2.resize(
                rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
            )
        )
        sh, sw = small.shape[:2]
        band = max(1, round(self.border_fraction * min(sh, sw)))
        if sh <= 2 * band or sw <= 2 * band:
            return np.zeros((h, w), np.uint8)  # too small to have an interior
        seeds = np.full((sh, sw), cv2.GC_PR_FGD, np.uint8)
        seeds[:band] = seeds[-band:] = cv2.GC_BGD
        seeds[:, :band] = seeds[:, -band:] = cv2.GC_BGD
        bgd_model = np.zeros((1, 65), np.float64)
        fgd_model = np.zeros((1, 65), np.float64)
        bgr = np.ascontiguousarray(small[:, :, ::-1])
        cv2.grabCut(bgr, seeds, None, bgd_model, fgd_model, self.iterations, cv2.GC_INIT_WITH_MASK)
        fg = ((seeds == cv2.GC_FGD) | (seeds == cv2.GC_PR_FGD)).astype(np.uint8) * 255
        if (sh, sw) != (h, w):
            fg = cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR)
            fg = np.where(fg >= 128, 255, 0).astype(np.uint8)
        return clean_matte(fg)
