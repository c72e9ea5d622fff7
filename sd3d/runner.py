"""The one-shot pipeline behind ``sd3d run`` and ``sd3d batch``.

photo -> prepared input -> elevation (estimated unless given) -> 16 views (best of ``samples`` by
silhouette consistency) -> NeuS reconstruction -> textured mesh (+ other formats) -> turntable
preview -> ``report.json``.

Everything is written into a temporary folder that replaces the output folder only when every stage
succeeded, so a failure or Ctrl-C leaves no half-written result, and ``report.json`` existing means
the run finished (``make batch`` relies on that to skip finished images). The weights are checked
before any work, so a machine without the checkpoint fails at once with the one-line instruction.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sd3d.errors import UserError
from sd3d.progress import Progress, resolve

if TYPE_CHECKING:
    from sd3d.io import ViewSet
    from sd3d.preprocess import PreparedInput

PREVIEW_FORMATS = ("mp4", "gif", "none")
MESH_FORMATS = ("glb", "obj", "ply")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class RunSettings:
    """Every option of the chained stages (defaults: the official generator, the standard preset).

    ``elevation_deg=None`` estimates the input elevation: generate at 30 deg (the middle of the
    model's training range), estimate from those views, and regenerate once at the estimate when it
    differs by more than ``regenerate_threshold_deg``.
    """

    elevation_deg: float | None = None
    crop_size: int = 200
    background: str = "auto"
    steps: int = 50
    cfg: float = 2.0
    eta: float = 1.0
    seed: int = 6033
    samples: int = 1
    sampler: str = "ddim"
    batch_view_num: int | None = None
    quality: str = "auto"
    recon_steps: int | None = None
    faces: int | None = None
    formats: tuple[str, ...] = ("glb",)
    preview: str = "mp4"
    preview_frames: int = 72
    preview_fps: int = 24
    device: str = "auto"
    dtype: str = "auto"
    regenerate_threshold_deg: float = 2.5

    def check(self) -> RunSettings:
        bad = [f for f in self.formats if f not in MESH_FORMATS]
        if bad:
            raise UserError(f"unknown mesh format {bad[0]!r}: choose from {', '.join(MESH_FORMATS)}")
        if self.preview not in PREVIEW_FORMATS:
            raise UserError(f"unknown preview {self.preview!r}: choose mp4, gif or none")
        if self.samples < 1:
            raise UserError("--samples must be >= 1")
        if self.preview_frames < 1 or self.preview_fps < 1:
            raise UserError("preview frames and fps must be >= 1")
        formats = tuple(dict.fromkeys(("glb", *self.formats)))  # the GLB is always written
        return replace(self, formats=formats)


@dataclass(frozen=True)
class RunResult:
    """What ``run_photo`` wrote: the output folder, the report (as written) and the file list."""

    out_dir: Path
    report: dict[str, Any]
    files: tuple[str, ...] = field(default_factory=tuple)


class StageTimer:
    """Wall time per stage, in the order they ran (``report.json``'s ``stage_seconds``).

    One timer spans a whole run, also when its stages are called separately (the web app generates
    and reconstructs in two requests)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


@dataclass(frozen=True)
class GeneratedViews:
    """The generation stage of a run: every sample's views, the one kept, and how the elevation
    was chosen (the ``elevation`` record of ``report.json``, with the score curve when estimated)."""

    views: tuple[ViewSet, ...]
    chosen: int
    sample_scores: tuple[float, ...]
    elevation: dict[str, Any]

    @property
    def best(self) -> ViewSet:
        return self.views[self.chosen]


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("sd3d", "torch", "numpy", "pillow", "trimesh", "pymcubes", "xatlas", "diffusers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def check_run_output(out_dir: str | os.PathLike) -> Path:
    """Refuse an output path that cannot become a folder, creating nothing."""
    from sd3d.pipeline import check_output_folder

    return check_output_folder(out_dir)


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
) -> RunResult:
    """Photo -> ``out_dir`` with ``input.png``, ``views/``, ``mesh.glb`` (+ formats), the preview and
    ``report.json``. ``model``: an already loaded SyncDreamer (``sd3d batch`` loads it once).

    The two halves, :func:`generate_for_run` and :func:`write_run`, are public for callers that
    show the views before reconstructing (the web app)."""
    from sd3d.pipeline import load_model, weights_path
    from sd3d.preprocess import prepare_input

    settings = (settings or RunSettings()).check()
    out_dir = check_run_output(out_dir)
    stages = StageTimer()
    note = on_stage or (lambda name: None)
    if model is None:
        weights_file = weights_path(weights, weights_dir)  # fail before any work without weights
    else:
        weights_file = None

    note("preprocess")
    with stages("preprocess"):
        prepared = prepare_input(
            source, crop_size=settings.crop_size, background=settings.background, weights_dir=weights_dir
        )
    note("load model")
    with stages("load_model"):
        if model is None:
            model = load_model(weights_file, None, settings.device, dtype=settings.dtype)
    generated = generate_for_run(model, prepared, settings, progress=progress, on_stage=note, stages=stages)
    return write_run(
        out_dir,
        prepared,
        generated,
        settings,
        source=source,
        device=model.device,
        progress=progress,
        on_stage=note,
        stages=stages,
    )


def generate_for_run(
    model,
    prepared: PreparedInput,
    settings: RunSettings,
    *,
    progress: Progress | None = None,
    on_stage: Callable[[str], None] | None = None,
    stages: StageTimer | None = None,
) -> GeneratedViews:
    """The generation stage of :func:`run_photo`: the 16 views at the given or estimated elevation
    (generate at 30 deg, estimate, regenerate once when the estimate differs by more than
    ``settings.regenerate_threshold_deg``), and the most consistent of ``settings.samples`` sets."""
    import torch

    from sd3d.pipeline import GenerationSettings, run_generation

    settings = settings.check()
    progress = resolve(progress)
    stages = stages if stages is not None else StageTimer()
    note = on_stage or (lambda name: None)
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)

    def generate(elevation: float) -> list:
        gen = GenerationSettings(
            float(elevation),
            settings.steps,
            settings.cfg,
            settings.eta,
            settings.seed,
            settings.samples,
            settings.batch_view_num,
            settings.sampler,
        )
        return run_generation(model, prepared, gen, dtype=settings.dtype, progress=progress)

    elevation_record: dict[str, Any]
    if settings.elevation_deg is None:
        from sd3d.elevation import estimate_elevation

        guess = 30.0
        note("generate (elevation guess 30 deg)")
        with stages("generate"):
            views = generate(guess)
        note("estimate elevation")
        with stages("elevation"):
            estimate = estimate_elevation(prepared.rgba[..., 3].astype(np.float32) / 255.0, views[0])
        elevation = float(np.clip(estimate.elevation_deg, -10.0, 40.0))  # the model's trained range
        regenerated = abs(elevation - guess) > settings.regenerate_threshold_deg
        if regenerated:
            note(f"generate (elevation {elevation:.1f} deg)")
            with stages("generate"):
                views = generate(elevation)
        elevation_record = {
            "source": "estimated",
            "elevation_deg": elevation,
            "raw_estimate_deg": estimate.elevation_deg,
            "score": estimate.score,
            "first_guess_deg": guess,
            "regenerated": regenerated,
            "curve": [{"elevation_deg": e, "score": s} for e, s in estimate.curve],
        }
    else:
        elevation = float(settings.elevation_deg)
        note("generate")
        with stages("generate"):
            views = generate(elevation)
        elevation_record = {"source": "given", "elevation_deg": elevation}

    chosen = 0
    sample_scores: list[float] = []
    if len(views) > 1:
        from sd3d.consistency import silhouette_consistency

        note("rank samples")
        with stages("rank_samples"):
            sample_scores = [silhouette_consistency(v).score for v in views]
        chosen = int(np.argmax(sample_scores))
    return GeneratedViews(tuple(views), chosen, tuple(sample_scores), elevation_record)


def write_run(
    out_dir: str | os.PathLike,
    prepared: PreparedInput,
    generated: GeneratedViews,
    settings: RunSettings,
    *,
    source: str | os.PathLike,
    device,
    progress: Progress | None = None,
    on_stage: Callable[[str], None] | None = None,
    stages: StageTimer | None = None,
) -> RunResult:
    """The rest of :func:`run_photo` after generation: reconstruct the kept views, export every
    format, render the preview and write ``report.json``, all into ``out_dir`` atomically."""
    import torch

    from recon.pipeline import export_mesh, reconstruct
    from sd3d.io import atomic_dir, write_json_atomic
    from sd3d.pipeline import write_generated

    settings = settings.check()
    out_dir = check_run_output(out_dir)
    progress = resolve(progress)
    stages = stages if stages is not None else StageTimer()
    note = on_stage or (lambda name: None)
    device = torch.device(device)
    views, chosen = list(generated.views), generated.chosen
    with atomic_dir(out_dir) as tmp:
        from PIL import Image

        Image.fromarray(np.ascontiguousarray(prepared.rgba), "RGBA").save(tmp / "input.png")
        write_generated(tmp / "views", views, prepared.rgba)
        note("reconstruct")
        with stages("reconstruct"):
            recon = reconstruct(
                views[chosen],
                quality=settings.quality,
                steps=settings.recon_steps,
                seed=settings.seed,
                device=device,
                progress=progress,
            )
        exports = {}
        note("export")
        with stages("export"):
            for fmt in settings.formats:
                exp = export_mesh(recon, tmp / f"mesh.{fmt}", faces=settings.faces)
                exports[fmt] = {
                    "files": [p.name for p in exp.paths],
                    "vertices": exp.num_vertices,
                    "faces": exp.num_faces,
                    "textured": exp.textured,
                    "fallback_reason": exp.fallback_reason,
                    "seconds": {k: round(v, 3) for k, v in exp.timings.items()},
                }
        preview_file = None
        if settings.preview != "none":
            note("preview")
            with stages("preview"):
                preview_file = write_turntable(
                    tmp / "mesh.glb",
                    tmp / f"preview.{settings.preview}",
                    frames=settings.preview_frames,
                    fps=settings.preview_fps,
                    device=device,
                    progress=progress,
                )
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        report = {
            "input": str(source),
            "outputs": sorted(p.name for p in tmp.iterdir()) + ["report.json"],
            "settings": {**asdict(settings), "formats": list(settings.formats)},
            "seed": settings.seed,
            "elevation": generated.elevation,
            "samples": {
                "count": len(views),
                "chosen": chosen,
                "consistency_metric": "silhouette IoU of each view vs the reprojected visual hull (mean)",
                "consistency_scores": list(generated.sample_scores),
            },
            "preprocess": {"background": prepared.background, "crop_box": list(prepared.crop_box)},
            "generation": {k: v for k, v in views[chosen].provenance.items() if k != "sample"},
            "reconstruction": {
                "preset": recon.preset.name,
                "final_loss": recon.final_loss,
                "mask_source": recon.mask_source,
                "seconds": {k: round(v, 3) for k, v in recon.timings.items()},
            },
            "exports": exports,
            "preview": preview_file.name if preview_file else None,
            "stage_seconds": stages.seconds,
            "total_seconds": round(sum(stages.seconds.values()), 3),
            "device": str(device),
            "peak_gpu_memory_bytes": peak,
            "versions": _versions(),
        }
        write_json_atomic(tmp / "report.json", report)
    return RunResult(out_dir=out_dir, report=report, files=tuple(report["outputs"]))


def turntable_cameras(frames: int, elevation_deg: float = 20.0, size: int = 256):
    """Evenly spaced cameras on an orbit around the object (degrees)."""
    from sd3d import cameras as cam

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
    from recon.raster import load_mesh, render_mesh

    mesh = load_mesh(mesh_path, normalize=False)
    renders = render_mesh(
        mesh, turntable_cameras(frames, size=size), supersample=2, device=device, progress=progress
    )
    images = [np.clip(np.rint(im * 255.0), 0, 255).astype(np.uint8) for im in renders.on_white()]
    if out_path.suffix == ".gif":
        from PIL import Image

        pil = [Image.fromarray(im) for im in images]
        pil[0].save(out_path, save_all=True, append_images=pil[1:], duration=int(1000 / fps), loop=0)
    else:
        import imageio_ffmpeg

        writer = imageio_ffmpeg.write_frames(
            str(out_path), (size, size), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=7
        )
        writer.send(None)
        for im in images:
            writer.send(np.ascontiguousarray(im))
        writer.close()
    return out_path


# --------------------------------------------------------------------------------------------------
# batch
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchItem:
    """One image's outcome: ``status`` is 'done', 'skipped' (up to date) or 'failed'."""

    image: str
    status: str
    out_dir: str
    seconds: float = 0.0
    error: str | None = None


def list_images(in_dir: Path) -> list[Path]:
    if not in_dir.is_dir():
        raise UserError(f"input folder not found: {in_dir}")
    return sorted(p for p in in_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def is_up_to_date(image: Path, out_dir: Path) -> bool:
    """A finished run (``report.json`` exists) newer than its input image."""
    report = out_dir / "report.json"
    return report.exists() and report.stat().st_mtime >= image.stat().st_mtime


def run_batch(
    in_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: RunSettings | None = None,
    *,
    weights: str | os.PathLike | None = None,
    weights_dir: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> list[BatchItem]:
    """``sd3d run`` for every image of ``in_dir`` into ``out_dir/<stem>/``, loading the model once.

    Resumable: images whose report is newer than the image are skipped. A failing image is recorded
    (``out_dir/batch.json``, rewritten atomically after every image) and the others go on.
    """
    from sd3d.io import write_json_atomic
    from sd3d.pipeline import load_model, weights_path

    settings = (settings or RunSettings()).check()
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    images = list_images(in_dir)
    if not images:
        raise UserError(f"no images (jpg, png, webp) in {in_dir}")
    check_run_output(out_dir)
    weights_file = weights_path(weights, weights_dir)
    todo = [img for img in images if not is_up_to_date(img, out_dir / img.stem)]
    model = load_model(weights_file, None, settings.device, dtype=settings.dtype) if todo else None
    items: list[BatchItem] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = resolve(progress)
    with progress.task("batch", len(images)) as advance:
        for img in images:
            target = out_dir / img.stem
            if img not in todo:
                items.append(BatchItem(img.name, "skipped", str(target)))
            else:
                start = time.perf_counter()
                try:
                    run_photo(img, target, settings, weights_dir=weights_dir, model=model)
                    items.append(
                        BatchItem(img.name, "done", str(target), round(time.perf_counter() - start, 2))
                    )
                except UserError as exc:
                    items.append(
                        BatchItem(
                            img.name, "failed", str(target), round(time.perf_counter() - start, 2), str(exc)
                        )
                    )
            write_json_atomic(
                out_dir / "batch.json", {"input": str(in_dir), "items": [asdict(i) for i in items]}
            )
            advance(1, info=f"{img.name}: {items[-1].status}")
    return items
