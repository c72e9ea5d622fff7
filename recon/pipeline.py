"""The reconstruction API the CLI and benchmarks call.

``reconstruct(views, ReconSettings(quality=...)) -> ReconResult`` trains the field; ``export_mesh(result, path)``
turns it into a file (marching cubes, cleanup, optional decimation, UV + baking). Splitting the two
lets callers export several formats from one training run and time each stage.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from recon.bake import BakeSettings, ViewProjector
from recon.encoding import resolve_backend
from recon.export import check_output_path, write_mesh
from recon.fields import NeuSField
from recon.kernels.warmup import start_hash_grid_warmup
from recon.masks import view_masks
from recon.mesh import Mesh, decimate, extract_mesh, vertex_normals
from recon.poses import corrected_cameras
from recon.presets import ROBUSTNESS_OFF, Preset, ReconSettings
from recon.render import OccupancyGrid
from recon.texture import bake_texture, unwrap_uv, vertex_colors
from recon.train import train
from sd3d.core import defaults
from sd3d.core.device import resolve_device
from sd3d.core.errors import MissingDependencyError, ViewsFolderError
from sd3d.core.imports import import_in_background
from sd3d.core.io import ViewSet, read_views
from sd3d.core.progress import Progress, resolve
from sd3d.core.triton_precompile import CompileWorkers, KernelWarmUp


@dataclass(frozen=True)
class ReconResult:
    """A trained field, ready to export. ``grid.hull`` carves the mesh; ``timings`` in seconds.

    ``grid`` is ``None`` in a copy made to export an already extracted surface elsewhere (see
    :func:`extract_surface` and ``export_mesh(..., surface=...)``).
    ``views`` and ``masks`` are what the field was fitted to and ``appearance`` (N, 3, 4) the
    learned per-view colour transforms (``None``: not learned): a texture baked from the views
    (``preset.texture_source == "views"``) needs them; without ``views`` it comes from the field.
    ``poses`` (N, 3, 4): the learned camera corrections (:mod:`recon.poses`; ``None``: not learned),
    with which the views are projected onto the mesh.
    """

    field: NeuSField
    grid: OccupancyGrid | None
    preset: Preset
    device: torch.device
    seed: int
    mask_source: str
    final_loss: float
    timings: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    views: ViewSet | None = None
    masks: np.ndarray | None = None
    appearance: np.ndarray | None = None
    poses: np.ndarray | None = None
    graph_captures: int = 0  # CUDA graphs the training replayed from (0: eager, also after a failed capture)
    train_phases: dict[str, float] = field(default_factory=dict)  # TrainResult.phase_seconds
    # what the hash grid's kernel warm-up did (recon.kernels.warmup; None: none ran), or
    # {"running": True} when it had not finished by the end of the fit
    kernel_warmup: dict | None = None


@dataclass(frozen=True)
class ExportResult:
    """What ``export_mesh`` wrote. ``textured`` is False when it fell back to vertex colours."""

    paths: list[Path]
    num_vertices: int
    num_faces: int
    textured: bool
    fallback_reason: str
    timings: dict[str, float]
    mesh: Mesh


def reconstruct(
    views: ViewSet | str | os.PathLike,
    settings: ReconSettings | None = None,
    *,
    seed: int = defaults.SEED,
    device: str | torch.device = "auto",
    progress: Progress | None = None,
    robust: bool = True,
    kernel_warmup: KernelWarmUp | None = None,
    compile_workers: CompileWorkers | None = None,
) -> ReconResult:
    """Fit a hash-grid NeuS to 16 views (a :class:`ViewSet`, a views folder or a strip image).

    ``settings.quality``: ``draft``, ``standard``, ``high`` or ``auto`` (standard on CUDA, draft on
    CPU); only its quality and steps matter here (faces and formats are the exports').
    ``device``: a name is resolved here, the public entry point; callers that already resolved it
    pass the :class:`torch.device`.
    ``robust=False`` fits the plain NeuS (the preset with :data:`recon.presets.ROBUSTNESS_OFF`):
    what a consistency measure wants, since the robust training is made to forgive disagreeing views.
    ``kernel_warmup``: the hash grid's kernel warm-up a caller started earlier
    (:func:`start_fit_warmup`; ``sd3d run`` starts it before generating, so that it is done by now);
    without one, a warm-up starts here where the Triton grid will train, on ``compile_workers`` if
    given (:func:`recon.warm_start.start_early_workers`: ``sd3d reconstruct`` starts them before
    it imports PyTorch), which are closed where there is nothing to compile.
    """
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    settings = settings or ReconSettings()
    preset, engine = settings.preset(dev), settings.engine(dev)
    if not robust:
        preset = replace(preset, **ROBUSTNESS_OFF)
    # compiled by workers while the views load and the field is built; the fit does not wait
    if kernel_warmup is not None and compile_workers is not None:
        compile_workers.close()
    warmup = kernel_warmup or start_fit_warmup(preset, dev, pool=compile_workers)
    t0 = time.perf_counter()
    vs = views if isinstance(views, ViewSet) else read_views(views)
    masks, source = view_masks(vs)
    t_load = time.perf_counter() - t0
    out = train(vs, preset, dev, seed=seed, progress=progress, masks=masks, engine=engine)
    return ReconResult(
        field=out.field,
        grid=out.grid,
        preset=preset,
        device=dev,
        seed=seed,
        mask_source=source,
        final_loss=out.final_loss,
        timings={"load": t_load, "train": out.seconds},
        history=out.history,
        views=vs,
        masks=masks,
        appearance=out.appearance,
        poses=out.poses,
        graph_captures=out.graph_captures,
        train_phases=out.phase_seconds,
        kernel_warmup=None if warmup is None else {"running": True} if warmup.running else warmup.wait(),
    )


def start_fit_warmup(
    preset: Preset, device: torch.device, workers: int | None = None, pool: CompileWorkers | None = None
) -> KernelWarmUp | None:
    """Start compiling the hash grid's Triton kernels for a fit with ``preset`` on ``device`` in
    worker processes (:mod:`recon.kernels.warmup`; ``pool``: ones started earlier), if that fit will
    train the Triton grid; ``None`` where it will not, or where an earlier process left the kernels
    compiled (``pool`` is then closed)."""
    if resolve_backend(preset.field.encoding_backend, device) != "triton":
        if pool is not None:
            pool.close()
        return None
    return start_hash_grid_warmup(preset.field.grid, device, workers=workers, pool=pool)


def extract_surface(result: ReconResult, progress: Progress | None = None) -> Mesh:
    """The trained field's surface (marching cubes, carved by the grid, largest component).

    Extract once and pass it to :func:`export_mesh` for each format: it queries the SDF on a dense
    grid, the one export step that wants the training device.
    """
    res = result.preset.mesh_res
    with resolve(progress).task(f"meshing ({res}^3)", res) as advance:
        mesh = extract_mesh(result.field, result.grid, res, result.device, advance=advance)
    if mesh.num_faces == 0:
        raise ViewsFolderError(
            "reconstruction produced an empty surface: the views do not show a consistent object"
        )
    return mesh


def view_projector(result: ReconResult, mesh: Mesh) -> ViewProjector:
    """The result's input views prepared to colour ``mesh`` (its depth maps, canonical colours)."""
    views = result.views
    masks = result.masks if result.masks is not None else view_masks(views)[0]
    return ViewProjector(
        views.images,
        masks,
        corrected_cameras(views.cameras, result.poses),
        result.appearance,
        mesh.vertices,
        mesh.faces,
        result.device,
        BakeSettings.from_preset(result.preset),
    )


def export_mesh(
    result: ReconResult,
    out_path: str | os.PathLike,
    faces: int | None = None,
    texture_size: int | None = None,
    surface: Mesh | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Extract, clean, decimate, UV-unwrap + bake (or vertex-colour) and write ``out_path``.

    Colours come from the input views (``preset.texture_source == "views"`` and the result holds
    them, see :mod:`recon.bake`) or from the colour network.

    ``faces`` decimates to at most that many faces; without it the preset's ``uv_max_faces`` is
    the budget. Every format gets the same budget, so a .ply holds the same surface as the .glb
    and .obj of one run (xatlas time also grows quickly with the face count). A failed unwrap falls
    back to vertex colours with a warning. Smooth vertex normals are written with every format.
    Meshing, UV unwrapping and colouring report through ``progress``.
    ``surface``: the result of :func:`extract_surface`, when already extracted (several formats,
    or the field moved to another device or process without its grid).
    """
    path = check_output_path(out_path)
    dev = result.device
    preset = result.preset
    prog = resolve(progress)
    timings: dict[str, float] = {}
    if surface is None:
        t = time.perf_counter()
        mesh = extract_surface(result, progress=prog)
        timings["marching_cubes"] = time.perf_counter() - t
    else:
        mesh = surface

    target = faces if faces is not None else preset.uv_max_faces
    t = time.perf_counter()
    try:
        mesh = decimate(mesh, target)
    except MissingDependencyError:
        if faces is not None:  # asked for explicitly: the user must install it
            raise
        warnings.warn("fast-simplification is missing: exporting the full mesh (slower)", stacklevel=2)
    timings["decimate"] = time.perf_counter() - t
    normals = vertex_normals(mesh.vertices, mesh.faces)
    projector = None
    if preset.texture_source == "views" and result.views is not None:
        t = time.perf_counter()
        projector = view_projector(result, mesh)
        timings["view_depth"] = time.perf_counter() - t

    uvs = texture = None
    reason = ""
    if path.suffix.lower() in (".glb", ".obj"):
        t = time.perf_counter()
        size = texture_size or preset.texture_size
        # the writer's trimesh, imported while this thread waits for xatlas' process (sd3d.core.imports)
        import_in_background("trimesh")
        with prog.task("UV unwrapping (xatlas)", None) as advance:
            uv_mesh, reason = unwrap_uv(mesh.vertices, mesh.faces, size, tick=lambda: advance(0))
        timings["uv"] = time.perf_counter() - t
        t = time.perf_counter()
        if uv_mesh is not None:
            normals = normals[uv_mesh.vmap]  # seam copies keep their vertex's normal: no visible seams
            texture = bake_texture(
                result.field, uv_mesh, size, dev, progress=prog, projector=projector, normals=normals
            )
            verts, tris, uvs = uv_mesh.vertices, uv_mesh.faces, uv_mesh.uvs
            colors = None
        else:
            warnings.warn(f"UV unwrapping failed ({reason}); writing vertex colours instead", stacklevel=2)
            verts, tris = mesh.vertices, mesh.faces
            colors = vertex_colors(
                result.field, verts, dev, progress=prog, projector=projector, normals=normals
            )
        timings["bake"] = time.perf_counter() - t
    else:
        t = time.perf_counter()
        verts, tris = mesh.vertices, mesh.faces
        colors = vertex_colors(result.field, verts, dev, progress=prog, projector=projector, normals=normals)
        timings["bake"] = time.perf_counter() - t
    t = time.perf_counter()
    paths = write_mesh(path, verts, tris, uvs=uvs, texture=texture, colors=colors, normals=normals)
    timings["write"] = time.perf_counter() - t
    return ExportResult(
        paths=paths,
        num_vertices=int(np.asarray(verts).shape[0]),
        num_faces=int(np.asarray(tris).shape[0]),
        textured=texture is not None,
        fallback_reason=reason,
        timings=timings,
        mesh=mesh,
    )
