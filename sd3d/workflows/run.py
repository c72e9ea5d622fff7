"""The one-shot pipeline behind ``sd3d run`` and ``sd3d batch``.

photo -> prepared input -> elevation (estimated unless given) -> 16 views (best of ``samples`` by
silhouette consistency) -> NeuS reconstruction -> textured mesh (+ other formats) -> turntable
preview -> ``report.json``.

Everything is written into a temporary folder whose entries land in the output folder only when
every stage succeeded (:func:`sd3d.core.io.atomic_dir`: a folder sd3d did not write is never
emptied), so a failure or Ctrl-C leaves no half-written result, and ``report.json`` existing means
the run finished (``make batch`` relies on that to skip finished images). Every setting, the output
folder and the weights are checked before any work, so a bad option or a machine without the
checkpoint fails at once with the one-line instruction.
"""

from __future__ import annotations

import os
import platform
import shutil
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from recon.export import obj_sidecars
from recon.pipeline import export_mesh, extract_surface, reconstruct, start_fit_warmup
from recon.presets import ReconSettings
from recon.raster import load_mesh, render_mesh
from sd3d.background import check_backend_name
from sd3d.core import cameras as cam
from sd3d.core import defaults
from sd3d.core.device import check_gpu_memory, limit_gpu_memory, resolve_device, resolve_dtype
from sd3d.core.errors import MissingDependencyError, OutputPathError, UserError, WeightsError
from sd3d.core.io import atomic_dir, check_max_pixels, check_output_dir, mark_output, write_json_atomic
from sd3d.core.progress import Progress, resolve
from sd3d.pipelines.syncdreamer import (
    GenerationSettings,
    check_output_folder,
    compute_dtype_for,
    load_model,
    run_generation,
    weights_path,
    write_generated,
)
from sd3d.preprocess import check_crop_size, prepare_input
from sd3d.workflows.elevation import estimate_elevation
from sd3d.workflows.ranking import silhouette_consistency
from sd3d.workflows.storage import IMAGE_SUFFIXES

PREVIEW_FORMATS = ("mp4", "gif", "none")
MESH_FORMATS = ("glb", "obj", "ply")  # recon.presets.MESH_FORMATS, without importing torch here


def _default_generation():

    return GenerationSettings()


def _default_recon():

    return ReconSettings()


@dataclass(frozen=True)
class PreviewSettings:
    """The turntable preview: ``format`` mp4, gif or none, ``frames`` around the object at ``fps``."""

    format: str = "mp4"
    frames: int = defaults.PREVIEW_FRAMES
    fps: int = defaults.PREVIEW_FPS

    def __post_init__(self) -> None:
        if self.format not in PREVIEW_FORMATS:
            raise UserError(f"unknown preview {self.format!r}: choose mp4, gif or none")
        if self.frames < 1 or self.fps < 1:
            raise UserError("preview frames and fps must be >= 1")


@dataclass(frozen=True)
class RunSettings:
    """Every option of the chained stages (defaults: the official generator, the standard preset),
    the stages' own settings nested: ``generation`` (the generator's, but for the elevation, which
    this run chooses: see :meth:`generation_at`), ``recon`` (:class:`recon.presets.ReconSettings`:
    quality, steps, faces, formats) and ``preview`` (:class:`PreviewSettings`).

    ``elevation_deg=None`` estimates the input elevation: generate at 30 deg (the middle of the
    model's training range), estimate from those views, and regenerate once at the estimate when it
    differs by more than ``regenerate_threshold_deg``. ``max_pixels``: the input photo's size limit
    (``None``: :data:`sd3d.core.io.DEFAULT_MAX_PIXELS`). ``device``/``dtype``: names (``auto``,
    ``cuda:1``, ``bf16`` ...) as the user gave them; :meth:`device_and_dtype` resolves them and
    applies ``gpu_memory_gib``, a cap on this process' GPU memory (``None``: the whole card).
    """

    generation: Any = field(default_factory=_default_generation)  # GenerationSettings
    recon: Any = field(default_factory=_default_recon)  # recon.presets.ReconSettings
    preview: PreviewSettings = field(default_factory=PreviewSettings)
    elevation_deg: float | None = None
    crop_size: int = defaults.CROP_SIZE
    background: str = "auto"
    max_pixels: int | None = None
    device: str = "auto"
    dtype: str = "auto"
    regenerate_threshold_deg: float = 2.5
    gpu_memory_gib: float | None = None

    def __post_init__(self) -> None:
        self._validate()
        formats = tuple(dict.fromkeys(("glb", *self.recon.formats)))  # the GLB is always written
        if formats != self.recon.formats:
            object.__setattr__(self, "recon", replace(self.recon, formats=formats))

    def _validate(self) -> None:
        """Every value that can be judged without a device, so a bad option fails at construction
        (the CLI's one ``error:`` line), never after minutes of generation or training. The nested
        ``recon`` and ``preview`` settings checked themselves when they were made."""

        if not isinstance(self.generation, GenerationSettings):
            raise TypeError(f"RunSettings.generation must be a GenerationSettings, got {self.generation!r}")
        if not isinstance(self.recon, ReconSettings) or not isinstance(self.preview, PreviewSettings):
            raise TypeError("RunSettings.recon / .preview must be ReconSettings / PreviewSettings")
        if self.generation.elevation_deg != GenerationSettings.elevation_deg:
            raise UserError(
                "RunSettings.generation.elevation_deg is not used: give the elevation as "
                "RunSettings.elevation_deg (None: estimate it)"
            )
        check_max_pixels(self.max_pixels)
        if self.generation.samples < 1:
            raise UserError("--samples must be >= 1")
        self.generation_at(first_elevation(self)).check()
        check_crop_size(self.crop_size)
        check_backend_name(self.background)
        check_gpu_memory(self.gpu_memory_gib)
        if not self.regenerate_threshold_deg >= 0:
            raise UserError(f"the regeneration threshold must be >= 0, got {self.regenerate_threshold_deg}")

    def generation_at(self, elevation_deg: float):
        """The generator's settings (:class:`~sd3d.pipelines.syncdreamer.GenerationSettings`) for
        one elevation."""
        return replace(self.generation, elevation_deg=float(elevation_deg))

    def device_and_dtype(self):
        """``device`` and ``dtype`` resolved on this machine (``auto`` decided here): done once
        by whoever runs the stages, which then take the :class:`torch.device` / :class:`torch.dtype`."""

        device = resolve_device(self.device)
        limit_gpu_memory(device, self.gpu_memory_gib)
        return device, resolve_dtype(self.dtype, device)

    def check(self) -> RunSettings:
        """Also judge what depends on this machine (device, dtype on it, the resolved quality preset)
        and return the settings: done once, by whoever starts a run."""
        device, _ = self.device_and_dtype()
        self.recon.preset(device)
        self.recon.engine(device)
        return self

    def record(self) -> dict[str, Any]:
        """Every value, for ``report.json`` (the generation's unused elevation left out)."""
        out = asdict(self)
        del out["generation"]["elevation_deg"]
        out["recon"]["formats"] = list(self.recon.formats)
        return out


@dataclass(frozen=True)
class RunResult:
    """What ``run_photo`` wrote: the output folder, the report (as written) and the file list."""

    out_dir: Path
    report: dict[str, Any]
    files: tuple[str, ...] = field(default_factory=tuple)


class StageTimer:
    """Wall time per stage, in the order they ran (``with timer(name): ...``; repeats add up)."""

    def __init__(self, seconds: dict[str, float] | None = None) -> None:
        self.seconds: dict[str, float] = dict(seconds or {})

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


def _versions() -> dict[str, str]:

    out = {"python": platform.python_version()}
    for name in ("sd3d", "torch", "numpy", "pillow", "trimesh", "pymcubes", "xatlas", "diffusers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def run_output_names(settings: RunSettings) -> list[str]:
    """The entries ``run_photo`` writes into its output folder for ``settings``."""

    names = ["input.png", "views", *(f"mesh.{fmt}" for fmt in settings.recon.formats), "report.json"]
    if "obj" in settings.recon.formats:
        names += [p.name for p in obj_sidecars("mesh.obj")]
    if settings.preview.format != "none":
        names.append(f"preview.{settings.preview.format}")
    return names


def check_run_output(
    out_dir: str | os.PathLike, overwrite: bool = False, planned: Sequence[str] = ()
) -> Path:
    """Refuse an output path that cannot become (or be used as) our folder, creating nothing."""

    return check_output_folder(out_dir, overwrite, planned)


# --------------------------------------------------------------------------------------------------
# stages: the per-image chain, one function per step, shared by `run_photo` and the Ray engine
# (which runs each one as its own task: GPU steps in the model-holding workers, the others on CPUs)
# --------------------------------------------------------------------------------------------------
ELEVATION_GUESS_DEG = 30.0  # the middle of the model's training range


@dataclass(frozen=True)
class ElevationChoice:
    """The elevation to generate at, its record for the report, and whether the views generated at
    the first guess must be regenerated at it."""

    elevation_deg: float
    record: dict[str, Any]
    regenerate: bool


@dataclass(frozen=True)
class Reconstruction:
    """A trained field and its extracted surface: what the export step needs.

    Extracting the surface (the SDF queried on a grid) belongs with the training on the fast device;
    what follows (UV unwrap, baking, writing, the preview) can run elsewhere: :meth:`to_cpu` makes
    a copy that any process can use without the device or the occupancy grid.
    """

    result: Any  # recon.pipeline.ReconResult
    surface: Any  # recon.mesh.Mesh

    def to_cpu(self) -> Reconstruction:

        field_cpu = self.result.field.to("cpu")
        return Reconstruction(
            replace(self.result, field=field_cpu, grid=None, device=torch.device("cpu")), self.surface
        )


def first_elevation(settings: RunSettings) -> float:
    """Where the first generation runs: the given elevation, else the guess that estimation starts from."""
    return ELEVATION_GUESS_DEG if settings.elevation_deg is None else float(settings.elevation_deg)


def prepare_photo(source, settings: RunSettings, weights_dir: str | os.PathLike | None = None):
    """Read ``source`` and recentre the object (:func:`sd3d.preprocess.prepare_input`)."""

    return prepare_input(
        source,
        crop_size=settings.crop_size,
        background=settings.background,
        max_pixels=settings.max_pixels,
        weights_dir=weights_dir,
    )


def generate_at(model, prepared, settings: RunSettings, elevation_deg: float, dtype, progress=None) -> list:
    """``settings.generation.samples`` view sets (:class:`~sd3d.core.io.ViewSet`) for ``prepared``
    at ``elevation_deg``, computed in ``dtype`` (a :class:`torch.dtype`: see :func:`run_dtype`)."""

    gen = settings.generation_at(elevation_deg)
    return run_generation(model, prepared, gen, dtype=dtype, progress=progress)


def carry_kernel_warmup(first: Sequence, kept: list) -> list:
    """``kept`` with the kernel warm-up the ``first`` generation waited for (a machine's first run,
    :func:`sd3d.pipelines.syncdreamer.wait_for_kernel_warmup`) in its provenance: the report shows
    the kept generation's, and without this a regenerated run's report lost the seconds its first
    generation spent waiting (session 15, `sd3d run` on a fresh GPU machine)."""
    warmup = first[0].provenance.get("kernel_warmup") if first else None
    if warmup is None:
        return kept
    return [replace(views, provenance={**views.provenance, "kernel_warmup": warmup}) for views in kept]


def run_dtype(model, settings: RunSettings):
    """The :class:`torch.dtype` the run's generations compute in on ``model``: ``settings.dtype``
    resolved once (``auto`` follows half-precision weights, see
    :func:`sd3d.pipelines.syncdreamer.compute_dtype_for`), then passed to :func:`generate_at`."""

    return compute_dtype_for(model, settings.dtype)


def choose_elevation(prepared, views: list, settings: RunSettings) -> ElevationChoice:
    """The given elevation, or the one estimated from the views generated at the first guess."""
    if settings.elevation_deg is not None:
        elevation = float(settings.elevation_deg)
        return ElevationChoice(elevation, {"source": "given", "elevation_deg": elevation}, False)

    guess = ELEVATION_GUESS_DEG
    estimate = estimate_elevation(prepared.rgba[..., 3].astype(np.float32) / 255.0, views[0])
    elevation = float(np.clip(estimate.elevation_deg, *cam.TRAINED_ELEVATION_RANGE_DEG))
    regenerate = abs(elevation - guess) > settings.regenerate_threshold_deg
    record = {
        "source": "estimated",
        "elevation_deg": elevation,
        "raw_estimate_deg": estimate.elevation_deg,
        "score": estimate.score,
        "first_guess_deg": guess,
        "regenerated": regenerate,
        "curve": [{"elevation_deg": e, "score": s} for e, s in estimate.curve],
    }
    return ElevationChoice(elevation, record, regenerate)


def rank_samples(views: list) -> tuple[int, list[float]]:
    """The most consistent sample (silhouette agreement with the visual hull) and every score."""
    if len(views) == 1:
        return 0, []

    scores = [silhouette_consistency(v).score for v in views]
    return int(np.argmax(scores)), scores


def reconstruct_views(
    views, settings: RunSettings, device, progress: Progress | None = None, kernel_warmup=None
) -> Reconstruction:
    """Train the field on one view set and extract its surface, on ``device`` (``kernel_warmup``:
    the hash grid's, if :func:`start_recon_warmup` started it earlier)."""

    result = reconstruct(
        views,
        settings.recon,
        seed=settings.generation.seed,
        device=device,
        progress=progress,
        kernel_warmup=kernel_warmup,
    )
    start = time.perf_counter()
    surface = extract_surface(result)
    timings = {**result.timings, "extract": time.perf_counter() - start}
    return Reconstruction(replace(result, timings=timings), surface)


def start_recon_warmup(settings: RunSettings, device: torch.device):
    """The reconstruction's kernel warm-up, started before the generation: its two workers compile
    the hash grid's variants while the GPU generates, instead of while the fit waits for them
    (recon.kernels.warmup: started at the fit, the workers' own imports took ~3 s of it, and a
    fresh machine's `sd3d run` spent 14.2 s reconstructing against 10.0 s with the kernels cached;
    session 16, H100). Two workers, beside the GroupNorm warm-up's eight."""
    device = torch.device(device)
    return start_fit_warmup(settings.recon.preset(device), device, workers=2)


def write_run_folder(
    folder: Path,
    *,
    source,
    settings: RunSettings,
    prepared,
    views: list,
    chosen: int,
    sample_scores: list[float],
    elevation_record: dict[str, Any],
    recon: Reconstruction,
    stages: StageTimer,
    device,
    model_device: str | None = None,
    peak_gpu_memory: Callable[[], int | None] = lambda: None,
    progress: Progress | None = None,
    note: Callable[[str], None] = lambda name: None,
) -> dict[str, Any]:
    """Write a finished run into ``folder`` (a temporary folder the caller commits): ``input.png``,
    ``views/``, the meshes, the preview and, last, ``report.json``; returns the report.

    ``device`` renders the preview; ``model_device`` is the one generation and training ran on,
    for the report, when that was another process's (default: ``device``).
    """

    Image.fromarray(np.ascontiguousarray(prepared.rgba), "RGBA").save(folder / "input.png")
    write_generated(folder / "views", views, prepared.rgba, chosen=chosen if len(views) > 1 else None)
    result = recon.result
    exports = {}
    note("export")
    with stages("export"):
        for fmt in settings.recon.formats:
            exp = export_mesh(
                result,
                folder / f"mesh.{fmt}",
                faces=settings.recon.faces,
                surface=recon.surface,
                progress=progress,
            )
            exports[fmt] = {
                "files": [p.name for p in exp.paths],
                "vertices": exp.num_vertices,
                "faces": exp.num_faces,
                "textured": exp.textured,
                "fallback_reason": exp.fallback_reason,
                "seconds": {k: round(v, 3) for k, v in exp.timings.items()},
            }
    preview_file = None
    if settings.preview.format != "none":
        note("preview")
        with stages("preview"):
            preview_file = write_turntable(
                folder / "mesh.glb",
                folder / f"preview.{settings.preview.format}",
                frames=settings.preview.frames,
                fps=settings.preview.fps,
                device=device,
                progress=progress,
            )
    report = {
        "input": str(source),
        "outputs": sorted(p.name for p in folder.iterdir()) + ["report.json"],
        "settings": settings.record(),
        "seed": settings.generation.seed,
        "elevation": elevation_record,
        "samples": {
            "count": len(views),
            "chosen": chosen,
            "consistency_metric": "silhouette IoU of each view vs the reprojected visual hull (mean)",
            "consistency_scores": sample_scores,
            "folders": ["views" if i == chosen else f"views/sample-{i}" for i in range(len(views))],
        },
        "preprocess": {
            "background": prepared.background,
            "background_note": prepared.background_note,
            "crop_box": list(prepared.crop_box),
            "warnings": list(prepared.warnings),
        },
        "generation": {k: v for k, v in views[chosen].provenance.items() if k != "sample"},
        "reconstruction": {
            "preset": result.preset.name,
            "final_loss": result.final_loss,
            "mask_source": result.mask_source,
            "cuda_graphs": result.graph_captures,
            "seconds": {k: round(v, 3) for k, v in result.timings.items()},
            "train_phases": dict(result.train_phases),
            "kernel_warmup": result.kernel_warmup,  # the hash grid's (recon.kernels.warmup); None: none ran
        },
        "exports": exports,
        "preview": preview_file.name if preview_file else None,
        "stage_seconds": stages.seconds,
        "total_seconds": round(sum(stages.seconds.values()), 3),
        "device": model_device or str(device),
        "peak_gpu_memory_bytes": peak_gpu_memory(),
        "versions": _versions(),
    }
    write_json_atomic(folder / "report.json", report)
    return report


def run_photo(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: RunSettings | None = None,
    *,
    weights: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    model=None,
    progress: Progress | None = None,
    on_stage: Callable[[str], None] | None = None,
    overwrite: bool = False,
    compile_workers=None,
) -> RunResult:
    """Photo -> ``out_dir`` with ``input.png``, ``views/``, ``mesh.glb`` (+ formats), the preview and
    ``report.json``. ``model``: an already loaded SyncDreamer (``sd3d batch`` loads it once);
    ``compile_workers``: the generation kernels' warm-up workers that ``sd3d run`` started before it
    imported PyTorch, for :func:`load_model` (the caller closes them when it ends).

    Every setting, the output folder (:func:`sd3d.core.io.check_output_dir`; ``overwrite`` lets a
    non-empty folder sd3d did not write be used, none of its files replaced) and the weights are
    checked before any work."""

    settings = (settings or RunSettings()).check()
    out_dir = check_run_output(out_dir, overwrite, run_output_names(settings))
    progress = resolve(progress)
    stages = StageTimer()
    note = on_stage or (lambda name: None)
    if model is None:
        weights_file = weights_path(weights, weights_dir)  # fail before any work without weights
    else:
        weights_file = None

    note("preprocess")
    with stages("preprocess"):
        prepared = prepare_photo(source, settings, weights_dir)
    note("load model")
    with stages("load_model"):
        if model is None:
            device, dtype = settings.device_and_dtype()
            model = load_model(weights_file, None, device, dtype=dtype, compile_workers=compile_workers)
    recon_warmup = start_recon_warmup(settings, model.device)
    generated = generate_run_views(model, prepared, settings, stages=stages, progress=progress, note=note)
    return finish_run(
        out_dir,
        source=source,
        settings=settings,
        prepared=prepared,
        generated=generated,
        stages=stages,
        device=model.device,
        progress=progress,
        note=note,
        overwrite=overwrite,
        recon_warmup=recon_warmup,
    )


@dataclass(frozen=True)
class RunViews:
    """The generation half of a run: every sample's view sets, the one kept, the consistency
    scores that chose it and how the elevation was chosen."""

    views: tuple  # ViewSet per sample
    chosen: int
    sample_scores: tuple[float, ...]
    elevation: ElevationChoice

    @property
    def best(self):
        return self.views[self.chosen]


def generate_run_views(
    model,
    prepared,
    settings: RunSettings,
    *,
    stages: StageTimer,
    progress: Progress | None = None,
    note: Callable[[str], None] = lambda name: None,
) -> RunViews:
    """The views of :func:`run_photo`: generate at the first elevation, estimate it unless given,
    regenerate once when the estimate is off, and keep the most consistent sample.

    Its own function (not inlined in :func:`run_photo`) so that callers that show the views before
    reconstructing (the web app) run the same chain; :func:`finish_run` is the other half.
    The GPU's peak-memory count starts here, for the report."""

    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
    dtype = run_dtype(model, settings)
    first = first_elevation(settings)
    note("generate" if settings.elevation_deg is not None else f"generate (elevation guess {first:.0f} deg)")
    with stages("generate"):
        views = generate_at(model, prepared, settings, first, dtype, progress)
    if settings.elevation_deg is None:
        note("estimate elevation")
    with stages("elevation") if settings.elevation_deg is None else nullcontext():
        elevation = choose_elevation(prepared, views, settings)
    if elevation.regenerate:
        note(f"generate (elevation {elevation.elevation_deg:.1f} deg)")
        with stages("generate"):
            regenerated = generate_at(model, prepared, settings, elevation.elevation_deg, dtype, progress)
        views = carry_kernel_warmup(views, regenerated)

    if len(views) > 1:
        note("rank samples")
    with stages("rank_samples") if len(views) > 1 else nullcontext():
        chosen, sample_scores = rank_samples(views)
    return RunViews(tuple(views), chosen, tuple(sample_scores), elevation)


def finish_run(
    out_dir: str | os.PathLike,
    *,
    source,
    settings: RunSettings,
    prepared,
    generated: RunViews,
    stages: StageTimer,
    device,
    progress: Progress | None = None,
    note: Callable[[str], None] = lambda name: None,
    overwrite: bool = False,
    recon_warmup=None,
) -> RunResult:
    """The rest of :func:`run_photo` after :func:`generate_run_views`: reconstruct the kept views
    on ``device`` and write the whole run folder, replacing ``out_dir`` only when all succeeded
    (``recon_warmup``: :func:`start_recon_warmup`'s, when the caller started it).

    ``stages`` is the run's timer, also when generation happened in an earlier call (the web app
    generates and reconstructs in two requests), so ``report.json`` times every stage. ``settings``
    were checked (:meth:`RunSettings.check`) when the run started."""

    out_dir = check_run_output(out_dir, overwrite, run_output_names(settings))
    progress = resolve(progress)
    device = torch.device(device)
    note("reconstruct")
    with stages("reconstruct"):
        recon = reconstruct_views(generated.best, settings, device, progress, kernel_warmup=recon_warmup)

    def peak() -> int | None:
        return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    # report.json moves in last: its presence means the run finished (make batch relies on it)
    with atomic_dir(out_dir, overwrite=overwrite, command="run", last=("report.json",)) as tmp:
        report = write_run_folder(
            tmp,
            source=source,
            settings=settings,
            prepared=prepared,
            views=list(generated.views),
            chosen=generated.chosen,
            sample_scores=list(generated.sample_scores),
            elevation_record=generated.elevation.record,
            recon=recon,
            stages=stages,
            device=device,
            peak_gpu_memory=peak,
            progress=progress,
            note=note,
        )
    return RunResult(out_dir=out_dir, report=report, files=tuple(report["outputs"]))


def turntable_cameras(frames: int, elevation_deg: float = 20.0, size: int = 256):
    """Evenly spaced cameras on an orbit around the object (degrees)."""

    return [
        cam.orbit_camera(elevation_deg, 360.0 * i / frames, cam.TARGET_DISTANCE, size) for i in range(frames)
    ]


def write_turntable(
    mesh_path: Path,
    out_path: Path,
    *,
    frames: int = 72,
    fps: int = 24,
    size: int = 256,
    device="cpu",
    progress: Progress | None = None,
) -> Path:
    """Render ``mesh_path`` (textured) on a turntable and write an MP4 (H.264) or a GIF."""

    mesh = load_mesh(mesh_path, normalize=False)
    renders = render_mesh(
        mesh, turntable_cameras(frames, size=size), supersample=2, device=device, progress=progress
    )
    images = [np.clip(np.rint(im * 255.0), 0, 255).astype(np.uint8) for im in renders.on_white()]
    if out_path.suffix == ".gif":
        pil = [Image.fromarray(im) for im in images]
        pil[0].save(out_path, save_all=True, append_images=pil[1:], duration=int(1000 / fps), loop=0)
    else:
        _write_mp4(out_path, images, fps, size)
    return out_path


_MIN_FREE_BYTES = 1 << 20


def _write_mp4(out_path: Path, images: list[np.ndarray], fps: int, size: int) -> None:
    """H.264 through imageio-ffmpeg, checked by counting the frames written (ffmpeg failing at the
    end exits quietly). ffmpeg dying on a full disk surfaces as a broken pipe or a short file with
    no errno, so the free space decides whether that is the user's disk or a bug (kept as is)."""

    import imageio_ffmpeg

    writer = imageio_ffmpeg.write_frames(
        str(out_path), (size, size), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=7
    )
    try:
        writer.send(None)
        for im in images:
            writer.send(np.ascontiguousarray(im))
        writer.close()
        frames, _ = imageio_ffmpeg.count_frames_and_secs(str(out_path))
        if frames != len(images):
            raise RuntimeError(f"ffmpeg wrote {frames} of {len(images)} frames to {out_path}")
    except (OSError, RuntimeError) as exc:
        if shutil.disk_usage(out_path.parent).free < _MIN_FREE_BYTES:
            raise OutputPathError(f"cannot write {out_path}: No space left on device") from exc
        raise
    finally:
        writer.close()  # stops ffmpeg on every way out, so it never writes after the cleanup


# --------------------------------------------------------------------------------------------------
# batch
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchItem:
    """One image's outcome: ``status`` is 'done', 'skipped' (up to date), 'failed', 'not run' (the
    batch stopped first) or, with the Ray engine, 'interrupted' (Ctrl-C). ``error`` is the one-line
    reason; ``error_kind`` says whose fault it was ('input': the image's own, a
    :class:`~sd3d.core.errors.UserError`; 'error': any other exception; 'system': the Ray engine's
    workers kept dying; 'output': the Ray engine may not write its result folder); ``image_mtime`` lets the Ray engine skip an unchanged bad image on a re-run;
    ``detail`` is the traceback of an unexpected (non-user) error in the local engine.
    """

    image: str
    status: str
    out_dir: str
    seconds: float = 0.0
    error: str | None = None
    error_kind: str | None = None
    image_mtime: float | None = None
    detail: str | None = None


class BatchAborted(UserError):
    """A failure that dooms every image (the model or a backend's weights cannot load, a missing
    extra): the batch stops early; ``items`` is the summary so far (the rest 'not run')."""

    def __init__(self, message: str, items: list[BatchItem]) -> None:
        super().__init__(message)
        self.items = items


# Failures that are not about one image: going on would fail every remaining image the same way.
_DOOMS_EVERY_IMAGE = (WeightsError, MissingDependencyError)
_BATCH_RESERVED = ("batch.json", "logs")  # names the batch itself uses in its output folder


def list_images(in_dir: Path) -> list[Path]:
    if not in_dir.is_dir():
        raise UserError(f"input folder not found: {in_dir}")
    return sorted(p for p in in_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def batch_output_names(images: Sequence[str | os.PathLike]) -> list[str]:
    """The output folder name of each image: its stem (``a.png`` -> ``a``), or its whole file name
    when another image has the same stem (``a.jpg`` and ``a.png`` -> ``a.jpg``, ``a.png``) or the
    stem is a name the batch uses itself, so distinct inputs never share (and overwrite) an output.
    Names are compared case-insensitively, as a case-insensitive file system would; a name still
    taken (``a.png`` beside ``a.png.jpg``) gets ``~2``, ``~3``, .... Both batch engines and
    ``make batch`` (``scripts/batch_summary.py --plan``) use these names."""
    paths = [Path(p) for p in images]
    stems = Counter(p.stem.casefold() for p in paths)
    reserved = {n.casefold() for n in _BATCH_RESERVED}
    names = [
        p.stem if stems[p.stem.casefold()] == 1 and p.stem.casefold() not in reserved else p.name
        for p in paths
    ]
    seen: Counter[str] = Counter()
    unique = []
    for name in names:
        seen[name.casefold()] += 1
        count = seen[name.casefold()]
        unique.append(name if count == 1 else f"{name}~{count}")
    return unique


def is_up_to_date(image: Path, out_dir: Path) -> bool:
    """A finished run (``report.json`` exists) newer than its input image."""
    report = out_dir / "report.json"
    return report.exists() and report.stat().st_mtime >= image.stat().st_mtime


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_batch(
    in_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: RunSettings | None = None,
    *,
    weights: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
    overwrite: bool = False,
) -> list[BatchItem]:
    """``sd3d run`` for every image of ``in_dir`` into ``out_dir/<name>/`` (:func:`batch_output_names`),
    loading the model once.

    Resumable: images whose report is newer than the image are skipped. A failing image, whatever
    the error, is recorded (``out_dir/batch.json``, rewritten atomically after every image) and
    the others go on; a failure that dooms every image raises :class:`BatchAborted` with the
    summary. ``overwrite`` applies to ``out_dir`` and to each image's folder (see ``run_photo``).
    """

    settings = (settings or RunSettings()).check()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    images = list_images(in_dir)
    if not images:
        raise UserError(f"no images (jpg, png, webp) in {in_dir}")
    check_output_dir(out_dir, overwrite=overwrite, planned=["batch.json"])
    weights_file = weights_path(weights, weights_dir)
    targets = [out_dir / name for name in batch_output_names(images)]
    todo = {img for img, target in zip(images, targets, strict=True) if not is_up_to_date(img, target)}
    items: list[BatchItem] = []

    def record() -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        mark_output(out_dir, ["batch.json"], "batch")
        summary = _with_rest(items, images, targets)
        write_json_atomic(
            out_dir / "batch.json", {"input": str(in_dir), "items": [asdict(i) for i in summary]}
        )

    model = None
    if todo:
        try:
            device, dtype = settings.device_and_dtype()
            model = load_model(weights_file, None, device, dtype=dtype)
        except UserError as exc:
            record()
            raise BatchAborted(str(exc), _with_rest(items, images, targets)) from exc
    progress = resolve(progress)
    try:
        with progress.task("batch", len(images)) as advance:
            for img, target in zip(images, targets, strict=True):
                if img not in todo:
                    items.append(BatchItem(img.name, "skipped", str(target)))
                else:
                    start = time.perf_counter()
                    error = detail = None
                    try:
                        run_photo(
                            img, target, settings, weights_dir=weights_dir, model=model, overwrite=overwrite
                        )
                    except _DOOMS_EVERY_IMAGE as exc:
                        items.append(_failed(img, target, start, str(exc), "input"))
                        record()
                        raise BatchAborted(
                            f"{exc} (batch stopped)", _with_rest(items, images, targets)
                        ) from exc
                    except UserError as exc:
                        error, kind = str(exc), "input"
                    except Exception as exc:  # noqa: BLE001 - one image's bug must not stop the others
                        error, kind, detail = _one_line(exc), "error", traceback.format_exc()
                    if error is None:
                        items.append(
                            BatchItem(img.name, "done", str(target), round(time.perf_counter() - start, 2))
                        )
                    else:
                        items.append(_failed(img, target, start, error, kind, detail))
                record()
                advance(1, info=f"{img.name}: {items[-1].status}")
    except KeyboardInterrupt:
        record()  # what finished stays recorded; the rest reads 'not run'
        raise
    return items


def _failed(
    img: Path, target: Path, start: float, error: str, kind: str, detail: str | None = None
) -> BatchItem:
    return BatchItem(
        img.name,
        "failed",
        str(target),
        round(time.perf_counter() - start, 2),
        error,
        error_kind=kind,
        detail=detail,
    )


def _with_rest(items: list[BatchItem], images: list[Path], targets: list[Path]) -> list[BatchItem]:
    """``items`` followed by a 'not run' entry for every image not in them."""
    seen = {it.image for it in items}
    return items + [
        BatchItem(img.name, "not run", str(t))
        for img, t in zip(images, targets, strict=True)
        if img.name not in seen
    ]
