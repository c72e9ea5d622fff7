"""Colours of surface points from the input views: project, test visibility, prefer the best view.

The colour network is a smooth function fitted to all views at once: it averages their small
misalignments and per-view differences, so a texture baked from it is softer and darker than the
views. The views themselves are sharp. For each surface point (a texel's or a vertex's) and its
normal, :class:`ViewProjector` looks the colour up in every view:

* **visibility**: the point's camera depth against the mesh's own depth map in that view
  (rasterised with :func:`recon.raster.rasterize`, taken as the minimum over the 3x3 pixels around,
  so points just behind an occluding edge, where a misaligned view shows the occluder, count as
  hidden); the tolerance grows with the pixel footprint and the slope of the surface;
* **how well a view sees the point**: ``cos(normal, direction to the camera)`` times the view's
  mask-edge weight (0 outside the view's mask, rising to 1 ``edge_px`` pixels inside it: edge
  pixels are mixed with the background and the least aligned); the view's weight is that to the
  power ``cos_power``;
* **blend**: a softmax of the log weights at ``temperature``, i.e. weights ``w ** (1 / T)``
  normalised: a low temperature lets the best-facing view win instead of averaging several
  misaligned ones into a blur, while neighbouring texels still change views smoothly;
* **canonical colour**: each view's learned colour transform (:mod:`recon.appearance`) is undone
  before blending, so the texture matches the field's canonical colour and views agree;
* **fallback**: where the best view sees the point less than ``min_weight`` (not at all, or only
  at a grazing angle or at its mask's edge) the colour blends into ``fallback(points)`` (the
  field's colour).

Everything is batched over views and chunked over points (``grid_sample`` lookups), so it runs on
the GPU when the inputs are there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from recon.appearance import to_canonical
from recon.masks import inner_edge_weight
from recon.raster import rasterize
from sd3d.core.cameras import Camera
from sd3d.core.progress import Progress, resolve

BAKE_CHUNK = 131072
"""Surface points per batched lookup in all views (bounded memory: views x chunk x a few floats)."""
FAR = 1e6  # depth of empty pixels (inf would turn into NaN in the bilinear lookups' arithmetic)


@dataclass(frozen=True)
class BakeSettings:
    """How views are weighted and blended (the ``bake_*`` fields of :class:`recon.presets.Preset`)."""

    cos_power: float = 2.0
    temperature: float = 0.25
    edge_px: float = 3.0
    min_weight: float = 0.1

    @classmethod
    def from_preset(cls, preset) -> BakeSettings:
        return cls(
            cos_power=preset.bake_cos_power,
            temperature=preset.bake_temperature,
            edge_px=preset.bake_edge_px,
            min_weight=preset.bake_min_weight,
        )


class ViewProjector:
    """The input views, prepared once per mesh for colour lookups at its surface points.

    ``images`` (N, H, W, 3) float [0, 1] on white, ``masks`` (N, H, W) coverage, ``cameras`` their
    cameras, ``transforms`` (N, 3, 4) the learned colour transforms or ``None``; ``vertices`` /
    ``faces`` the mesh whose points will be looked up (its depth maps decide visibility).
    """

    def __init__(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        cameras: list[Camera],
        transforms: np.ndarray | None,
        vertices: np.ndarray,
        faces: np.ndarray,
        device: torch.device,
        settings: BakeSettings | None = None,
    ) -> None:
        self.settings = settings or BakeSettings()
        self.device = device
        h, w = images.shape[1:3]
        canonical = to_canonical(images, transforms)
        edge = np.stack([inner_edge_weight(m, self.settings.edge_px) for m in masks])
        stack = np.concatenate([canonical, edge[..., None]], axis=-1)  # (N, H, W, 4)
        self.lookup = torch.from_numpy(np.ascontiguousarray(stack.transpose(0, 3, 1, 2), np.float32)).to(
            device
        )
        verts = torch.as_tensor(np.asarray(vertices), dtype=torch.float32, device=device)
        tris = torch.as_tensor(np.asarray(faces), dtype=torch.long, device=device)
        depths = []
        for camera in cameras:
            d = rasterize(verts, tris, camera.K, camera.w2c, h, w).depth
            depths.append(torch.nan_to_num(d, posinf=FAR))
        depth = torch.stack(depths)[:, None]  # (N, 1, H, W)
        self.depth = -F.max_pool2d(-depth, 3, stride=1, padding=1)  # nearest surface around a pixel
        self.size = (w, h)
        self.w2c = torch.as_tensor(np.stack([c.w2c for c in cameras]), dtype=torch.float32, device=device)
        self.K = torch.as_tensor(np.stack([c.K for c in cameras]), dtype=torch.float32, device=device)
        self.centers = torch.as_tensor(
            np.stack([c.center for c in cameras]), dtype=torch.float32, device=device
        )

    @property
    def num_views(self) -> int:
        return int(self.w2c.shape[0])

    def view_weights(self, points: torch.Tensor, normals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """How well each view sees each point, ``cos * edge weight`` (N, K) (0 where it cannot),
        and the colours (N, K, 3), canonical, of ``points`` (K, 3) with unit ``normals`` (K, 3)."""
        R, t = self.w2c[:, :, :3], self.w2c[:, :, 3]
        cam = torch.einsum("nij,kj->nki", R, points) + t[:, None, :]  # (N, K, 3)
        z = cam[..., 2]
        safe_z = torch.where(z > 1e-6, z, torch.ones_like(z))
        pix = torch.einsum("nij,nkj->nki", self.K, cam)[..., :2] / safe_z[..., None]
        w, h = self.size
        grid = torch.stack([pix[..., 0] / w * 2 - 1, pix[..., 1] / h * 2 - 1], dim=-1)[:, None]  # (N,1,K,2)
        looked = F.grid_sample(self.lookup, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        looked = looked[:, :, 0].permute(0, 2, 1)  # (N, K, 4)
        surface = F.grid_sample(self.depth, grid, mode="nearest", padding_mode="border", align_corners=False)
        surface = surface[:, 0, 0]  # (N, K)
        to_cam = F.normalize(self.centers[:, None, :] - points[None], dim=-1)
        cos = (to_cam * normals[None]).sum(-1)
        tan = (1.0 - cos.square()).clamp_min(0.0).sqrt() / cos.clamp_min(0.05)
        footprint = safe_z / self.K[:, 0, 0, None]  # world size of a pixel at the point's depth
        visible = (z > 1e-6) & (z <= surface + footprint * (2.0 + 2.0 * tan.clamp(max=4.0)))
        seen = cos.clamp_min(0.0) * looked[..., 3].clamp(0.0, 1.0) * visible
        return seen, looked[..., :3]

    def blend(self, points: torch.Tensor, normals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Blended colour (K, 3) and confidence (K,) (the best view's :meth:`view_weights`) of the points."""
        seen_by, colors = self.view_weights(points, normals)
        # weights (cos * edge) ** power, blended by the softmax of their logs at the temperature
        logw = (self.settings.cos_power * torch.log(seen_by.clamp_min(1e-30))) / self.settings.temperature
        logw = torch.where(seen_by > 0, logw, torch.full_like(logw, -torch.inf))
        confidence = seen_by.amax(0)
        seen = confidence > 0
        soft = torch.softmax(torch.where(seen[None], logw, torch.zeros_like(logw)), dim=0)
        color = (soft[..., None] * colors).sum(0)
        return torch.where(seen[:, None], color, torch.zeros_like(color)), confidence

    @torch.no_grad()
    def colors(
        self,
        points: np.ndarray,
        normals: np.ndarray,
        fallback: Callable[[np.ndarray], np.ndarray],
        progress: Progress | None = None,
        description: str = "colours from views",
        chunk: int = BAKE_CHUNK,
    ) -> np.ndarray:
        """(K, 3) float32 colours of ``points`` (K, 3) with ``normals`` (K, 3) from the views.

        Where the best view sees a point less than ``min_weight`` its colour blends linearly into
        ``fallback(points)`` ((M, 3) float colours; called once, only for the points that need it).
        """
        k = int(points.shape[0])
        out = np.empty((k, 3), np.float32)
        conf = np.empty(k, np.float32)
        calls = max(1, -(-k // chunk))
        with resolve(progress).task(description, calls) as advance:
            for start in range(0, k, chunk):
                p = torch.as_tensor(points[start : start + chunk], dtype=torch.float32, device=self.device)
                n = torch.as_tensor(normals[start : start + chunk], dtype=torch.float32, device=self.device)
                color, confidence = self.blend(p, F.normalize(n, dim=-1))
                out[start : start + chunk] = color.clamp(0.0, 1.0).cpu().numpy()
                conf[start : start + chunk] = confidence.cpu().numpy()
                advance()
        trust = np.clip(conf / max(self.settings.min_weight, 1e-12), 0.0, 1.0)
        need = trust < 1.0
        if need.any():
            t = trust[need, None]
            out[need] = t * out[need] + (1.0 - t) * np.asarray(fallback(points[need]), np.float32)
        return out
