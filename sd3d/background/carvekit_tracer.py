"""carvekit's Tracer-B7 + FBA matting, the segmentation the official SyncDreamer tool uses.

An optional extra for machines with torchvision and internet (carvekit downloads its weights on
first use): imported lazily, and a one-line MissingDependencyError when absent. The interface is
built with the official parameters (docs/reference/syncdreamer.md §2.2); its RGBA output is used as is, as officially.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from sd3d.core.device import resolve_device
from sd3d.core.errors import InputImageError, MissingDependencyError

# Parameters of the official ``foreground_segment.py`` (fp16 only where CUDA runs it).
OFFICIAL_PARAMETERS: dict[str, Any] = {
    "object_type": "object",
    "batch_size_seg": 5,
    "batch_size_matting": 1,
    "seg_mask_size": 640,
    "matting_mask_size": 2048,
    "trimap_prob_threshold": 231,
    "trimap_dilation": 30,
    "trimap_erosion_iters": 5,
}


class CarvekitBackend:
    name = "carvekit"

    def __init__(self, device: str = "auto") -> None:
        self.device = device

    def interface(self) -> Any:
        try:
            from carvekit.api.high import HiInterface
        except ImportError as exc:
            raise MissingDependencyError(
                "--background carvekit needs carvekit (and torchvision): pip install 'sd3d[carvekit]'"
            ) from exc

        device = resolve_device(self.device)
        return HiInterface(device=str(device), fp16=device.type == "cuda", **OFFICIAL_PARAMETERS)

    def segment(self, image: Image.Image) -> Image.Image:
        out = self.interface()([image.convert("RGB")])[0]
        if not isinstance(out, Image.Image) or out.size != image.size:
            raise InputImageError("carvekit returned no usable matte for this image")
        return out.convert("RGBA") if out.mode != "RGBA" else out
