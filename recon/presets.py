"""Reconstruction quality presets: every knob of training, meshing and texturing, by name.

Presets trade time for detail: ``draft`` is sized for a CPU core (half-resolution rays, 8 coarse
hash levels, 128^3 marching cubes), ``standard`` for one GPU (full-resolution rays, 16 levels, 4k
rays and up to 175k samples per step, 1000 steps, 256^3 marching cubes), ``high`` for standard's fit
exported denser (384^3 marching cubes, a 2048^2 texture, 100k faces). ``auto`` picks ``standard`` on
CUDA and ``draft`` on CPU.

Every preset also switches on the methods that make reconstruction robust to generated views
(which disagree a little: alignment, colour, details, mask edges): per-view colour correction,
per-view camera correction (:mod:`recon.poses`), normal smoothing, hash levels ramped in, per-view
residual weighting, soft mask edges (see :mod:`recon.train`), a texture baked from the views
(:mod:`recon.bake`), and the field's weights averaged over the last part of training.
``replace(preset, **ROBUSTNESS_OFF)`` switches them all off again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from recon.appearance import APPEARANCE_ANCHORS, APPEARANCE_MODES
from recon.encoding import BACKENDS, HashGridConfig
from recon.fields import FieldConfig
from sd3d.core.errors import UserError

QUALITIES = ("auto", "draft", "standard", "high")
TEXTURE_SOURCES = ("field", "views")
NORMAL_SMOOTH_OFFSETS = ("sphere", "outward", "tangent")


@dataclass(frozen=True)
class Preset:
    """Everything a quality level decides (training, extraction and texture sizes)."""

    name: str
    steps: int
    rays_per_batch: int
    max_samples_per_batch: int
    image_stride: int  # 2 = train on half-resolution views
    step_size: float  # march step dt (world units)
    field: FieldConfig
    occupancy_res: int
    mesh_res: int
    texture_size: int
    uv_max_faces: int  # default face budget of every exported format (xatlas slows down fast above it)
    max_samples_per_ray: int | None = None  # cap, applied once the band is narrow (see sample_rays)
    per_ray_cap_from: float = 0.5  # fraction of training after which the cap applies
    lr: float = 1e-2
    # The hash grid's own rate (None: ``lr``, as in every preset). Draft at twice ``lr`` fits smooth
    # objects much better but breaks thin ones; a faster grid alone does neither (RESULTS.md, session 11).
    grid_lr: float | None = None
    lr_variance: float = 1e-3
    start_levels: int = 4
    levels_done_at: float = 0.4  # fraction of training when all hash levels are active
    warmup: float = 0.05
    cos_anneal_end: float = 0.1
    occupancy_start: float = 0.0  # start narrowing the occupancy grid after this fraction
    init_steps: int = 200  # fit the SDF to the visual hull's distance field before rendering
    init_points: int = 4096
    occupancy_every: int = 50
    outside_margin: float = 0.02
    # Voxels outside the mask of this many views still count as hull (tolerates one inconsistent
    # view in generated sets; the entry loss keeps the extra room from being filled).
    hull_allowed_misses: int = 1
    hull_dilate_px: int = 3
    min_inv_s_end: float = 800.0  # floor on NeuS' sharpness, rising geometrically from the initial s
    w_rgb: float = 1.0
    w_mask: float = 0.1
    w_eikonal: float = 0.1
    w_entry: float = 1.0
    eikonal_points: int = 1024
    # Robustness to inconsistent (generated) views. The class defaults switch every method off and
    # reproduce the plain NeuS training and field-coloured texture; the named presets switch them on.
    appearance: str = "none"  # per-view colour transform: none | gain | affine (recon.appearance)
    appearance_anchor: str = "mean"  # mean: average transform = identity; first: view 0's
    appearance_lr: float = 2e-3  # slower than the field: corrections follow, they do not lead
    w_appearance: float = 0.1  # L2 pull of every transform towards the identity
    w_normal_smooth: float = 0.0  # normals at x and x + eps agree (near-surface samples), 0 = off
    normal_smooth_eps: float = 0.01  # world units (the object spans ~1)
    normal_smooth_points: int = 1024  # samples drawn per step by their rendering weight
    normal_smooth_end: float = 0.1  # weight at the last step relative to the first (linear fade)
    # where the second normal is taken: "sphere" (a step in any direction; it can reach the far face
    # of a thin sheet), "outward" (steps into the surface mirrored out) or "tangent" (in the tangent
    # plane); the last two stay on the near face of a thin sheet
    normal_smooth_offset: str = "sphere"
    level_ramp: float = 0.0  # each new hash level fades in over this fraction of training, 0 = switch
    view_weight_power: float = 0.0  # down-weight views whose residual exceeds the median's, 0 = off
    view_weight_min: float = 0.3  # floor of a view's weight
    view_weight_from: float = 0.2  # fraction of training after which residuals are trusted
    mask_edge_px: float = 0.0  # the mask loss trusts rays within this many px of a mask edge less, 0 = off
    pose_refine: bool = False  # learn a small rigid correction of each view's camera (recon.poses)
    # radians / world units per Adam step, scaled by the schedule like the others; 1e-3 let the
    # corrections of consistent views wander by ~1 degree (benchmarks/RESULTS.md)
    pose_lr: float = 3e-4
    pose_from: float = 0.1  # fraction of training after which the corrections move (a coarse shape first)
    w_pose: float = 0.1  # L2 pull of every correction towards zero
    texture_source: str = "field"  # views: project the input views (recon.bake); field: colour net
    # The field keeps an exponential moving average of its weights over the last part of training and
    # ends with it (recon.train._WeightAverage): the window (fraction of training the average spans,
    # 1 / (1 - decay) steps), 0 = off; and from which fraction of training it runs
    average_window: float = 0.0
    average_from: float = 0.7
    bake_cos_power: float = 2.0  # view weight ~ (cos(normal, view direction) * edge weight) ** power
    bake_temperature: float = 0.25  # softmax temperature over log weights: low = best view wins
    bake_edge_px: float = 3.0  # views' colours fade out within this many pixels of their mask edge
    bake_min_weight: float = (
        0.1  # where the best view's cos * edge weight is lower, the field's colour blends in
    )

    def __post_init__(self) -> None:
        if self.appearance not in APPEARANCE_MODES:
            raise ValueError(f"appearance must be one of {APPEARANCE_MODES}, got {self.appearance!r}")
        if self.appearance_anchor not in APPEARANCE_ANCHORS:
            raise ValueError(
                f"appearance_anchor must be one of {APPEARANCE_ANCHORS}, got {self.appearance_anchor!r}"
            )
        if self.texture_source not in TEXTURE_SOURCES:
            raise ValueError(f"texture_source must be one of {TEXTURE_SOURCES}, got {self.texture_source!r}")
        if self.normal_smooth_offset not in NORMAL_SMOOTH_OFFSETS:
            raise ValueError(
                f"normal_smooth_offset must be one of {NORMAL_SMOOTH_OFFSETS}, got {self.normal_smooth_offset!r}"
            )
        if self.bake_temperature <= 0:
            raise ValueError("bake_temperature must be > 0")
        if not (self.average_window >= 0.0 and 0.0 <= self.average_from <= 1.0):
            raise ValueError("average_window must be >= 0 and average_from within [0, 1]")


ROBUSTNESS_OFF: dict[str, object] = {
    "appearance": "none",
    "w_normal_smooth": 0.0,
    "level_ramp": 0.0,
    "view_weight_power": 0.0,
    "mask_edge_px": 0.0,
    "pose_refine": False,
    "texture_source": "field",
    "average_window": 0.0,
}
"""Fields that switch every robustness method off: ``replace(preset, **ROBUSTNESS_OFF)`` trains and
textures exactly as the plain NeuS did."""

_ROBUST: dict[str, object] = {
    "appearance": "affine",
    # Smoothing trades thin parts for smooth surfaces: on the robustness benchmark (draft, CPU) 0.5
    # made a smooth object better but a thin sheet much worse; with 0.1 the mean Chamfer over smooth,
    # thin and concave objects is that of no smoothing, and the normals are smoother
    # (benchmarks/RESULTS.md). Not yet measured at standard quality.
    "w_normal_smooth": 0.1,
    "level_ramp": 0.1,
    "view_weight_power": 1.0,
    "mask_edge_px": 2.0,
    # Per-view camera corrections: on the robustness benchmark (draft, CPU, two seeds) they cut the
    # Chamfer of every misaligned case (mean 0.0159 -> 0.0144) and raised its texture PSNR by 0.4-3
    # dB; on aligned views the geometry stays as good, the silhouettes move by a fraction of a pixel.
    "pose_refine": True,
    "texture_source": "views",
    # The field's weights averaged over the last 30 % of training (a window of 1/8 of it): on the
    # robustness benchmark (draft, CPU, fresh seeds 4 and 5, 12 pairs sharing their training) texture
    # PSNR +0.73 dB (better in 11), geometry the same on average (benchmarks/RESULTS.md, session 8)
    "average_window": 0.125,
}


_STANDARD = Preset(
    name="standard",
    steps=1000,
    # half of session 11's 8192 rays / 350k samples: a step is bound by the GPU's work on its
    # samples, and on the robustness benchmark (H100, spot / duck / blade, clean and misaligned)
    # the half gave the same geometry (mean Chamfer 0.00953 vs 0.00955, IoU 0.740 vs 0.740,
    # normals 12.07 vs 12.08 deg) and 0.17 dB less texture in two thirds of the time
    rays_per_batch=4096,
    max_samples_per_batch=175_000,
    image_stride=1,
    step_size=0.004,
    field=FieldConfig(
        grid=HashGridConfig(n_levels=16, log2_hashmap_size=19, base_resolution=16, max_resolution=1024)
    ),
    occupancy_res=256,
    mesh_res=256,
    texture_size=1024,
    uv_max_faces=30_000,
    **_ROBUST,
)


PRESETS: dict[str, Preset] = {
    "draft": Preset(
        name="draft",
        steps=400,
        rays_per_batch=768,
        max_samples_per_batch=24_000,
        image_stride=2,
        step_size=0.01,
        field=FieldConfig(
            grid=HashGridConfig(n_levels=8, log2_hashmap_size=16, base_resolution=16, max_resolution=256)
        ),
        occupancy_res=64,
        mesh_res=128,
        texture_size=512,
        uv_max_faces=20_000,
        start_levels=3,
        occupancy_every=25,
        eikonal_points=256,
        **{
            **_ROBUST,
            # at half resolution a few pixels around the mask edge are the silhouette's own rays
            "mask_edge_px": 0.0,
        },
        normal_smooth_points=256,
    ),
    "standard": _STANDARD,
    # Redefined in session 12. high was 3x standard's steps with twice its rays and samples and a
    # finer grid: at 4.6x the time it gave the same geometry on the robustness benchmark (H100,
    # sessions 10 and 11), and neither 2000 steps nor stronger normal smoothing beat standard there
    # (session 12). No fit measured better, so high is now standard's fit exported denser: 1.5x the
    # mesh resolution, 4x the texture pixels, 100k faces, for users who want a denser file (cold
    # 23.8 s instead of 17.6 s on an H100). The benchmark cannot show that density: it compares
    # renders at the views' 256 px, where high and standard differ by run-to-run noise (same machine:
    # texture PSNR -0.37 / +0.22 / -0.04 dB on the clean spot, blade, duck; the same geometry)
    "high": replace(_STANDARD, name="high", mesh_res=384, texture_size=2048, uv_max_faces=100_000),
}


def resolve_quality(quality: str, device: torch.device) -> str:
    """``auto`` is ``standard`` on CUDA and ``draft`` on CPU (standard would take hours there)."""
    if quality == "auto":
        return "standard" if device.type == "cuda" else "draft"
    return quality


def get_preset(quality: str, steps: int | None = None) -> Preset:
    """The named preset (not ``auto``: see :func:`resolve_quality`), with ``steps`` overriding its own."""
    if quality not in PRESETS:
        raise UserError(f"unknown quality {quality!r}: use auto, {', '.join(PRESETS)}")
    preset = PRESETS[quality]
    if steps is not None:
        if steps < 1:
            raise UserError(f"--steps must be >= 1, got {steps}")
        preset = replace(preset, steps=int(steps))
    return preset


MESH_FORMATS = ("glb", "obj", "ply")
HASH_GRIDS = BACKENDS
"""``--hash-grid`` values (:func:`recon.encoding.make_encoding`): the same grid, computed by PyTorch
(the reference; what ``auto`` means on a CPU), by our Triton kernels (CUDA; what ``auto`` means there
when Triton imports, since their tests passed on an H100), by tinycudann (CUDA, only by name: no GPU
here has run it), or ``auto``."""


@dataclass(frozen=True)
class ReconSettings:
    """What a caller chooses about reconstruction and export: the quality preset (``auto``: see
    :func:`resolve_quality`), its training ``steps`` (``None``: the preset's), the face budget of
    every exported file (``None``: the preset's ``uv_max_faces``) and the mesh ``formats``.

    Checked at construction, so a bad value fails before any training. The messages name the
    ``sd3d run`` options (``--recon-steps``): ``sd3d reconstruct`` checks its own ``--steps`` first.
    """

    quality: str = "auto"
    steps: int | None = None
    faces: int | None = None
    formats: tuple[str, ...] = ("glb",)
    hash_grid: str = "auto"  # one of HASH_GRIDS: which hash-grid implementation trains (auto: Triton on CUDA)
    # replay the training step from CUDA graphs (recon.step_graph); None = auto: on a CUDA device
    cuda_graph: bool | None = None

    def __post_init__(self) -> None:
        bad = [f for f in self.formats if f not in MESH_FORMATS]
        if bad:
            raise UserError(f"unknown mesh format {bad[0]!r}: choose from {', '.join(MESH_FORMATS)}")
        if self.steps is not None and self.steps < 1:
            raise UserError(f"--recon-steps must be >= 1, got {self.steps}")
        get_preset("draft" if self.quality == "auto" else self.quality, self.steps)
        if self.faces is not None and self.faces < 4:
            raise UserError(f"--faces must be at least 4, got {self.faces}")
        if self.hash_grid not in HASH_GRIDS:
            raise UserError(f"unknown hash grid {self.hash_grid!r}: choose from {', '.join(HASH_GRIDS)}")

    def engine(self, device: torch.device) -> str:
        """How training runs its steps on ``device`` (:data:`recon.train.ENGINES`); a clear error for
        CUDA graphs anywhere but on a CUDA device."""
        if self.cuda_graph is None:
            return "graph" if device.type == "cuda" else "eager"
        if not self.cuda_graph:
            return "eager"
        if device.type != "cuda":
            raise UserError(
                f"--cuda-graph needs a CUDA device (it replays the training step as a CUDA graph), not {device}"
            )
        return "graph"

    def preset(self, device: torch.device) -> Preset:
        """The preset these settings mean on ``device`` (``auto`` decided there), with their hash grid."""
        preset = get_preset(resolve_quality(self.quality, device), self.steps)
        return replace(preset, field=replace(preset.field, encoding_backend=self.hash_grid))
