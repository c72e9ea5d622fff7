"""View-set perturbations that reproduce, with stated magnitudes, how generated views disagree.

SyncDreamer's 16 views are not exactly one object seen from 16 exact cameras. Each function below
makes one kind of disagreement from consistent renders, as a pure function of its inputs, its
magnitude and a seed (``numpy.random.default_rng(seed)``), and returns a new
:class:`sd3d.core.io.ViewSet` whose ``provenance["perturbation"]`` records exactly what was applied
per view (so a table can state it and a test can measure it):

* ``pose`` (:func:`pose_jitter`): each view shows the object as if moved by a rigid motion: a rotation
  by exactly ``rotation_deg`` about a random axis through the object's centre, then a shift by exactly
  ``translation`` x the object size in a random direction. Rendered through the moved camera, so the
  shading is the nominal one (the lights stay fixed to the object); the ViewSet keeps the nominal cameras.
* ``colour`` (:func:`colour_drift`): per view and channel, the object's colour ``c`` becomes
  ``clip(gain * c**gamma + bias)`` with ``gain`` in ``[1 - g, 1 + g]``, ``bias`` in ``[-b, b]`` and
  ``gamma`` in ``[1 / (1 + y), 1 + y]`` (log-uniform); the white background stays white.
* ``warp`` (:func:`local_warp`): per view a smooth random displacement field (correlation length
  ``scale_px``) whose largest displacement is exactly ``max_px`` pixels; colour and alpha are
  resampled together (bilinear).
* ``mask`` (:func:`mask_noise`): within ``width_px`` of the alpha boundary, the boundary moves in or
  out by a smooth random offset (up to half the width) and is feathered by a smooth random width (up
  to the other half); pixels farther from the boundary are untouched.
* ``detail`` (:func:`detail_disagreement`): ``num_views`` views that see a random surface point are
  rendered from a copy of the mesh with a smooth bump (or dent) of exactly ``height`` x the object
  size there (compact support of ``radius`` x the size); the other views are the clean ones.

Images follow :class:`ViewSet`: RGB composited on white, alpha = coverage. The 2-D perturbations
need alpha (they separate the object's colour from the background): renders from
:func:`render_views` have it. :class:`Perturbation` names one perturbation (kind, magnitude, seed,
options) for tables and command lines; :func:`apply` runs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt, map_coordinates, zoom

from recon.raster import Lighting, RenderMesh, render_mesh
from sd3d.core.cameras import Camera
from sd3d.core.io import ViewSet

# ------------------------------------------------------------------------------------------------
# the Perturbation record
# ------------------------------------------------------------------------------------------------

# kind -> (what the magnitude is, {option: default as a function of the magnitude})
KINDS: dict[str, tuple[str, dict]] = {
    "none": ("nothing", {}),
    "pose": ("rotation (deg)", {"translation": lambda m: 0.005 * m}),
    "colour": ("gain half-range", {"bias": lambda m: 0.5 * m, "gamma": lambda m: m}),
    "warp": ("max displacement (px)", {"scale": lambda m: 48.0}),
    "mask": ("edge band (px)", {}),
    "detail": ("bump height (object size)", {"radius": lambda m: 0.1, "views": lambda m: 2.0}),
}


@dataclass(frozen=True)
class Perturbation:
    """One perturbation: ``kind`` (see :data:`KINDS`), its ``magnitude``, ``seed`` and ``options``.

    ``options`` are ``(name, value)`` pairs overriding the kind's secondary parameters, whose
    defaults follow from the magnitude: ``pose`` translation 0.005 x the rotation in degrees (2 deg
    -> 1 % of the object size), ``colour`` bias half-range 0.5 x and gamma range 1 x the gain
    half-range, ``warp`` correlation length 48 px, ``detail`` radius 0.1 of the object size and
    2 views.
    """

    kind: str
    magnitude: float = 0.0
    seed: int = 0
    options: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown perturbation {self.kind!r}: choose from {', '.join(KINDS)}")
        if not (math.isfinite(self.magnitude) and self.magnitude >= 0):
            raise ValueError(f"{self.kind}: the magnitude must be a finite number >= 0, got {self.magnitude}")
        allowed = KINDS[self.kind][1]
        for name, value in self.options:
            if name not in allowed:
                raise ValueError(
                    f"{self.kind} has no option {name!r}"
                    + (f": choose from {', '.join(allowed)}" if allowed else "")
                )
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{self.kind}: option {name} must be >= 0, got {value}")

    def option(self, name: str) -> float:
        """The value of a secondary parameter: given in ``options``, else its default."""
        given = dict(self.options)
        return float(given[name]) if name in given else float(KINDS[self.kind][1][name](self.magnitude))

    @property
    def slug(self) -> str:
        """A short file-name-safe id: ``clean``, ``pose-2``, ``warp-3-scale-32``."""
        if self.kind == "none":
            return "clean"
        parts = [self.kind, f"{self.magnitude:g}"] + [f"{k}-{v:g}" for k, v in self.options]
        return "-".join(parts)

    def describe(self) -> str:
        """One line for tables, every parameter with its unit."""
        m = self.magnitude
        if self.kind == "none":
            text = "clean"
        elif self.kind == "pose":
            text = f"pose jitter: rotation {m:g} deg, shift {100 * self.option('translation'):g} % of size"
        elif self.kind == "colour":
            text = (
                f"colour drift: gain 1±{m:g}, bias ±{self.option('bias'):g}, "
                f"gamma [1/{1 + self.option('gamma'):g}, {1 + self.option('gamma'):g}]"
            )
        elif self.kind == "warp":
            text = f"local warp: max {m:g} px, correlation {self.option('scale'):g} px"
        elif self.kind == "mask":
            text = f"mask edge noise: within {m:g} px"
        else:
            text = (
                f"detail: bump/dent {100 * m:g} % of size, radius {100 * self.option('radius'):g} %, "
                f"in {int(self.option('views'))} view(s)"
            )
        return text if self.kind == "none" else f"{text} (seed {self.seed})"

    @classmethod
    def parse(cls, spec: str, seed: int = 0) -> Perturbation:
        """``clean`` or ``KIND:MAGNITUDE[,OPTION=VALUE...]`` (``seed=N`` among the options sets the seed)."""
        spec = spec.strip()
        if spec in ("clean", "none"):
            return cls("none", 0.0, seed)
        head, *opts = spec.split(",")
        kind, sep, mag = head.partition(":")
        if not sep:
            raise ValueError(f"perturbation {spec!r}: write KIND:MAGNITUDE, e.g. pose:2")
        options = []
        for opt in opts:
            name, eq, value = opt.partition("=")
            if not eq:
                raise ValueError(f"perturbation {spec!r}: options are NAME=VALUE, got {opt!r}")
            if name.strip() == "seed":
                seed = int(value)
            else:
                options.append((name.strip(), float(value)))
        return cls(kind.strip(), float(mag), seed, tuple(options))

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "magnitude": self.magnitude,
            "seed": self.seed,
            "options": dict(self.options),
            "describe": self.describe(),
        }


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def render_views(
    mesh: RenderMesh,
    cameras: list[Camera],
    *,
    lighting: Lighting | None = None,
    device: torch.device | str = "cpu",
    provenance: dict | None = None,
) -> ViewSet:
    """Render ``mesh`` like the shared ground-truth views (3x3 supersampled coverage alpha, the GT's
    Lambertian lights unless ``lighting``), quantised to 8 bits as a written PNG would be, as a
    :class:`ViewSet` (RGB on white + alpha) at ``cameras``."""
    rgba = render_mesh(mesh, cameras, lighting=lighting, device=device).rgba
    return _viewset(quantize(rgba), cameras, provenance or {})


def quantize(x: np.ndarray) -> np.ndarray:
    """Round to 8-bit levels (float32 in [0, 1]): what writing and re-reading a PNG gives."""
    return (np.clip(np.rint(np.asarray(x, np.float64) * 255.0), 0, 255) / 255.0).astype(np.float32)


def _viewset(rgba: np.ndarray, cameras: list[Camera], provenance: dict) -> ViewSet:
    alpha = rgba[..., 3:]
    images = rgba[..., :3] * alpha + (np.float32(1.0) - alpha)
    return ViewSet(
        images=images.astype(np.float32),
        cameras=list(cameras),
        alphas=alpha[..., 0].astype(np.float32),
        provenance=provenance,
    )


def _with(views: ViewSet, images: np.ndarray, alphas: np.ndarray, record: dict) -> ViewSet:
    """A copy of ``views`` with new pixels and the perturbation's record in its provenance."""
    return replace(
        views,
        images=np.asarray(images, np.float32),
        alphas=np.asarray(alphas, np.float32),
        provenance={**views.provenance, "perturbation": record},
    )


def _need_alpha(views: ViewSet, what: str) -> np.ndarray:
    if views.alphas is None:
        raise ValueError(f"{what} needs views with alpha (e.g. from render_views)")
    return views.alphas


def straight_colors(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The object's own colour (H, W, 3) from an RGB-on-white view and its alpha: where alpha > 0,
    ``1 + (image - 1) / alpha`` (clipped to [0, 1]); where alpha is 0, the colour of the nearest
    covered pixel, so that resampling or growing the mask finds a plausible colour there."""
    a = alpha[..., None].astype(np.float64)
    covered = alpha > 0
    colour = np.where(a > 0, 1.0 + (image - 1.0) / np.where(a > 0, a, 1.0), 1.0)
    colour = np.clip(colour, 0.0, 1.0)
    if covered.any() and not covered.all():
        _, (iy, ix) = distance_transform_edt(~covered, return_indices=True)
        colour = colour[iy, ix]
    return colour


def object_frame(mesh: RenderMesh) -> tuple[np.ndarray, float]:
    """Bounding-box centre and largest side of a mesh (the unit that magnitudes are fractions of)."""
    lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
    return (lo + hi) / 2.0, float((hi - lo).max())


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def rotation_matrix(axis: np.ndarray, degrees: float) -> np.ndarray:
    """Rotation by ``degrees`` about the unit ``axis`` (Rodrigues)."""
    k = np.asarray(axis, np.float64)
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    a = math.radians(degrees)
    return np.eye(3) + math.sin(a) * kx + (1.0 - math.cos(a)) * kx @ kx


def rotation_angle_deg(rotation: np.ndarray) -> float:
    """The angle of a 3x3 rotation, from its trace (what a test measures a pose jitter with)."""
    return math.degrees(math.acos(float(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))))


def smooth_noise(height: int, width: int, scale_px: float, rng: np.random.Generator, channels: int = 1):
    """(H, W, channels) smooth random field: Gaussian noise on a grid every ``scale_px`` pixels,
    upsampled with cubic splines. Not normalised."""
    gh = max(2, math.ceil(height / scale_px) + 1)
    gw = max(2, math.ceil(width / scale_px) + 1)
    coarse = rng.normal(size=(gh, gw, channels))
    out = zoom(coarse, (height / gh, width / gw, 1), order=3, mode="reflect", grid_mode=True)
    return out[:height, :width]


# ------------------------------------------------------------------------------------------------
# the perturbations
# ------------------------------------------------------------------------------------------------


def pose_jitter(
    mesh: RenderMesh,
    cameras: list[Camera],
    rotation_deg: float,
    translation: float,
    *,
    seed: int,
    lighting: Lighting | None = None,
    device: torch.device | str = "cpu",
) -> ViewSet:
    """Each view rendered with the object moved by its own rigid motion (see the module docstring).

    ``record["per_view"][i]["motion"]`` is the 4x4 world-frame motion ``T`` of view ``i``
    (``x -> R x + s``): the view is what the nominal camera would see of ``T``-moved geometry,
    rendered as the camera ``w2c @ T`` sees the mesh. Its rotation angle is exactly
    ``rotation_deg`` and ``|T(centre) - centre|`` exactly ``translation`` x the object size.
    """
    rng = np.random.default_rng(seed)
    centre, size = object_frame(mesh)
    axes = _unit_vectors(rng, len(cameras))
    dirs = _unit_vectors(rng, len(cameras))
    moved, per_view = [], []
    for camera, axis, direction in zip(cameras, axes, dirs, strict=True):
        R = rotation_matrix(axis, rotation_deg)
        shift = direction * translation * size
        T = np.eye(4)
        T[:3, :3] = R
        T[:3, 3] = centre - R @ centre + shift
        w2c = camera.w2c @ T
        moved.append(replace(camera, w2c=w2c))
        per_view.append(
            {"axis": axis.tolist(), "angle_deg": rotation_deg, "shift": shift.tolist(), "motion": T.tolist()}
        )
    record = {"kind": "pose", "rotation_deg": rotation_deg, "translation": translation, "seed": seed}
    rgba = render_mesh(mesh, moved, lighting=lighting, device=device).rgba
    out = _viewset(quantize(rgba), cameras, {})
    return _with(out, out.images, out.alphas, {**record, "object_size": size, "per_view": per_view})


def colour_drift(views: ViewSet, gain: float, bias: float, gamma: float, *, seed: int) -> ViewSet:
    """Per-view, per-channel ``clip(gain * c**gamma + bias)`` of the object's colour (module docstring).

    All zero ranges give the input images exactly (the change is added as ``alpha * (c' - c)``).
    """
    alphas = _need_alpha(views, "colour drift")
    rng = np.random.default_rng(seed)
    n = views.num_views
    gains = 1.0 + rng.uniform(-gain, gain, size=(n, 3))
    biases = rng.uniform(-bias, bias, size=(n, 3))
    gammas = np.exp(rng.uniform(-math.log1p(gamma), math.log1p(gamma), size=(n, 3)))
    images = []
    for i in range(n):
        c = straight_colors(views.images[i], alphas[i])
        new = np.clip(gains[i] * c ** gammas[i] + biases[i], 0.0, 1.0)
        images.append(views.images[i] + alphas[i][..., None] * (new - c))
    record = {
        "kind": "colour",
        "gain_range": [1.0 - gain, 1.0 + gain],
        "bias_range": [-bias, bias],
        "gamma_range": [1.0 / (1.0 + gamma), 1.0 + gamma],
        "seed": seed,
        "per_view": [
            {"gain": g.tolist(), "bias": b.tolist(), "gamma": y.tolist()}
            for g, b, y in zip(gains, biases, gammas, strict=True)
        ],
    }
    return _with(views, np.clip(np.stack(images), 0.0, 1.0), alphas, record)


def displacement_field(
    height: int, width: int, max_px: float, scale_px: float, rng: np.random.Generator
) -> np.ndarray:
    """(H, W, 2) smooth displacement (dx, dy) in pixels whose largest length is exactly ``max_px``."""
    field = smooth_noise(height, width, scale_px, rng, channels=2)
    peak = float(np.linalg.norm(field, axis=-1).max())
    return (field * (max_px / peak if peak > 0 else 0.0)).astype(np.float64)


def warp_image(image: np.ndarray, field: np.ndarray) -> np.ndarray:
    """``out(p) = image(p + field(p))`` with bilinear interpolation (edge pixels repeated outside).

    On an RGB-on-white view this equals warping premultiplied colour and alpha, then compositing:
    the white background is constant, so colour and alpha move together without halos.
    """
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    coords = [yy + field[..., 1], xx + field[..., 0]]
    if image.ndim == 2:
        return map_coordinates(image, coords, order=1, mode="nearest")
    return np.stack(
        [map_coordinates(image[..., c], coords, order=1, mode="nearest") for c in range(image.shape[2])], -1
    )


def local_warp(views: ViewSet, max_px: float, *, seed: int, scale_px: float = 48.0) -> ViewSet:
    """Each view resampled through its own smooth displacement field of largest length ``max_px``."""
    alphas = _need_alpha(views, "local warp")
    rng = np.random.default_rng(seed)
    h, w = views.images.shape[1:3]
    images, new_alphas, per_view = [], [], []
    for image, alpha in zip(views.images, alphas, strict=True):
        field = displacement_field(h, w, max_px, scale_px, rng)
        images.append(warp_image(image, field))
        new_alphas.append(warp_image(alpha, field))
        per_view.append({"max_displacement_px": float(np.linalg.norm(field, axis=-1).max())})
    record = {"kind": "warp", "max_px": max_px, "scale_px": scale_px, "seed": seed, "per_view": per_view}
    return _with(views, np.stack(images), np.stack(new_alphas), record)


def boundary_distance(alpha: np.ndarray) -> np.ndarray:
    """Signed distance (px, + inside) of each pixel centre from the ``alpha >= 0.5`` boundary, taken
    as half-way between a covered pixel and its nearest uncovered one (so +-0.5 next to it)."""
    inside = alpha >= 0.5
    if inside.all() or not inside.any():
        return np.full(alpha.shape, np.inf if inside.all() else -np.inf)
    return np.where(inside, distance_transform_edt(inside) - 0.5, 0.5 - distance_transform_edt(~inside))


def mask_noise(views: ViewSet, width_px: float, *, seed: int, scale_px: float = 24.0) -> ViewSet:
    """Within ``width_px`` of each view's alpha boundary: the boundary moved by a smooth random offset
    in ``[-width/2, width/2]`` and feathered by a smooth random half-width in ``[0, width/2]``.

    New alpha ``clip(0.5 + (d - offset) / (2 feather))`` with ``d`` the signed distance from the old
    boundary (:func:`boundary_distance`); at ``|d| >= width`` it is 0 or 1 whatever the noise, and
    those pixels keep their original values exactly. Grown pixels take the nearest object colour.
    """
    alphas = _need_alpha(views, "mask noise")
    rng = np.random.default_rng(seed)
    h, w = alphas.shape[1:]
    half = width_px / 2.0
    images, new_alphas, per_view = [], [], []
    for image, alpha in zip(views.images, alphas, strict=True):
        noise = smooth_noise(h, w, scale_px, rng, channels=2)
        noise = noise / max(float(np.abs(noise).max()), 1e-12)
        offset = half * noise[..., 0]
        feather = half * np.abs(noise[..., 1])
        d = boundary_distance(alpha)
        band = np.abs(d) < width_px
        hard = (d > offset).astype(np.float64)
        soft = np.clip(0.5 + (d - offset) / np.maximum(2.0 * feather, 1e-12), 0.0, 1.0)
        new_alpha = np.where(band, np.where(feather > 1e-6, soft, hard), alpha)
        colour = straight_colors(image, alpha)
        new_image = np.where(
            band[..., None], colour * new_alpha[..., None] + (1.0 - new_alpha[..., None]), image
        )
        images.append(new_image)
        new_alphas.append(new_alpha)
        changed = np.abs(new_alpha - alpha) > 1e-6
        per_view.append(
            {
                "changed_px": int(changed.sum()),
                "grown_px": int((changed & (new_alpha > alpha)).sum()),
                "shrunk_px": int((changed & (new_alpha < alpha)).sum()),
            }
        )
    record = {"kind": "mask", "width_px": width_px, "scale_px": scale_px, "seed": seed, "per_view": per_view}
    return _with(views, np.stack(images), np.stack(new_alphas), record)


# ------------------------------------------------------------------------------------------------
# a local bump on a copy of the mesh
# ------------------------------------------------------------------------------------------------


def subdivide_faces(mesh: RenderMesh, select: np.ndarray) -> RenderMesh:
    """Split each selected face into four at its edge midpoints (per-vertex attributes interpolated,
    per-face ones copied). Neighbours of the selection get T-junctions: only subdivide where the
    later deformation is zero on the selection's border (see :func:`bump`)."""
    faces = mesh.faces
    sel = faces[select]
    if len(sel) == 0:
        return mesh
    edges = np.sort(sel[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    uniq, inverse = np.unique(edges, axis=0, return_inverse=True)
    nv = len(mesh.vertices)
    mids = (nv + inverse.reshape(-1, 3)).T  # midpoints of edges ab, bc, ca
    a, b, c = sel.T
    ab, bc, ca = mids
    new = np.concatenate([np.stack(t, 1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))])
    parents = np.concatenate([np.flatnonzero(~select), np.tile(np.flatnonzero(select), 4)])

    def extend(attr):
        return None if attr is None else np.concatenate([attr, (attr[uniq[:, 0]] + attr[uniq[:, 1]]) / 2.0])

    return RenderMesh(
        vertices=extend(mesh.vertices),
        faces=np.concatenate([faces[~select], new]),
        face_color=mesh.face_color[parents],
        uvs=extend(mesh.uvs),
        textures=mesh.textures,
        face_texture=None if mesh.face_texture is None else mesh.face_texture[parents],
        vertex_colors=extend(mesh.vertex_colors),
        transform=mesh.transform,
    )


def bump(
    mesh: RenderMesh, point: np.ndarray, direction: np.ndarray, height: float, radius: float
) -> RenderMesh:
    """A copy of ``mesh`` with every vertex moved by ``height * (1 - (r / radius)^2)^2 * direction``
    (``r``: distance to ``point``; zero for ``r >= radius``), after subdividing the faces that reach
    into the ball until their edges are at most ``radius / 8`` (so the bump is smooth).

    Displacing by position alone (not per-vertex normals) keeps UV-seam copies of a vertex together.
    Only faces reaching into the ball are split, so every T-junction lies outside it, where nothing moves.
    """
    target = radius / 8.0
    for _ in range(8):
        tri = mesh.vertices[mesh.faces]
        centre = tri.mean(1)
        reach = np.linalg.norm(tri - centre[:, None], axis=2).max(1)
        near = np.linalg.norm(centre - point, axis=1) < radius + reach
        longest = np.linalg.norm(tri - np.roll(tri, 1, axis=1), axis=2).max(1)
        if not (near & (longest > target)).any():
            break
        mesh = subdivide_faces(mesh, near)
    r = np.linalg.norm(mesh.vertices - point, axis=1)
    falloff = np.where(r < radius, (1.0 - (r / radius) ** 2) ** 2, 0.0)
    verts = mesh.vertices + height * falloff[:, None] * np.asarray(direction)[None]
    return replace(mesh, vertices=verts)


def _surface_points(mesh: RenderMesh, count: int, rng: np.random.Generator):
    """Area-uniform points on the mesh with their unit face normals."""
    tri = mesh.vertices[mesh.faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = np.linalg.norm(normals, axis=1)
    idx = rng.choice(len(tri), size=count, p=area / area.sum())
    u, v = rng.random(count), rng.random(count)
    flip = u + v > 1
    u, v = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
    t = tri[idx]
    pts = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    return pts, normals[idx] / np.maximum(area[idx], 1e-30)[:, None]


def visible_views(
    point: np.ndarray, normal: np.ndarray, cameras: list[Camera], depth: np.ndarray, tol: float
):
    """Indices of the cameras that see ``point`` (depth test within ``tol``, at least ~25 deg off
    grazing, inside the image away from its border)."""
    seen = []
    for i, camera in enumerate(cameras):
        to_cam = camera.center - point
        cos = abs(float(normal @ to_cam)) / float(np.linalg.norm(to_cam))
        (x, y), z = (a[0] for a in camera.project(point[None]))
        col, row = int(x), int(y)
        if cos < 0.42 or not (8 <= col < camera.width - 8 and 8 <= row < camera.height - 8):
            continue
        if abs(float(depth[i, row, col]) - float(z)) < tol:
            seen.append(i)
    return seen


def detail_disagreement(
    mesh: RenderMesh,
    cameras: list[Camera],
    height: float,
    *,
    seed: int,
    radius: float = 0.1,
    num_views: int = 2,
    base: ViewSet | None = None,
    lighting: Lighting | None = None,
    device: torch.device | str = "cpu",
) -> ViewSet:
    """``num_views`` views rendered from :func:`bump` of the mesh (module docstring), the others from
    ``base`` (the clean renders; rendered here when ``None``).

    The point is the first of seeded area-uniform surface samples seen by at least ``num_views``
    views; the bump moves along its face normal turned towards those views, outwards or inwards
    (a dent) with equal odds. ``height`` and ``radius`` are fractions of the object size.
    """
    rng = np.random.default_rng(seed)
    _, size = object_frame(mesh)
    if base is None:
        base = render_views(mesh, cameras, lighting=lighting, device=device)
    depth = render_mesh(mesh, cameras, supersample=1, lighting=lighting, device=device).depth
    points, normals = _surface_points(mesh, 256, rng)
    for point, normal in zip(points, normals, strict=True):
        seen = visible_views(point, normal, cameras, depth, tol=0.005 * size)
        if len(seen) >= num_views:
            break
    else:
        raise ValueError(f"no sampled surface point is seen by {num_views} views")
    chosen = sorted(int(i) for i in rng.choice(seen, size=num_views, replace=False))
    towards = np.mean([cameras[i].center - point for i in chosen], axis=0)
    direction = normal if normal @ towards > 0 else -normal
    sign = 1.0 if rng.random() < 0.5 else -1.0
    deformed = bump(mesh, point, direction, sign * height * size, radius * size)
    rgba = render_mesh(deformed, [cameras[i] for i in chosen], lighting=lighting, device=device).rgba
    changed = _viewset(quantize(rgba), [cameras[i] for i in chosen], {})
    images, alphas = base.images.copy(), _need_alpha(base, "detail disagreement").copy()
    images[chosen], alphas[chosen] = changed.images, changed.alphas
    record = {
        "kind": "detail",
        "height": sign * height,
        "height_world": sign * height * size,
        "radius": radius,
        "radius_world": radius * size,
        "point": point.tolist(),
        "direction": direction.tolist(),
        "views": chosen,
        "seed": seed,
    }
    return _with(base, images, alphas, record)


# ------------------------------------------------------------------------------------------------
# dispatch
# ------------------------------------------------------------------------------------------------


def apply(
    perturbation: Perturbation,
    clean: ViewSet,
    mesh: RenderMesh | None = None,
    *,
    lighting: Lighting | None = None,
    device: torch.device | str = "cpu",
) -> ViewSet:
    """``perturbation`` applied to the clean renders ``clean`` of ``mesh`` (``pose`` and ``detail``
    re-render the mesh; the others work on the images). The record in the result's provenance also
    holds ``perturbation.as_dict()``."""
    p, m = perturbation, perturbation.magnitude
    if p.kind in ("pose", "detail") and mesh is None:
        raise ValueError(f"the {p.kind} perturbation re-renders the mesh: pass it")
    if p.kind == "none":
        return (
            _with(clean, clean.images, clean.alphas, {"kind": "none"}) if clean.alphas is not None else clean
        )
    if p.kind == "pose":
        out = pose_jitter(
            mesh, clean.cameras, m, p.option("translation"), seed=p.seed, lighting=lighting, device=device
        )
    elif p.kind == "colour":
        out = colour_drift(clean, m, p.option("bias"), p.option("gamma"), seed=p.seed)
    elif p.kind == "warp":
        out = local_warp(clean, m, seed=p.seed, scale_px=p.option("scale"))
    elif p.kind == "mask":
        out = mask_noise(clean, m, seed=p.seed)
    else:
        out = detail_disagreement(
            mesh,
            clean.cameras,
            m,
            seed=p.seed,
            radius=p.option("radius"),
            num_views=int(p.option("views")),
            base=clean,
            lighting=lighting,
            device=device,
        )
    record = {**out.provenance["perturbation"], "spec": p.as_dict()}
    return replace(out, provenance={**clean.provenance, "perturbation": record})
