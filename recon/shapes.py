"""Procedural test shapes with the hard cases the shared objects lack, for the robustness benchmark.

The shared objects (spot, bob, duck, banana) are all thick, closed, mostly convex-ish surfaces (bob
has one ring). Reconstruction from 16 views fails differently on:

* ``blade``: a thin curved sheet (constant thickness ~0.02 of the object size), about 4 px thick
  in a 256 px view: the visual hull is tight from the side but the
  NeuS surface must not collapse or split.
* ``mug``: a cup with a handle (a through hole, genus 1): the hole shows background in some views
  and none in others.
* ``cup``: a deep, narrow cup (inside depth 1.4 x its opening's diameter): a concavity no silhouette
  carves, so only photometric cues and the rim can shape its inside.
* ``shell``: an open, zero-thickness curved panel (one boundary loop, not watertight): NeuS can only
  make a closed surface, so this measures how close a thin closed slab gets.

Every shape is normalised like the shared meshes (largest bounding-box side 1, box centred at 0,
+Z up) and carries colourful vertex colours (hue bands and a 3-D checker, never near white, so the
white-background masks of generated views keep the whole object and photometric cues matter).
Vertex colours are sRGB in [0, 1]; the meshes are dense enough (edges of about 0.01-0.02) for the
pattern to survive interpolation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mcubes
import numpy as np
import trimesh

from recon.raster import PLAIN_ALBEDO, RenderMesh, normalization_matrix


@dataclass(frozen=True, eq=False)
class Shape:
    """A procedural test object: its mesh (normalised, vertex colours in ``colors``) and what it claims.

    ``watertight`` and ``euler`` (the Euler characteristic V - E + F: 2 for a closed sphere-like
    surface, 0 for a closed surface with one handle, 1 for a disk-like open surface) are the topology
    the construction guarantees; the tests check them on the mesh.
    """

    name: str
    vertices: np.ndarray  # (V, 3) float64
    faces: np.ndarray  # (F, 3) int64, outward (counter-clockwise seen from outside) where closed
    colors: np.ndarray  # (V, 3) float64 sRGB in [0, 1]
    watertight: bool
    euler: int
    description: str

    def trimesh(self) -> trimesh.Trimesh:
        """Geometry plus vertex colours as a ``trimesh.Trimesh`` (what the mesh metrics take)."""
        rgba = np.concatenate([np.rint(self.colors * 255), np.full((len(self.colors), 1), 255)], 1)
        return trimesh.Trimesh(self.vertices, self.faces, vertex_colors=rgba.astype(np.uint8), process=False)

    def render_mesh(self) -> RenderMesh:
        """The shape as :func:`recon.raster.render_mesh` draws it (vertex colours as albedo)."""
        return RenderMesh(
            vertices=self.vertices,
            faces=self.faces,
            face_color=np.broadcast_to(np.asarray(PLAIN_ALBEDO, np.float64), (len(self.faces), 3)).copy(),
            vertex_colors=self.colors,
        )


# ------------------------------------------------------------------------------------------------
# colours and normalisation
# ------------------------------------------------------------------------------------------------


def pattern_colors(points: np.ndarray) -> np.ndarray:
    """Colourful sRGB (N, 3) at ``points``: hue bands around and up the object, a 3-D checker (period
    1/6 of the object) in brightness. Saturation 0.75 and value <= 0.9, so no channel exceeds 0.9 and
    the minimum channel stays below 0.25: never near white."""
    p = np.asarray(points, np.float64)
    hue = (0.5 + np.arctan2(p[:, 1], p[:, 0]) / (2 * np.pi) + 1.5 * p[:, 2]) % 1.0
    checker = (np.floor(6 * (p + 0.5)).astype(np.int64).sum(1)) % 2
    value = np.where(checker == 1, 0.9, 0.55)
    return hsv_to_rgb(hue, 0.75, value)


def hsv_to_rgb(hue: np.ndarray, saturation: float, value: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB (all in [0, 1]): the six hue sectors of the standard hexcone model."""
    h6 = hue * 6.0
    sector = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    p = value * (1 - saturation)
    q = value * (1 - saturation * f)
    t = value * (1 - saturation * (1 - f))
    table = np.stack(
        [
            np.stack([value, t, p], -1),
            np.stack([q, value, p], -1),
            np.stack([p, value, t], -1),
            np.stack([p, q, value], -1),
            np.stack([t, p, value], -1),
            np.stack([value, p, q], -1),
        ]
    )
    return table[sector, np.arange(len(hue))]


def _finish(
    name: str, vertices: np.ndarray, faces: np.ndarray, watertight: bool, euler: int, description: str
) -> Shape:
    """Normalise (largest side 1, centred, like the shared meshes) and colour the normalised shape."""
    m = normalization_matrix(vertices)
    v = vertices @ m[:3, :3].T + m[:3, 3]
    return Shape(name, v, np.asarray(faces, np.int64), pattern_colors(v), watertight, euler, description)


def _outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Faces of a closed mesh flipped, if needed, so that its signed volume is positive (outward)."""
    v = vertices[faces]
    vol = np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum()
    return faces if vol > 0 else faces[:, ::-1].copy()


# ------------------------------------------------------------------------------------------------
# the shapes
# ------------------------------------------------------------------------------------------------


def blade(thickness: float = 0.02, width: float = 0.3, bend: float = 0.35, n_long: int = 160) -> Shape:
    """A thin curved sheet: 1 long (x), ``width`` wide (y), exactly ``thickness`` thick along its normal.

    The mid-surface bends up into a parabola (``z = bend * x^2``); both faces are offset from it by
    ``thickness / 2`` along its normal, and a side strip closes the rim, so the mesh is a closed slab
    (watertight, Euler characteristic 2). Before normalisation the x extent is ~1.007 (the offset
    faces overhang at the tips), so the thickness ends up ~0.0199 of the object size: ~3.7 px at
    distance 1.5 in a 256 px view.
    """
    n_wide = max(8, round(n_long * width))
    x = np.linspace(-0.5, 0.5, n_long + 1)
    y = np.linspace(-width / 2, width / 2, n_wide + 1)
    gx, gy = np.meshgrid(x, y, indexing="ij")
    slope = 2 * bend * gx
    normal = np.stack([-slope, np.zeros_like(gx), np.ones_like(gx)], -1) / np.sqrt(1 + slope**2)[..., None]
    mid = np.stack([gx, gy, bend * gx**2], -1)
    top = (mid + thickness / 2 * normal).reshape(-1, 3)
    bottom = (mid - thickness / 2 * normal).reshape(-1, 3)
    nv = len(top)
    idx = np.arange(nv).reshape(n_long + 1, n_wide + 1)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    quads = np.stack([a, b, c, d], -1).reshape(-1, 4)
    top_f = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    bottom_f = top_f[:, ::-1] + nv
    # the grid's boundary loop, counter-clockwise seen from +z; each edge p->q gets a side quad
    ring = np.concatenate([idx[:, 0], idx[-1, 1:], idx[-2::-1, -1], idx[0, -2:0:-1]])
    p, q = ring, np.roll(ring, -1)
    side = np.concatenate([np.stack([p, q + nv, q], 1), np.stack([p, p + nv, q + nv], 1)])
    faces = np.concatenate([top_f, bottom_f, side])
    verts = np.concatenate([top, bottom])
    return _finish(
        "blade",
        verts,
        _outward(verts, faces),
        True,
        2,
        f"thin curved sheet, thickness {thickness} (normal to the surface) before normalisation",
    )


def _revolve(profile: np.ndarray, sections: int, step: float) -> tuple[np.ndarray, np.ndarray]:
    """A closed surface of revolution about +Z from a (radius, z) polyline that starts and ends on
    the axis; segments are resampled to at most ``step`` long so the colours have vertices to live on."""
    pts = [profile[0]]
    for p, q in zip(profile[:-1], profile[1:], strict=True):
        n = max(1, int(np.ceil(np.linalg.norm(q - p) / step)))
        pts.extend(p + (q - p) * (np.arange(1, n + 1) / n)[:, None])
    mesh = trimesh.creation.revolve(np.asarray(pts), sections=sections)
    mesh.merge_vertices()
    return np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)


def cup(wall: float = 0.03, depth: float = 0.74, opening: float = 0.54) -> Shape:
    """A deep, narrow cup: inside depth ``depth`` for an inner opening diameter ``opening`` (ratio ~1.4),
    walls ``wall`` thick, bottom 0.06 thick, slightly flared (outer radius 0.22 at the foot, 0.3 at
    the rim). A surface of revolution of a profile that starts and ends on the axis: watertight,
    Euler characteristic 2 (the concavity is not a hole). Height 0.8, so normalisation scales by 1.25.
    """
    r_top = opening / 2 + wall
    bottom = 0.8 - depth
    profile = np.array(
        [
            [0.0, 0.0],
            [0.22, 0.0],
            [r_top, 0.8],
            [opening / 2, 0.8],
            [0.22 + (r_top - 0.22) * bottom / 0.8 - wall, bottom],
            [0.0, bottom],
        ]
    )
    verts, faces = _revolve(profile, sections=128, step=0.015)
    return _finish(
        "cup", verts, _outward(verts, faces), True, 2, f"deep cup, depth/opening {depth / opening:.2f}"
    )


def mug(res: int = 128) -> Shape:
    """A mug: a cylinder (radius 0.3, height 0.6, wall 0.04, bottom 0.06) and a ring handle (centre
    radius 0.14, tube radius 0.035) fused to its side, from the zero level set of a signed distance
    function (union of the cup and the handle; the handle cut where it would enter the inside).
    The handle leaves a through hole: one closed surface of genus 1 (watertight, Euler characteristic
    0). ``res`` cells across the ~0.95 wide box: about 5 cells across the wall (the mesh is dense, ~130k
    faces, and kept so: decimation would leave long triangles that smear the colour pattern).
    """
    radius, half_h, wall, base = 0.3, 0.3, 0.04, 0.06
    ring_c, ring_r, tube = radius + 0.07, 0.14, 0.035
    lo = np.array([-radius - 0.03, -radius - 0.03, -half_h - 0.03])
    hi = np.array([ring_c + ring_r + tube + 0.03, radius + 0.03, half_h + 0.03])
    step = (hi - lo).max() / res
    axes = [np.arange(a, b + step, step) for a, b in zip(lo, hi, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    r = np.hypot(x, y)
    outer = np.maximum(r - radius, np.abs(z) - half_h)
    cavity = np.maximum(r - (radius - wall), -half_h + base - z)
    body = np.maximum(outer, -cavity)
    torus = np.hypot(np.hypot(x - ring_c, z) - ring_r, y) - tube
    sdf = np.minimum(body, np.maximum(torus, -cavity))
    verts, faces = mcubes.marching_cubes(-sdf, 0.0)
    verts = verts * step + lo
    faces = np.asarray(faces, np.int64)
    mesh = trimesh.Trimesh(verts, faces, process=True)  # merge marching cubes' duplicate vertices
    v, f = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64)
    return _finish("mug", v, _outward(v, f), True, 0, "mug with a ring handle (genus 1)")


def shell(extent: float = 1.1, n: int = 96) -> Shape:
    """An open, zero-thickness curved panel: the patch ``normalize(u, v, 1)`` of a sphere of radius 0.5
    for ``|u|, |v| <= extent`` (a cube-sphere face, widened), tilted so its hollow faces azimuth 45
    deg and 20 deg up. One boundary loop, a disk: not watertight, Euler characteristic 1. Both sides
    carry the same colours (rendered two-sided). Volume IoU is not meaningful for it (its "inside"
    by winding number is the lens between the panel and its rim).
    """
    s = np.linspace(-extent, extent, n + 1)
    gu, gv = np.meshgrid(s, s, indexing="ij")
    d = np.stack([gu, gv, np.ones_like(gu)], -1)
    pts = 0.5 * d / np.linalg.norm(d, axis=-1, keepdims=True)
    pts = pts.reshape(-1, 3)
    pts[:, 2] -= pts[:, 2].mean()
    idx = np.arange(len(pts)).reshape(n + 1, n + 1)
    a, b, c, e = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, e], -1).reshape(-1, 3)])
    # hollow side towards -z before tilting: aim it at (azimuth 45, elevation 20)
    el, az = np.radians(20.0), np.radians(45.0)
    target = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    rot = trimesh.geometry.align_vectors([0.0, 0.0, -1.0], target)[:3, :3]
    return _finish("shell", pts @ rot.T, faces, False, 1, "open curved panel (zero thickness)")


SHAPES: dict[str, Callable[[], Shape]] = {"blade": blade, "mug": mug, "cup": cup, "shell": shell}


def make_shape(name: str) -> Shape:
    """The named procedural shape (see :data:`SHAPES`)."""
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}: choose from {', '.join(SHAPES)}")
    return SHAPES[name]()
