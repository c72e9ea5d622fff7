"""Render triangle meshes to RGBA + depth at :class:`sd3d.core.cameras.Camera` s (``sd3d render``).

A plain PyTorch z-buffer rasteriser (CPU or CUDA, no graphics stack), made to reproduce the shared
ground-truth renders (the shared test objects' ``views/`` folders):

* Coverage alpha from ``supersample x supersample`` samples per pixel (3x3 like the GT), straight
  alpha: RGB is the mean colour of the covered samples, white where nothing is covered.
* Depth is the camera z of the sample at the pixel centre (odd ``supersample``), ``inf`` if empty.
* Shading (``lighting``): Lambertian, two-sided (normals face the camera), world-fixed lights,
  computed in linear space and written as sRGB -- the GT's model and lights. Albedo from a texture
  (UVs, bilinear, wrapping), vertex colours, or plain grey.
* Rasterisation rules: a sample belongs to a triangle when it is strictly inside; a sample exactly
  on an edge or vertex goes where an infinitesimal shift would put it, and the edge test is
  evaluated identically for the two faces sharing an edge, so meshes render without cracks or
  double hits. Faces with a vertex
  behind the camera's near plane are dropped (no clipping).

Meshes are read with trimesh (OBJ + MTL + textures, GLB/glTF, PLY, ...), scene node transforms
applied. Frames: ours is +Z up. glTF files are +Y up by specification and are rotated to +Z up
(``(x, y, z) -> (x, -z, y)``, Blender's convention; ``up='auto'``), other formats are taken as
+Z up unless ``up='y'``. ``normalize`` then scales the largest bounding-box side to 1 and centres the
box at 0, like SyncDreamer's data.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sd3d.core import cameras as cam
from sd3d.core.cameras import Camera
from sd3d.core.errors import UserError
from sd3d.core.io import atomic_dir, cameras_record, contact_sheet, to_uint8, transforms_record
from sd3d.core.progress import Progress, resolve

MESH_SUFFIXES = (".obj", ".glb", ".gltf", ".ply", ".stl", ".off")

# Y-up -> Z-up: (x, y, z) -> (x, -z, y)
Y_UP_TO_Z_UP = np.array([[1.0, 0, 0, 0], [0, 0, -1.0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0]])

PLAIN_ALBEDO = (0.7, 0.7, 0.7)  # sRGB grey for meshes without colours


@dataclass(frozen=True)
class Lighting:
    """Lambertian lighting in linear space: ``albedo * (ambient + sum w * max(0, n . l))``.

    The default is the shared ground-truth renders' setup (``views/cameras.json`` -> ``shading``).
    """

    ambient: float = 0.35
    directions: tuple[tuple[float, float, float], ...] = (
        (0.282216, 0.188144, 0.940721),
        (0.845154, -0.507093, 0.169031),
        (-0.749269, 0.65561, 0.093659),
    )
    weights: tuple[float, ...] = (0.5, 0.25, 0.2)


@dataclass(frozen=True)
class RenderMesh:
    """A triangle mesh ready to render, in world coordinates (float64).

    Albedo, in order of precedence per face: ``textures[face_texture[f]]`` (uint8 (H, W, 3) sRGB)
    sampled at the interpolated ``uvs`` (OBJ convention: v = 0 is the image's bottom row), times
    the face's ``face_color``; else the interpolated ``vertex_colors``; else ``face_color``. Colours
    other than textures are sRGB floats in [0, 1].
    """

    vertices: np.ndarray
    faces: np.ndarray
    face_color: np.ndarray
    uvs: np.ndarray | None = None
    textures: tuple[np.ndarray, ...] = ()
    face_texture: np.ndarray | None = None
    vertex_colors: np.ndarray | None = None
    transform: np.ndarray = field(default_factory=lambda: np.eye(4))

    def transformed(self, matrix: np.ndarray) -> RenderMesh:
        """The same mesh with ``matrix`` (4x4, applied to column vectors) applied to the vertices."""
        v = self.vertices @ matrix[:3, :3].T + matrix[:3, 3]
        return RenderMesh(
            vertices=v,
            faces=self.faces,
            face_color=self.face_color,
            uvs=self.uvs,
            textures=self.textures,
            face_texture=self.face_texture,
            vertex_colors=self.vertex_colors,
            transform=matrix @ self.transform,
        )


@dataclass(frozen=True)
class Renders:
    """``rgba`` (N, H, W, 4) float32 straight alpha (RGB white where alpha is 0) and ``depth``
    (N, H, W) float32 camera z at the pixel centre, ``inf`` where empty."""

    rgba: np.ndarray
    depth: np.ndarray

    def on_white(self) -> np.ndarray:
        """(N, H, W, 3) RGB composited on white."""
        a = self.rgba[..., 3:]
        return self.rgba[..., :3] * a + (1.0 - a)


# ------------------------------------------------------------------------------------------------
# loading and normalisation
# ------------------------------------------------------------------------------------------------


def _image_to_uint8(image) -> np.ndarray:
    return np.array(image.convert("RGB"), np.uint8)  # a writable copy (torch wants one)


def _visual_of(geom) -> dict:
    """Albedo sources of one trimesh geometry: uv, texture image, base colour, vertex colours."""
    out: dict = {"uv": None, "texture": None, "color": np.array(PLAIN_ALBEDO), "vertex_colors": None}
    visual = getattr(geom, "visual", None)
    kind = getattr(visual, "kind", None)
    if kind == "texture":
        mat = visual.material
        image = getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)
        factor = getattr(mat, "baseColorFactor", None)
        if factor is None:
            factor = getattr(mat, "diffuse", None)
        colors = getattr(visual, "vertex_attributes", {}).get("color")
        if visual.uv is not None and image is not None and min(image.size) > 2:
            out["uv"] = np.asarray(visual.uv, np.float64)
            out["texture"] = _image_to_uint8(image)
            out["color"] = np.ones(3)
        elif colors is not None and len(colors) == len(geom.vertices):
            # glTF COLOR_0 under a material (how sd3d writes vertex colours): colour x base colour
            base = np.ones(3) if factor is None else np.asarray(factor, np.float64)[:3] / 255.0
            out["vertex_colors"] = np.asarray(colors, np.float64)[:, :3] / 255.0 * base
        elif factor is not None:
            out["color"] = np.asarray(factor, np.float64)[:3] / 255.0
    elif kind == "vertex":
        out["vertex_colors"] = np.asarray(visual.vertex_colors, np.float64)[:, :3] / 255.0
    elif kind == "face":
        # per-face colours: unweld so that every face's corners carry its colour
        out["face_colors"] = np.asarray(visual.face_colors, np.float64)[:, :3] / 255.0
    return out


def _geometries(loaded) -> list[tuple[object, np.ndarray]]:
    import trimesh  # here, not at the top: sd3d.core.imports says why

    if isinstance(loaded, trimesh.Scene):
        items = []
        for node in loaded.graph.nodes_geometry:
            matrix, name = loaded.graph[node]
            geom = loaded.geometry[name]
            if isinstance(geom, trimesh.Trimesh) and len(geom.faces):
                items.append((geom, np.asarray(matrix, np.float64)))
        return items
    if isinstance(loaded, trimesh.Trimesh) and len(loaded.faces):
        return [(loaded, np.eye(4))]
    return []


def up_yaw_matrix(up: str, yaw_deg: float = 0.0) -> np.ndarray:
    """4x4 rotation from a file's frame to ours: ``up`` ('y' or 'z') to +Z, then ``yaw_deg`` about +Z."""
    if up not in ("y", "z"):
        raise UserError(f"unknown up axis {up!r}: use auto, y or z")
    m = Y_UP_TO_Z_UP.copy() if up == "y" else np.eye(4)
    a = math.radians(yaw_deg)
    yaw = np.eye(4)
    yaw[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    return yaw @ m


def normalization_matrix(vertices: np.ndarray) -> np.ndarray:
    """4x4 scale + translation putting the bounding box's centre at 0 and its largest side at 1."""
    lo, hi = vertices.min(0), vertices.max(0)
    side = float((hi - lo).max())
    if not side > 0:
        raise UserError("the mesh has zero extent and cannot be normalised")
    m = np.eye(4) / side
    m[3, 3] = 1.0
    m[:3, 3] = -(lo + hi) / 2.0 / side
    return m


def load_mesh(
    path: str | os.PathLike,
    *,
    up: str = "auto",
    yaw_deg: float = 0.0,
    normalize: bool = True,
    texture: str | os.PathLike | None = None,
) -> RenderMesh:
    """Read a mesh file into a :class:`RenderMesh` in our frame (see the module docstring).

    ``up``: 'auto' (glTF/GLB: 'y', others: 'z'), 'y' or 'z'. ``texture`` replaces the texture image
    of every textured part (for OBJ files whose MTL is missing). ``RenderMesh.transform`` holds the
    file-to-world matrix applied.
    """

    path = Path(path)
    if not path.is_file():
        raise UserError(f"mesh not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise UserError(
            f"unsupported mesh format {suffix or '(none)'}: use one of {', '.join(MESH_SUFFIXES)}"
        )
    import trimesh  # here, not at the top: sd3d.core.imports says why

    try:
        loaded = trimesh.load(str(path), process=False)
    except Exception as exc:  # trimesh raises many types for corrupt files
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise UserError(f"cannot read mesh {path}: {reason}") from exc
    items = _geometries(loaded)
    if not items:
        raise UserError(f"mesh {path} has no triangles")
    override = None
    if texture is not None:
        try:
            with Image.open(texture) as im:
                override = _image_to_uint8(im)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read texture {texture}: {exc}") from exc

    verts, faces, uvs, vcols, fcol, ftex, textures = [], [], [], [], [], [], []
    any_uv = any_vcol = False
    offset = 0
    parts = []
    for geom, matrix in items:
        vis = _visual_of(geom)
        if "face_colors" in vis:  # unweld: three corners per face
            f = np.asarray(geom.faces, np.int64)
            v = np.asarray(geom.vertices, np.float64)[f.reshape(-1)]
            vis["vertex_colors"] = np.repeat(vis.pop("face_colors"), 3, axis=0)
            f = np.arange(len(v)).reshape(-1, 3)
        else:
            v = np.asarray(geom.vertices, np.float64)
            f = np.asarray(geom.faces, np.int64)
        if override is not None and vis["uv"] is None and getattr(geom.visual, "uv", None) is not None:
            vis["uv"] = np.asarray(geom.visual.uv, np.float64)
        if override is not None and vis["uv"] is not None:
            vis["texture"], vis["color"] = override, np.ones(3)
        v = v @ matrix[:3, :3].T + matrix[:3, 3]
        parts.append((v, f, vis))
        any_uv |= vis["uv"] is not None
        any_vcol |= vis["vertex_colors"] is not None
    for v, f, vis in parts:
        verts.append(v)
        faces.append(f + offset)
        offset += len(v)
        if any_uv:
            uvs.append(vis["uv"] if vis["uv"] is not None else np.zeros((len(v), 2)))
        if any_vcol:
            vc = vis["vertex_colors"]
            vcols.append(vc if vc is not None else np.broadcast_to(vis["color"], (len(v), 3)))
        fcol.append(np.broadcast_to(vis["color"], (len(f), 3)))
        if vis["texture"] is not None:
            textures.append(vis["texture"])
            ftex.append(np.full(len(f), len(textures) - 1))
        else:
            ftex.append(np.full(len(f), -1))
    mesh = RenderMesh(
        vertices=np.concatenate(verts),
        faces=np.concatenate(faces),
        face_color=np.concatenate(fcol).astype(np.float64),
        uvs=np.concatenate(uvs) if any_uv else None,
        textures=tuple(textures),
        face_texture=np.concatenate(ftex) if textures else None,
        vertex_colors=np.concatenate(vcols) if any_vcol else None,
    )
    if up == "auto":
        up = "y" if suffix in (".glb", ".gltf") else "z"
    mesh = mesh.transformed(up_yaw_matrix(up, yaw_deg))
    if normalize:
        mesh = mesh.transformed(normalization_matrix(mesh.vertices))
    return mesh


# ------------------------------------------------------------------------------------------------
# rasterisation
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fragments:
    """Per-sample result of rasterisation: ``face`` (H, W) long (-1 = empty), ``bary`` (H, W, 3)
    perspective-correct barycentrics of the face's corners, ``depth`` (H, W) camera z (inf = empty)."""

    face: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor


def _edge_table(fx: torch.Tensor, fy: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(F, 15): for each edge k (corner k -> k+1, faces counter-clockwise) ``(sx, sy, dx, dy, tie)``.

    The edge function is ``e(q) = dx (qy - sy) - dy (qx - sx)``, > 0 inside. Start point and
    direction are taken from the edge's lower vertex id, then negated (exactly) where that reversed
    the edge, so the two faces sharing an edge compute the same number with opposite signs.
    ``tie`` is 1 where a sample with ``e == 0`` belongs to this face: the sign ``e`` would have if
    the sample moved by ``(eps, eps^2)`` (simulation of simplicity), so a sample exactly on a shared
    edge or vertex goes to exactly one face.
    """
    a, b = ids, ids.roll(-1, dims=1)
    ax, bx = fx, fx.roll(-1, dims=1)
    ay, by = fy, fy.roll(-1, dims=1)
    flip = a > b
    sx, sy = torch.where(flip, bx, ax), torch.where(flip, by, ay)
    ex, ey = torch.where(flip, ax, bx), torch.where(flip, ay, by)
    sign = 1.0 - 2.0 * flip.to(fx.dtype)
    dx, dy = sign * (ex - sx), sign * (ey - sy)
    tie = ((dy < 0) | ((dy == 0) & (dx > 0))).to(fx.dtype)
    return torch.stack([sx, sy, dx, dy, tie], 2).reshape(len(fx), 15)


def rasterize(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    K: np.ndarray,
    w2c: np.ndarray,
    height: int,
    width: int,
    near: float = 1e-3,
    max_pairs: int = 1 << 21,
    coverage_only: bool = False,
) -> Fragments:
    """Z-buffer rasterisation of ``faces`` seen by a pinhole camera, one sample per pixel centre.

    ``vertices`` (V, 3) world, on the device and dtype to compute in; ``K`` maps camera coordinates
    to continuous pixel coordinates (pixel (i, j) has its centre at (i + 0.5, j + 0.5)).
    A sample is inside a face when every edge function is > 0, or == 0 where an infinitesimal
    shift of the sample would make it > 0 (see :func:`_edge_table`). Work is split into groups of
    faces with at most ``max_pairs`` (face, pixel) candidates.

    ``coverage_only``: skip the depth test (about half the work): ``face`` then holds *a* face
    covering each sample, ``bary`` and ``depth`` stay empty. Silhouettes need nothing more.
    """
    dev, dt = vertices.device, vertices.dtype
    R = torch.as_tensor(np.asarray(w2c)[:, :3], dtype=dt, device=dev)
    t = torch.as_tensor(np.asarray(w2c)[:, 3], dtype=dt, device=dev)
    Kt = torch.as_tensor(np.asarray(K), dtype=dt, device=dev)
    cam = vertices @ R.T + t
    z = cam[:, 2]
    uvw = cam @ Kt.T
    sx = uvw[:, 0] / z
    sy = uvw[:, 1] / z

    n_pix = height * width
    zbuf = torch.full((n_pix,), math.inf, dtype=dt, device=dev)
    fbuf = torch.full((n_pix,), -1, dtype=torch.long, device=dev)
    bbuf = torch.zeros((n_pix, 3), dtype=dt, device=dev)

    f = faces.to(dev)
    fx, fy = sx[f], sy[f]
    area = (fx[:, 1] - fx[:, 0]) * (fy[:, 2] - fy[:, 0]) - (fx[:, 2] - fx[:, 0]) * (fy[:, 1] - fy[:, 0])
    ok = (z[f] > near).all(dim=1) & (area != 0)
    # pixel index ranges of each face's bounding box (pixel centres inside the box)
    i0 = torch.ceil(fx.min(1).values - 0.5).clamp(0, width)
    i1 = torch.floor(fx.max(1).values - 0.5).clamp(-1, width - 1)
    j0 = torch.ceil(fy.min(1).values - 0.5).clamp(0, height)
    j1 = torch.floor(fy.max(1).values - 0.5).clamp(-1, height - 1)
    wi = (i1 - i0 + 1).clamp(min=0).long()
    hj = (j1 - j0 + 1).clamp(min=0).long()
    counts = torch.where(ok, wi * hj, torch.zeros_like(wi))
    face_ids = torch.nonzero(counts > 0).squeeze(1)
    if len(face_ids) == 0:
        return Fragments(fbuf.view(height, width), bbuf.view(height, width, 3), zbuf.view(height, width))
    # orient every face counter-clockwise on screen (corners 1 and 2 swapped where clockwise)
    order = torch.tensor([[0, 1, 2], [0, 2, 1]], device=dev)[(area < 0).long()]
    of, ox, oy = f.gather(1, order), fx.gather(1, order), fy.gather(1, order)
    edges = _edge_table(ox, oy, of)
    inv_order = order.argsort(dim=1)
    # barycentric of oriented corner j is the edge function of the opposite edge (j + 1): reorder so
    # that column j of the edge functions gives oriented corner j, then back to the file's corners
    bary_from_edge = (inv_order + 1) % 3
    j0l = j0.long()
    cum = torch.cumsum(counts[face_ids], 0)
    start = 0
    while start < len(face_ids):
        base = cum[start - 1] if start > 0 else cum.new_zeros(())
        stop = max(int(torch.searchsorted(cum, base + max_pairs, right=True)), start + 1)
        sel = face_ids[start:stop]
        # candidates: per face and pixel row, the pixels between the row's crossings with the face's
        # edges (padded by 1e-3 px; the exact edge test below decides)
        rows = hj[sel]
        fr = torch.repeat_interleave(sel, rows)
        py_r = (
            j0l[fr]
            + torch.arange(len(fr), device=dev)
            - torch.repeat_interleave(torch.cumsum(rows, 0) - rows, rows)
        )
        yc = (py_r.to(dt) + 0.5).unsqueeze(1)
        ax, ay = ox[fr], oy[fr]
        bx, by = ax.roll(-1, dims=1), ay.roll(-1, dims=1)
        crosses = (torch.minimum(ay, by) <= yc) & (yc <= torch.maximum(ay, by)) & (ay != by)
        xc = ax + (yc - ay) / torch.where(ay != by, by - ay, torch.ones_like(ay)) * (bx - ax)
        x_lo = torch.where(crosses, xc, torch.full_like(xc, math.inf)).min(1).values
        x_hi = torch.where(crosses, xc, torch.full_like(xc, -math.inf)).max(1).values
        i_lo = torch.ceil(x_lo - 0.5 - 1e-3).clamp(0, width)
        i_hi = torch.floor(x_hi - 0.5 + 1e-3).clamp(-1, width - 1)
        span = torch.where(crosses.any(1), (i_hi - i_lo + 1).clamp(min=0), torch.zeros_like(i_hi)).long()
        fid = torch.repeat_interleave(fr, span)
        local = torch.arange(len(fid), device=dev) - torch.repeat_interleave(
            torch.cumsum(span, 0) - span, span
        )
        px = torch.repeat_interleave(i_lo.long(), span) + local
        py = torch.repeat_interleave(py_r, span)
        qx = (px.to(dt) + 0.5).unsqueeze(1)
        qy = (py.to(dt) + 0.5).unsqueeze(1)
        g = edges.index_select(0, fid).view(-1, 3, 5)
        e = g[..., 2] * (qy - g[..., 1]) - g[..., 3] * (qx - g[..., 0])
        inside = ((e > 0) | ((e == 0) & (g[..., 4] > 0))).all(dim=1)
        keep = inside.nonzero().squeeze(1)
        fid, px, py, e = (a.index_select(0, keep) for a in (fid, px, py, e))
        if coverage_only:
            fbuf[py * width + px] = fid
            start = stop
            continue
        # screen-space barycentrics (file corner order), then perspective-correct ones and depth
        lam = e.gather(1, bary_from_edge.index_select(0, fid)) / e.sum(1, keepdim=True)
        inv_z = lam / z[f.index_select(0, fid)]
        s = inv_z.sum(1)
        depth = 1.0 / s
        pix = py * width + px
        before = zbuf[pix]
        zbuf.scatter_reduce_(0, pix, depth, reduce="amin")
        better = (depth == zbuf[pix]) & (depth < before)
        first = torch.full((n_pix,), torch.iinfo(torch.long).max, dtype=torch.long, device=dev)
        first.scatter_reduce_(0, pix[better], fid[better], reduce="amin")
        win = better & (fid == first[pix])
        fbuf[pix[win]] = fid[win]
        bbuf[pix[win]] = inv_z[win] / s[win].unsqueeze(1)
        start = stop
    return Fragments(fbuf.view(height, width), bbuf.view(height, width, 3), zbuf.view(height, width))


# ------------------------------------------------------------------------------------------------
# shading
# ------------------------------------------------------------------------------------------------


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1.0 / 2.4) - 0.055)


def _sample_texture(tex: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup in a uint8 texture with wrapping; ``uv`` in OBJ convention (v = 0 at the
    bottom row). Returns floats in [0, 1]."""
    h, w = tex.shape[:2]
    x = uv[:, 0] * w - 0.5
    y = (1.0 - uv[:, 1]) * h - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0).unsqueeze(1), (y - y0).unsqueeze(1)
    x0, y0 = x0.long(), y0.long()
    x1, y1 = (x0 + 1) % w, (y0 + 1) % h
    x0, y0 = x0 % w, y0 % h
    flat = tex.reshape(h * w, -1)

    def at(yy, xx):
        return flat.index_select(0, yy * w + xx).to(uv.dtype) / 255.0

    top = at(y0, x0) * (1 - fx) + at(y0, x1) * fx
    bottom = at(y1, x0) * (1 - fx) + at(y1, x1) * fx
    return top * (1 - fy) + bottom * fy


class _DeviceMesh:
    """The mesh's arrays moved to the compute device once for all cameras."""

    def __init__(self, mesh: RenderMesh, device: torch.device, dtype: torch.dtype) -> None:
        def t(a):
            return None if a is None else torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

        self.vertices = t(mesh.vertices)
        self.faces = torch.as_tensor(mesh.faces, dtype=torch.long, device=device)
        v = self.vertices[self.faces]
        n = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=1)
        self.face_normals = n / n.norm(dim=1, keepdim=True).clamp_min(1e-30)
        self.face_color = t(mesh.face_color)
        self.uvs = t(mesh.uvs)
        self.vertex_colors = t(mesh.vertex_colors)
        self.textures = [torch.as_tensor(np.ascontiguousarray(x), device=device) for x in mesh.textures]
        self.face_texture = (
            None
            if mesh.face_texture is None
            else torch.as_tensor(mesh.face_texture, dtype=torch.long, device=device)
        )

    def albedo(self, face: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
        """sRGB albedo (M, 3) at samples on ``face`` with barycentrics ``bary``."""
        color = self.face_color.index_select(0, face)
        corners = self.faces.index_select(0, face)
        if self.vertex_colors is not None:
            color = (self.vertex_colors[corners] * bary.unsqueeze(2)).sum(1)
        if self.face_texture is not None and self.uvs is not None:
            tex_id = self.face_texture.index_select(0, face)
            uv = (self.uvs[corners] * bary.unsqueeze(2)).sum(1)
            for k, tex in enumerate(self.textures):
                idx = (tex_id == k).nonzero().squeeze(1)
                if len(idx):
                    sampled = _sample_texture(tex, uv.index_select(0, idx))
                    color[idx] = sampled * self.face_color.index_select(0, face.index_select(0, idx))
        return color


def shade(
    dmesh: _DeviceMesh, frags: Fragments, camera_center: np.ndarray, lighting: Lighting
) -> tuple[torch.Tensor, torch.Tensor]:
    """sRGB colour (H, W, 3) and coverage (H, W) of rasterised samples (white where empty)."""
    h, w = frags.face.shape
    hit = frags.face >= 0
    idx = hit.view(-1).nonzero().squeeze(1)
    face = frags.face.view(-1).index_select(0, idx)
    bary = frags.bary.view(-1, 3).index_select(0, idx)
    dt, dev = frags.bary.dtype, frags.bary.device
    n = dmesh.face_normals.index_select(0, face)
    points = (dmesh.vertices[dmesh.faces.index_select(0, face)] * bary.unsqueeze(2)).sum(1)
    to_cam = torch.as_tensor(camera_center, dtype=dt, device=dev) - points
    n = torch.where(((n * to_cam).sum(1) < 0).unsqueeze(1), -n, n)  # two-sided
    light = torch.full((len(face),), lighting.ambient, dtype=dt, device=dev)
    for d, wgt in zip(lighting.directions, lighting.weights, strict=True):
        ld = torch.as_tensor(d, dtype=dt, device=dev)
        light = light + wgt * (n @ (ld / ld.norm())).clamp_min(0.0)
    albedo = srgb_to_linear(dmesh.albedo(face, bary).clamp(0.0, 1.0))
    rgb = torch.ones((h * w, 3), dtype=dt, device=dev)
    rgb[idx] = linear_to_srgb(albedo * light.unsqueeze(1))
    return rgb.view(h, w, 3), hit.to(dt)


def render_mesh(
    mesh: RenderMesh,
    cameras: list[Camera],
    *,
    supersample: int = 3,
    lighting: Lighting | None = None,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> Renders:
    """Render ``mesh`` at every camera: coverage alpha, shaded colour and depth (see module doc)."""
    if supersample < 1:
        raise ValueError("supersample must be >= 1")
    lighting = lighting or Lighting()
    device = torch.device(device)
    dmesh = _DeviceMesh(mesh, device, torch.float32)
    s = supersample
    rgbas, depths = [], []
    for camera in resolve(progress).track(cameras, "render"):
        K = np.diag([s, s, 1.0]) @ camera.K
        frags = rasterize(dmesh.vertices, dmesh.faces, K, camera.w2c, camera.height * s, camera.width * s)
        rgb, cov = shade(dmesh, frags, camera.center, lighting)
        h, w = camera.height, camera.width
        cov_blocks = cov.view(h, s, w, s)
        alpha = cov_blocks.mean(dim=(1, 3))
        summed = (rgb * cov.unsqueeze(2)).view(h, s, w, s, 3).sum(dim=(1, 3))
        count = cov_blocks.sum(dim=(1, 3)).unsqueeze(2)
        color = torch.where(count > 0, summed / count.clamp_min(1.0), torch.ones_like(summed))
        depth = frags.depth.view(h, s, w, s)[:, s // 2, :, s // 2]
        rgbas.append(torch.cat([color, alpha.unsqueeze(2)], 2).float().cpu().numpy())
        depths.append(depth.float().cpu().numpy())
    return Renders(rgba=np.stack(rgbas), depth=np.stack(depths))


def render_silhouettes(
    vertices: np.ndarray, faces: np.ndarray, cameras: list[Camera], supersample: int = 1, device="cpu"
) -> np.ndarray:
    """Coverage masks (N, H, W) float32 of a mesh (no shading): the fast path for silhouettes."""
    device = torch.device(device)
    v = torch.as_tensor(np.asarray(vertices), dtype=torch.float32, device=device)
    f = torch.as_tensor(np.asarray(faces), dtype=torch.long, device=device)
    s = supersample
    out = []
    for camera in cameras:
        K = np.diag([s, s, 1.0]) @ camera.K
        frags = rasterize(v, f, K, camera.w2c, camera.height * s, camera.width * s, coverage_only=True)
        cov = (frags.face >= 0).to(torch.float32).view(camera.height, s, camera.width, s).mean(dim=(1, 3))
        out.append(cov.cpu().numpy())
    return np.stack(out)


# ------------------------------------------------------------------------------------------------
# depth encoding of the views folder
# ------------------------------------------------------------------------------------------------

DEPTH_NEAR, DEPTH_FAR = 0.6, 2.4


def encode_depth(depth: np.ndarray) -> np.ndarray:
    """uint16 PNG depth like the GT: ``v = (d - 0.6) / 1.8 * 65535`` (clipped), 65535 where empty."""
    d = np.asarray(depth, np.float64)
    v = np.rint((np.clip(d, DEPTH_NEAR, DEPTH_FAR) - DEPTH_NEAR) / (DEPTH_FAR - DEPTH_NEAR) * 65535.0)
    v = np.minimum(v, 65534)
    v[~np.isfinite(d)] = 65535
    return v.astype(np.uint16)


def decode_depth(encoded: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_depth`: float depth, ``inf`` where ``v == 65535``."""
    v = np.asarray(encoded, np.float64)
    d = v / 65535.0 * (DEPTH_FAR - DEPTH_NEAR) + DEPTH_NEAR
    d[v == 65535] = np.inf
    return d


# ------------------------------------------------------------------------------------------------
# views folder output and geometry-only loading
# ------------------------------------------------------------------------------------------------


def load_trimesh(path: str | os.PathLike, *, up: str = "auto", normalize: bool = False):
    """Geometry only, as a ``trimesh.Trimesh`` in our frame (glTF rotated to +Z up, see
    :func:`load_mesh`), vertices at the same position merged -- what the mesh metrics want."""
    import trimesh  # here, not at the top: sd3d.core.imports says why

    mesh = load_mesh(path, up=up, normalize=normalize)
    out = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    out.merge_vertices(merge_tex=True, merge_norm=True)
    return out


def orbit_cameras(
    elevation_deg: float | None, azimuths_deg: list[float] | None, distance: float, size: int
) -> list[Camera]:
    """The 16 target cameras by default; otherwise an orbit (elevation 30 and the 16 target
    azimuths unless given)."""

    if elevation_deg is None and azimuths_deg is None and distance == cam.TARGET_DISTANCE:
        return cam.target_cameras(size)
    elevation = cam.TARGET_ELEVATION_DEG if elevation_deg is None else elevation_deg
    azimuths = list(cam.target_azimuths_deg()) if azimuths_deg is None else azimuths_deg
    return [cam.orbit_camera(elevation, az, distance, size) for az in azimuths]


def render_names(count: int, depth: bool = False) -> list[str]:
    """The entries :func:`write_renders` puts in its folder for ``count`` views."""
    views = [f"{i:03d}.png" for i in range(count)]
    return [
        *views,
        *(f"{i:03d}-depth.png" for i in range(count) if depth),
        "grid.png",
        "cameras.json",
        "transforms.json",
    ]


def write_renders(
    out_dir: str | os.PathLike,
    renders: Renders,
    cameras: list[Camera],
    *,
    depth: bool = False,
    extra: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a views folder atomically: ``000.png ...`` (RGBA), optionally ``000-depth.png ...``
    (uint16, :func:`encode_depth`), ``grid.png``, ``cameras.json`` and ``transforms.json``
    (output folder policy and ``overwrite``: :func:`sd3d.core.io.atomic_dir`)."""

    files = render_names(len(cameras))[: len(cameras)]
    record_extra = {
        "renderer": "sd3d render (recon.raster: PyTorch z-buffer)",
        "rgba": "RGBA PNG, straight alpha = pixel coverage (supersampled), RGB white where empty",
    }
    if depth:
        record_extra["depth_png"] = {
            "encoding": "uint16 v; depth = v/65535*(2.4-0.6)+0.6; z-depth along camera +z; background v=65535",
            "sampled": "one sample at each pixel centre",
        }
    record_extra.update(extra or {})
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=overwrite, command="render") as tmp:
        rgba_u8 = [to_uint8(x) for x in renders.rgba]
        for i, (name, im) in enumerate(zip(files, rgba_u8, strict=True)):
            Image.fromarray(im, "RGBA").save(tmp / name)
            if depth:
                Image.fromarray(encode_depth(renders.depth[i])).save(tmp / name.replace(".png", "-depth.png"))
        Image.fromarray(contact_sheet([to_uint8(x) for x in renders.on_white()])).save(tmp / "grid.png")
        record = cameras_record(cameras, files, record_extra)
        if depth:
            for view, name in zip(record["views"], files, strict=True):
                view["depth"] = name.replace(".png", "-depth.png")
        (tmp / "cameras.json").write_text(json.dumps(record, indent=1) + "\n")
        (tmp / "transforms.json").write_text(json.dumps(transforms_record(cameras, files), indent=1) + "\n")
    return out_dir
