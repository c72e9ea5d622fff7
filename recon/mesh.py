"""SDF -> triangle mesh: marching cubes over [-0.6, 0.6]^3, cleanup, optional decimation.

The SDF is evaluated only in the occupancy grid's band (the visual hull early on); everywhere else
the inside/outside decision comes from a flood fill of the free voxels, which carves away surface
the views never constrained. Only the largest connected component is kept (drops floaters).
"""

from __future__ import annotations

from dataclasses import dataclass

import mcubes
import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from sd3d.core.errors import MissingDependencyError, UserError

EXTRACT_BOUND = 0.6


@dataclass(frozen=True)
class Mesh:
    """Triangle mesh in the world frame (+Z up, metres of the normalised cube), float64/int64."""

    vertices: np.ndarray  # (V, 3)
    faces: np.ndarray  # (F, 3), counter-clockwise seen from outside

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])


@torch.no_grad()
def sdf_volume(sdf_fn, grid, res: int, device: torch.device, chunk: int = 262144, advance=None) -> np.ndarray:
    """(res, res, res) float32 SDF at ``linspace(-0.6, 0.6, res)`` per axis, indexed [x, y, z].

    The network is queried only in ``grid``'s band; elsewhere the value is +1 or -1 from the
    band's flood fill (outside: carved, e.g. outside the visual hull; inside: enclosed).
    ``advance(n)`` (optional) is called with the number of x-slices done after each block.
    """
    lin = torch.linspace(-EXTRACT_BOUND, EXTRACT_BOUND, res, device=device)
    vol = torch.ones(res, res, res, device=device)
    gy, gz = torch.meshgrid(lin, lin, indexing="ij")
    sign = grid.free_space_sign() if grid is not None else None
    slabs = max(1, (1 << 21) // (res * res))  # x-slabs per block: ~2M points at a time
    for i0 in range(0, res, slabs):
        xs = lin[i0 : i0 + slabs]
        pts = torch.stack(
            [
                xs[:, None, None].expand(-1, res, res),
                gy.expand(xs.shape[0], -1, -1),
                gz.expand(xs.shape[0], -1, -1),
            ],
            dim=-1,
        ).reshape(-1, 3)
        if sign is not None:
            block = grid.lookup_values(sign, pts)
            inside = block == 0
        else:
            block = torch.ones(pts.shape[0], device=device)
            inside = torch.ones_like(block, dtype=torch.bool)
        if bool(inside.any()):
            sel = pts[inside]
            block[inside] = torch.cat(
                [sdf_fn(sel[j : j + chunk]).float() for j in range(0, sel.shape[0], chunk)]
            )
        vol[i0 : i0 + xs.shape[0]] = block.view(-1, res, res)
        if advance is not None:
            advance(int(xs.shape[0]))
    return vol.cpu().numpy()


def marching_cubes(volume: np.ndarray) -> Mesh:
    """Zero level set of an SDF volume over [-0.6, 0.6]^3 (negative inside), outward-facing triangles."""

    res = volume.shape[0]
    verts, faces = mcubes.marching_cubes(-volume.astype(np.float64), 0.0)
    verts = verts / (res - 1) * (2 * EXTRACT_BOUND) - EXTRACT_BOUND
    mesh = Mesh(np.asarray(verts, np.float64), np.asarray(faces, np.int64))
    if mesh.num_faces and signed_volume(mesh) < 0:
        mesh = Mesh(mesh.vertices, mesh.faces[:, ::-1].copy())
    return mesh


def signed_volume(mesh: Mesh) -> float:
    v = mesh.vertices[mesh.faces]
    return float(np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0)


def largest_component(mesh: Mesh) -> Mesh:
    """Keep the connected component (through shared vertices) with the most faces."""

    if mesh.num_faces == 0:
        return mesh
    f = mesh.faces
    n = mesh.vertices.shape[0]
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    adj = coo_matrix((np.ones(rows.shape[0], np.int8), (rows, cols)), shape=(n, n))
    count, labels = connected_components(adj, directed=False)
    if count <= 1:
        return compact(mesh)
    face_labels = labels[f[:, 0]]
    keep = face_labels == np.bincount(face_labels).argmax()
    return compact(Mesh(mesh.vertices, f[keep]))


def compact(mesh: Mesh) -> Mesh:
    """Drop unreferenced vertices."""
    used = np.unique(mesh.faces)
    remap = np.full(mesh.vertices.shape[0], -1, np.int64)
    remap[used] = np.arange(used.shape[0])
    return Mesh(mesh.vertices[used], remap[mesh.faces])


def decimate(mesh: Mesh, max_faces: int) -> Mesh:
    """Quadric decimation to at most ~``max_faces`` (fast-simplification); no-op if already smaller."""
    if max_faces < 4:
        raise UserError(f"--faces must be at least 4, got {max_faces}")
    if mesh.num_faces <= max_faces:
        return mesh
    try:
        import fast_simplification
    except ImportError as exc:
        raise MissingDependencyError(
            "decimation needs fast-simplification (pip install fast-simplification)"
        ) from exc
    reduction = 1.0 - max_faces / mesh.num_faces
    v, f = fast_simplification.simplify(
        mesh.vertices.astype(np.float32), mesh.faces.astype(np.int32), reduction
    )
    out = Mesh(np.asarray(v, np.float64), np.asarray(f, np.int64))
    return compact(out) if out.num_faces else mesh


def vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V, 3) float64 unit smooth normals: the area-weighted mean of the adjacent faces' normals.

    Viewers shade a mesh without normals flat (one normal per triangle), which makes a marching
    cubes surface look faceted. A vertex whose faces cancel out (or that no face uses) gets +Z so
    every normal has unit length.
    """
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    face_n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # length = 2 x area
    normals = np.zeros_like(v)
    for corner in range(3):
        np.add.at(normals, f[:, corner], face_n)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    tiny = length[:, 0] <= 1e-20
    normals = np.divide(normals, length, out=np.zeros_like(normals), where=~tiny[:, None])
    normals[tiny] = (0.0, 0.0, 1.0)
    return normals


def extract_mesh(field, grid, res: int, device: torch.device, advance=None) -> Mesh:
    """Marching cubes on the field's SDF (carved by the hull), largest component only.

    ``advance(n)`` (optional) receives progress in x-slices of the ``res``-cubed grid.
    """
    vol = sdf_volume(field.sdf_net.sdf, grid, res, device, advance=advance)
    mesh = marching_cubes(vol)
    if mesh.num_faces == 0:
        return mesh
    return largest_component(mesh)
