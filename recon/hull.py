"""The visual hull of a set of silhouettes: the one carving used by reconstruction and estimation.

A voxel over ``[-bound, bound]^3`` belongs to the hull when its centre projects inside the
foreground mask (``mask > 0.5`` at the pixel containing the projection) of every view but
``allowed_misses``; points projecting outside an image or behind the camera count as misses.
Reconstruction wants a generous hull (dilated masks, one miss allowed, one voxel of dilation) to
seed empty-space skipping without cutting the object; elevation estimation and sample ranking want
the plain, exact hull (all three at 0).
"""

from __future__ import annotations

import mcubes
import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from sd3d.core.cameras import Camera

CPU = torch.device("cpu")


def visual_hull(
    masks: np.ndarray,
    cameras: list[Camera],
    res: int,
    bound: float = 0.6,
    device: torch.device = CPU,
    dilate_px: int = 0,
    allowed_misses: int = 0,
    dilate_voxels: int = 0,
) -> torch.Tensor:
    """(res, res, res) bool: voxels whose centre projects into the (dilated) mask of all views but
    ``allowed_misses``; then dilated by ``dilate_voxels``. Points projecting outside an image count as misses."""
    lin = (torch.arange(res, device=device, dtype=torch.float32) + 0.5) * (2 * bound / res) - bound
    gy, gz = torch.meshgrid(lin, lin, indexing="ij")
    binaries = []
    for m in masks:
        binary = torch.from_numpy(np.ascontiguousarray(m > 0.5)).to(device)
        if dilate_px > 0:
            k = 2 * dilate_px + 1
            binary = F.max_pool2d(binary[None, None].float(), k, stride=1, padding=dilate_px)[0, 0] > 0
        binaries.append(binary)
    Ks = [torch.as_tensor(c.K, dtype=torch.float32, device=device) for c in cameras]
    Rts = [torch.as_tensor(c.w2c, dtype=torch.float32, device=device) for c in cameras]
    misses = torch.zeros(res, res, res, dtype=torch.int32, device=device)
    slabs = max(1, (1 << 21) // (res * res))  # ~2M points at a time
    for i0 in range(0, res, slabs):
        xs = lin[i0 : i0 + slabs]
        n = xs.shape[0]
        pts = torch.stack(
            [xs[:, None, None].expand(-1, res, res), gy.expand(n, -1, -1), gz.expand(n, -1, -1)], dim=-1
        ).reshape(-1, 3)
        for binary, K, Rt in zip(binaries, Ks, Rts, strict=True):
            cam_pts = pts @ Rt[:, :3].T + Rt[:, 3]
            uvw = cam_pts @ K.T
            z = cam_pts[:, 2]
            col = torch.floor(uvw[:, 0] / z).long()
            row = torch.floor(uvw[:, 1] / z).long()
            ok = (z > 0) & (col >= 0) & (col < binary.shape[1]) & (row >= 0) & (row < binary.shape[0])
            inside = binary[row.clamp(0, binary.shape[0] - 1), col.clamp(0, binary.shape[1] - 1)] & ok
            misses[i0 : i0 + n] += (~inside).view(n, res, res).int()
    hull = misses <= allowed_misses
    if dilate_voxels <= 0:
        return hull
    k = 2 * dilate_voxels + 1
    return F.max_pool3d(hull[None, None].float(), k, stride=1, padding=dilate_voxels)[0, 0].bool()


def hull_sdf(hull: torch.Tensor, bound: float) -> torch.Tensor:
    """Approximate signed distance (negative inside) of a voxelised hull, on its voxel centres."""

    inside = hull.cpu().numpy()
    voxel = 2 * bound / hull.shape[0]
    outside_d = distance_transform_edt(~inside) - 0.5  # voxel centres to the nearest inside centre
    inside_d = distance_transform_edt(inside) - 0.5
    sdf = np.where(inside, -inside_d, outside_d) * voxel
    return torch.from_numpy(sdf.astype(np.float32)).to(hull.device)


def hull_mesh(
    occupancy: np.ndarray, bound: float = 0.6, max_faces: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Marching-cubes surface (vertices (V, 3) world, faces (F, 3)) of a voxel occupancy.

    ``max_faces``: decimate (quadric edge collapse) to about that many faces. The voxel staircase
    carries many faces and no shape a silhouette comparison can use, and rasterising is the
    estimate's main cost, so the search renders a decimated hull."""

    r = occupancy.shape[0]
    step = 2.0 * bound / r
    verts, faces = mcubes.marching_cubes(np.pad(occupancy, 1).astype(np.float32), 0.5)
    verts = (verts - 1.0) * step + (-bound + 0.5 * step)
    if max_faces is not None and len(faces) > max_faces:
        import fast_simplification

        verts, faces = fast_simplification.simplify(
            verts.astype(np.float32), faces.astype(np.int32), target_reduction=1.0 - max_faces / len(faces)
        )
    return np.asarray(verts, np.float64), np.asarray(faces, np.int64)
