"""Small synthetic photos for the ``sd3d run`` / ``sd3d batch`` tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Options that make one `sd3d run` on the tiny checkpoint take seconds on a CPU.
FAST = ("--steps", "2", "--quality", "draft", "--recon-steps", "30", "--preview-frames", "6")


def object_photo(path: Path, shift: int = 0) -> Path:
    """An orange ellipse with a blue patch on a transparent 220x200 canvas (``shift`` moves it)."""
    yy, xx = np.mgrid[:200, :220]
    rgba = np.zeros((200, 220, 4), np.uint8)
    body = (yy - 110) ** 2 / 70**2 + (xx - 110 - shift) ** 2 / 60**2 < 1
    rgba[body] = (200, 90, 40, 255)
    rgba[40:80, 90 + shift : 130 + shift] = (30, 80, 200, 255)
    Image.fromarray(rgba, "RGBA").save(path)
    return path
