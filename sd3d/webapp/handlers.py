"""What the web app does, without Gradio: one :class:`WebApp` per server.

Every step calls the library the CLI calls (``sd3d run`` = :func:`sd3d.workflows.run.generate_run_views`
+ :func:`sd3d.workflows.run.finish_run`; ``sd3d reconstruct`` = :func:`recon.pipeline.reconstruct` +
:func:`recon.pipeline.export_mesh`), and every control is a CLI option with the CLI's name and the
library's default, so :func:`run_command` / :func:`reconstruct_command` can print the equivalent
command line. Problems users cause are :class:`~sd3d.core.errors.UserError`\\ s with one line, which the
page shows as is.

State: the loaded model is cached on the :class:`WebApp` (loaded on the first generation, kept for
the server's life). Each browser session gets a :class:`Session` with its own folder under the
app's work folder; it is removed when the page is closed (:meth:`WebApp.end_session`), when the
session has been idle for ``ServeOptions.session_idle_s``, and with the whole work folder when the
server stops (:meth:`WebApp.close`).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import operator
import os
import re
import shlex
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recon.pipeline import export_mesh, reconstruct
from recon.presets import ReconSettings
from sd3d.core import defaults
from sd3d.core.device import resolve_device
from sd3d.core.errors import InputImageError, UserError, ViewsFolderError, WeightsError
from sd3d.core.io import VIEW_FILES, read_image, read_views
from sd3d.core.progress import Progress
from sd3d.pipelines.syncdreamer import GenerationSettings, load_model, weights_path, write_generated
from sd3d.workflows.run import (
    MESH_FORMATS,
    PreviewSettings,
    RunSettings,
    StageTimer,
    finish_run,
    generate_run_views,
    prepare_photo,
)

if TYPE_CHECKING:
    from sd3d.preprocess import PreparedInput
    from sd3d.workflows.run import RunViews, StageTimer

# A progress callback: (fraction done in [0, 1] or None when unknown, description).
Report = Callable[[float | None, str], None]

VIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
EXTRA_FORMATS = tuple(f for f in MESH_FORMATS if f != "glb")  # the GLB is always written
ELEVATION_AUTO = "auto"

# The photo tab's controls as `sd3d run` options: control name -> (flag, where the value sits in
# RunSettings). Tests check that each option exists with the same default. Device and dtype belong
# to the server (`sd3d serve --device`).
_RUN_CONTROLS = {
    "elevation_deg": ("--elevation", "elevation_deg"),
    "crop_size": ("--crop-size", "crop_size"),
    "background": ("--background", "background"),
    "steps": ("--steps", "generation.steps"),
    "cfg": ("--cfg", "generation.cfg"),
    "eta": ("--eta", "generation.eta"),
    "seed": ("--seed", "generation.seed"),
    "samples": ("--samples", "generation.samples"),
    "sampler": ("--sampler", "generation.sampler"),
    "quality": ("--quality", "recon.quality"),
    "recon_steps": ("--recon-steps", "recon.steps"),
    "faces": ("--faces", "recon.faces"),
    "formats": ("--formats", "recon.formats"),
    "preview": ("--preview", "preview.format"),
    "preview_frames": ("--preview-frames", "preview.frames"),
}
RUN_OPTIONS = {name: flag for name, (flag, _) in _RUN_CONTROLS.items()}


def run_option(settings: RunSettings, name: str) -> Any:
    """The value of ``sd3d run``'s option ``name`` (a key of :data:`RUN_OPTIONS`) in ``settings``,
    wherever it is nested."""
    return operator.attrgetter(_RUN_CONTROLS[name][1])(settings)


# The reconstruction half of those (nested settings of RunSettings): what the photo tab's
# "Reconstruct" step may change after the views were generated.
RECON_FIELDS = ("recon", "preview")

# The views tab's controls as `sd3d reconstruct` options, in the command line's order: control name
# -> flag. The seed is not part of ReconSettings: the library takes it beside them.
RECONSTRUCT_OPTIONS = {"quality": "--quality", "steps": "--steps", "seed": "--seed", "faces": "--faces"}


def extra_formats(recon: ReconSettings) -> list[str]:
    """The formats of ``recon`` besides the GLB, which is always written (the pages' checkboxes)."""
    return [f for f in recon.formats if f != "glb"]


@dataclass(frozen=True)
class ServeOptions:
    """Server-wide settings (``sd3d serve`` options).

    ``weights``: a SyncDreamer checkpoint file (else the registered one in ``weights_dir``).
    ``work_dir``: where session folders live (default: a new temporary folder, removed on close).
    ``max_pixels``: the upload size limit of ``sd3d run --max-pixels`` (``None``: the library's).
    """

    device: str = "auto"
    dtype: str = "auto"
    weights: Path | None = None
    weights_dir: Path | None = None
    work_dir: Path | None = None
    max_pixels: int | None = None
    session_idle_s: float = 6 * 3600.0


# --------------------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------------------
class ReportingProgress(Progress):
    """A :class:`~sd3d.core.progress.Progress` that reports every step to a callback (the page's bar)
    instead of drawing in a terminal."""

    def __init__(self, report: Report) -> None:
        super().__init__(enabled=True)
        self._report = report

    @contextlib.contextmanager
    def task(self, description: str, total: int | None):
        done = 0
        self._report(0.0 if total else None, description)

        def advance(n: int = 1, info: str | None = None) -> None:
            nonlocal done
            done += n
            shown = f"{description} {done}/{total}" if total else description
            self._report(min(done / total, 1.0) if total else None, f"{shown} {info or ''}".strip())

        yield advance


def _progress(report: Report | None) -> Progress:
    return ReportingProgress(report) if report is not None else Progress(enabled=False)


# --------------------------------------------------------------------------------------------------
# command lines
# --------------------------------------------------------------------------------------------------
def _arg(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return shlex.quote(str(value))


def _server_args(options: ServeOptions) -> list[str]:
    parts = []
    if options.device != "auto":
        parts += ["--device", _arg(options.device)]
    if options.dtype != "auto":
        parts += ["--dtype", _arg(options.dtype)]
    if options.weights is not None:
        parts += ["--weights", _arg(options.weights)]
    if options.weights_dir is not None:
        parts += ["--weights-dir", _arg(options.weights_dir)]
    if options.max_pixels is not None:
        parts += ["--max-pixels", _arg(options.max_pixels)]
    return parts


def _changed(flags: dict[str, str], chosen: dict[str, Any], start: dict[str, Any]) -> list[str]:
    """``flag value`` for every option (name -> flag) whose chosen value is not its default."""
    parts = []
    for name, flag in flags.items():
        if chosen[name] != start[name]:
            parts += [flag, _arg(chosen[name])]
    return parts


def run_command(settings: RunSettings, photo_name: str, options: ServeOptions) -> str:
    """The ``sd3d run`` command line that does what the photo tab does with ``settings``
    (options at their default are left out)."""

    def values(s: RunSettings) -> dict[str, Any]:
        out = {name: run_option(s, name) for name in RUN_OPTIONS}
        out["formats"] = ",".join(extra_formats(s.recon))  # the extras only: the GLB is always written
        return out

    parts = ["sd3d", "run", _arg(photo_name or "photo.png"), "-o", "out/"]
    parts += _changed(RUN_OPTIONS, values(settings), values(RunSettings()))
    return " ".join(parts + _server_args(options))


def reconstruct_command(
    recon: ReconSettings, seed: int, options: ServeOptions, source: str = "views/"
) -> str:
    """The ``sd3d reconstruct`` command line(s) of the views tab: one per mesh format."""
    opts = _changed(
        RECONSTRUCT_OPTIONS, {**vars(recon), "seed": seed}, {**vars(ReconSettings()), "seed": defaults.SEED}
    )
    server = ["--device", _arg(options.device)] if options.device != "auto" else []
    return "\n".join(
        " ".join(["sd3d", "reconstruct", _arg(source), "-o", f"mesh.{fmt}", *opts, *server])
        for fmt in _with_glb(recon.formats)
    )


# --------------------------------------------------------------------------------------------------
# control values -> settings
# --------------------------------------------------------------------------------------------------
# Impossible values are the settings dataclasses' to refuse (at construction, with the one-line
# UserError the CLI prints); here the browser's loose values become the types they take.
def _as_int(value: Any, option: str, *, optional: bool = False, minimum: int | None = None) -> int | None:
    """A number field's value (float, int, text or blank) -> int, or a one-line error naming the option.

    ``optional`` options (``--steps``/``--recon-steps``/``--faces``, whose default is "the
    preset's" or "all") take blank or 0 as that default: a number field in the browser cannot
    stay blank, and 0 is no valid value for any of them. ``minimum``: for a value no settings
    dataclass judges under this option's name."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if optional:
            return None
        raise UserError(f"{option} needs a value")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{option} must be an integer, got {value!r}") from None
    if not number.is_integer():
        raise UserError(f"{option} must be an integer, got {value!r}")
    if optional and number == 0:
        return None
    if minimum is not None and number < minimum:
        raise UserError(f"{option} must be at least {minimum}, got {int(number)}")
    return int(number)


def _as_float(value: Any, option: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"{option} must be a number, got {value!r}") from None


def _with_glb(formats: Sequence[str]) -> tuple[str, ...]:
    """``formats`` with the GLB (always written) first, each once."""
    return tuple(dict.fromkeys(("glb", *formats)))


def _formats(values: Sequence[str] | None) -> tuple[str, ...]:
    """The ticked extra formats -> :attr:`ReconSettings.formats`: the GLB first, then the known ones in
    :data:`MESH_FORMATS` order; an unknown name is kept for ReconSettings to refuse."""
    chosen = _with_glb([str(v).strip().lower() for v in values or ()])
    return (*(f for f in MESH_FORMATS if f in chosen), *(f for f in chosen if f not in MESH_FORMATS))


def photo_settings(
    *,
    elevation: str,
    elevation_deg: Any,
    crop_size: Any,
    background: str,
    steps: Any,
    cfg: Any,
    eta: Any,
    seed: Any,
    samples: Any,
    sampler: str,
    quality: str,
    recon_steps: Any,
    faces: Any,
    formats: Sequence[str] | None,
    preview: str,
    preview_frames: Any,
    options: ServeOptions,
) -> RunSettings:
    """The photo tab's control values -> the :class:`RunSettings` of ``sd3d run``, checked as the
    CLI's are (:meth:`RunSettings.check` judges what depends on the server's device).

    ``elevation`` is ``auto`` (estimate it) or ``manual`` (use ``elevation_deg``)."""

    elev = None if elevation == ELEVATION_AUTO else _as_float(elevation_deg, "--elevation")
    crop = _as_int(crop_size, "--crop-size")
    generation = GenerationSettings(
        steps=_as_int(steps, "--steps"),
        cfg=_as_float(cfg, "--cfg"),
        eta=_as_float(eta, "--eta"),
        seed=_as_int(seed, "--seed"),
        samples=_as_int(samples, "--samples"),
        sampler=sampler,
    )
    recon = ReconSettings(
        quality,
        _as_int(recon_steps, "--recon-steps", optional=True),
        _as_int(faces, "--faces", optional=True),
        _formats(formats),
    )
    return RunSettings(
        generation=generation,
        recon=recon,
        preview=PreviewSettings(preview, _as_int(preview_frames, "--preview-frames")),
        elevation_deg=elev,
        crop_size=crop,
        background=background,
        max_pixels=options.max_pixels,
        device=options.device,
        dtype=options.dtype,
    ).check()


def views_settings(
    *, quality: str, steps: Any, seed: Any, faces: Any, formats: Sequence[str] | None
) -> tuple[ReconSettings, int]:
    """The views tab's control values -> what ``sd3d reconstruct`` takes: the
    :class:`ReconSettings` (checked at construction) and the seed.

    The step count is checked here under the views tab's own ``--steps`` (ReconSettings' message
    names ``sd3d run``'s ``--recon-steps``), as ``sd3d reconstruct`` does."""
    recon = ReconSettings(
        str(quality).strip().lower(),
        _as_int(steps, "--steps", optional=True, minimum=1),
        _as_int(faces, "--faces", optional=True),
        _formats(formats),
    )
    return recon, _as_int(seed, "--seed", minimum=0)


@functools.cache
def server_device(name: str):
    """``--device`` of ``sd3d serve`` as a :class:`torch.device`, resolved once per process (the
    server's options do not change while it runs)."""

    return resolve_device(name)


# --------------------------------------------------------------------------------------------------
# sessions
# --------------------------------------------------------------------------------------------------
@dataclass
class PhotoGeneration:
    """What the photo tab's reconstruct step needs from its generate step."""

    source_name: str
    prepared: PreparedInput
    generated: RunViews
    settings: RunSettings
    stages: StageTimer


@dataclass
class Session:
    """One browser session: its folder and the results one step hands to the next."""

    id: str
    dir: Path
    last_used: float = field(default_factory=time.monotonic)
    cut_out: tuple[tuple, PreparedInput] | None = None
    generation: PhotoGeneration | None = None
    _counter: Iterator[int] = field(default_factory=itertools.count)

    def fresh_dir(self, kind: str) -> Path:
        """A new, not yet existing path ``<kind>-<n>`` in the session folder; earlier ones of the
        same kind are removed (the page holds Gradio's own copies of what it shows)."""
        for old in self.dir.glob(f"{kind}-*"):
            shutil.rmtree(old, ignore_errors=True)
        return self.dir / f"{kind}-{next(self._counter)}"

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def _uploads_named(paths: Sequence[str | os.PathLike], names: Sequence[str] | None = None) -> Iterator[None]:
    """Messages name uploads as the user knows them (their file name), not by their server path."""
    try:
        yield
    except UserError as exc:
        message = str(exc)
        for i, path in enumerate(paths):
            name = names[i] if names and names[i] else Path(path).name
            message = message.replace(str(path), name)
        if message == str(exc):
            raise
        raise type(exc)(message) from exc


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:80] or "session"


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CutOut:
    image: Path  # the prepared 256x256 RGBA (what `sd3d preprocess` writes)
    info: str


@dataclass(frozen=True)
class Generated:
    views: list[tuple[Path, str]]  # (image, caption) of the kept sample's 16 views
    grid: Path
    elevation: dict[str, Any]  # the report's elevation record (with the score curve when estimated)
    summary: str
    command: str


@dataclass(frozen=True)
class Reconstructed:
    glb: Path
    preview: Path | None  # the turntable video (photo tab)
    downloads: list[Path]
    summary: str
    command: str


def elevation_summary(record: dict[str, Any]) -> str:
    if record.get("source") != "estimated":
        return f"elevation {record['elevation_deg']:.1f} deg (given)"
    again = "regenerated at the estimate" if record["regenerated"] else "close to the first guess, kept"
    return (
        f"elevation {record['elevation_deg']:.1f} deg, estimated (silhouette score {record['score']:.3f}; "
        f"views first generated at {record['first_guess_deg']:.0f} deg, {again})"
    )


def _zip(path: Path, files: Sequence[Path], root: Path) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(f, f.relative_to(root).as_posix())
    return path


def _mesh_downloads(folder: Path, exports: dict[str, list[str]]) -> list[Path]:
    """``mesh.glb``, the OBJ with its material and texture as one zip, ``mesh.ply``."""
    out = [folder / "mesh.glb"]
    if "obj" in exports:
        out.append(_zip(folder / "mesh-obj.zip", [folder / n for n in exports["obj"]], folder))
    if "ply" in exports:
        out.append(folder / "mesh.ply")
    return out


# --------------------------------------------------------------------------------------------------
# the app
# --------------------------------------------------------------------------------------------------
class WebApp:
    """The server's state and the handlers of both tabs (called from Gradio's worker threads)."""

    def __init__(self, options: ServeOptions | None = None) -> None:
        self.options = options or ServeOptions()
        if self.options.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="sd3d-serve-"))
            self._owns_work_dir = True
        else:
            self.work_dir = Path(self.options.work_dir)
            self.work_dir.mkdir(parents=True, exist_ok=True)
            self._owns_work_dir = False
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._model = None
        self._model_lock = threading.Lock()

    # ---- lifetime -------------------------------------------------------------------------------
    def session(self, session_id: str | None) -> Session:
        """The session's state, created on first use; sessions idle for too long are dropped."""
        key = session_id or "default"
        now = time.monotonic()
        with self._lock:
            for stale in [
                s for s in self._sessions.values() if now - s.last_used > self.options.session_idle_s
            ]:
                self._sessions.pop(stale.id).close()
            session = self._sessions.get(key)
            if session is None:
                folder = self.work_dir / _safe_name(key)
                folder.mkdir(parents=True, exist_ok=True)
                session = self._sessions[key] = Session(key, folder)
            session.last_used = now
            return session

    def end_session(self, session_id: str | None) -> None:
        """The page was closed: forget the session and remove its files."""
        with self._lock:
            session = self._sessions.pop(session_id or "default", None)
        if session is not None:
            session.close()

    def session_dir(self, session_id: str | None) -> Path:
        return self.work_dir / _safe_name(session_id or "default")

    def close(self) -> None:
        """Remove every session's files (and the work folder if the app made it)."""
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            s.close()
        if self._owns_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    # ---- model ----------------------------------------------------------------------------------
    def weights_file(self) -> Path:
        """The checkpoint, or the library's one-line WeightsError that says how to get it."""

        return weights_path(self.options.weights, self.options.weights_dir)

    def weights_problem(self) -> str | None:
        """``None`` when generation can run, else the message that says what to do."""

        try:
            self.weights_file()
        except WeightsError as exc:
            return str(exc)
        return None

    def model(self):
        """The SyncDreamer model, loaded on first use and kept for the server's life."""

        with self._model_lock:
            if self._model is None:
                self._model = load_model(
                    self.weights_file(), None, self.options.device, dtype=self.options.dtype
                )
            return self._model

    def device(self):
        """The compute device: the loaded model's, else ``--device`` resolved."""
        return self._model.device if self._model is not None else server_device(self.options.device)

    # ---- photo tab ------------------------------------------------------------------------------
    def _prepared(self, session: Session, photo: str | os.PathLike, crop_size: int, background: str):
        """``sd3d run``'s preprocessing, kept per session: the cut-out step and the generation of
        the same photo with the same crop and background share one (slow) background removal."""

        key = (str(photo), crop_size, background)
        if session.cut_out is not None and session.cut_out[0] == key:
            return session.cut_out[1]
        settings = RunSettings(crop_size=crop_size, background=background, max_pixels=self.options.max_pixels)
        prepared = prepare_photo(photo, settings, self.options.weights_dir)
        session.cut_out = (key, prepared)
        return prepared

    def cut_out(
        self,
        session_id: str | None,
        photo: str | None,
        crop_size: Any,
        background: str,
        photo_name: str = "",
    ) -> CutOut:
        """``sd3d preprocess``: the recentred object the model will see."""

        if not photo:
            raise InputImageError("upload a photo first")
        session = self.session(session_id)
        crop = _as_int(crop_size, "--crop-size")  # RunSettings judges it (see _prepared)
        with _uploads_named([photo], [photo_name]):
            prepared = self._prepared(session, photo, crop, background)
        folder = session.fresh_dir("cutout")
        folder.mkdir()
        path = folder / "input.png"
        prepared.rgba_image().save(path)
        w, h = prepared.source_size
        note = f" ({prepared.background_note})" if prepared.background_note else ""
        info = (
            f"background: {prepared.background}{note}; object box {list(prepared.crop_box)} of the "
            f"{w}x{h} photo; crop size {crop}"
        )
        return CutOut(path, "\n".join([info, *(f"warning: {msg}" for msg in prepared.warnings)]))

    def generate(
        self,
        session_id: str | None,
        photo: str | None,
        settings: RunSettings,
        photo_name: str = "",
        report: Report | None = None,
    ) -> Generated:
        """The generation half of ``sd3d run``: the 16 views (elevation given or estimated)."""

        self.weights_file()  # no weights: the one-line instruction, before any work
        if not photo:
            raise InputImageError("upload a photo first")
        session = self.session(session_id)
        session.generation = None
        stages = StageTimer()
        with stages("preprocess"), _uploads_named([photo], [photo_name]):
            prepared = self._prepared(session, photo, settings.crop_size, settings.background)
        with stages("load_model"):
            model = self.model()
        progress = _progress(report)
        generated = generate_run_views(model, prepared, settings, stages=stages, progress=progress)
        name = photo_name or Path(photo).name
        session.generation = PhotoGeneration(name, prepared, generated, settings, stages)
        folder = write_generated(session.fresh_dir("views"), [generated.best], prepared.rgba)
        views = [
            (folder / f, f"{f[:3]} · azimuth {c.azimuth_deg:g}°")
            for f, c in zip(VIEW_FILES, generated.best.cameras, strict=True)
        ]
        summary = elevation_summary(generated.elevation.record)
        if len(generated.views) > 1:
            scores = ", ".join(f"{s:.3f}" for s in generated.sample_scores)
            summary += f"; kept sample {generated.chosen} of {len(generated.views)} (consistency {scores})"
        return Generated(
            views,
            folder / "grid.png",
            generated.elevation.record,
            summary,
            run_command(settings, name, self.options),
        )

    def reconstruct_photo(
        self, session_id: str | None, settings: RunSettings, report: Report | None = None
    ) -> Reconstructed:
        """The rest of ``sd3d run``: mesh, preview, report, from the views of the last generation.

        Only the reconstruction controls (:data:`RECON_FIELDS`) are taken from ``settings``; the
        generation ones stay those the views were made with, so ``report.json`` tells the truth."""

        session = self.session(session_id)
        gen = session.generation
        if gen is None:
            raise UserError("generate the views first")
        merged = replace(gen.settings, **{k: getattr(settings, k) for k in RECON_FIELDS})
        folder = session.fresh_dir("run")
        result = finish_run(
            folder,
            source=gen.source_name,
            settings=merged,
            prepared=gen.prepared,
            generated=gen.generated,
            stages=StageTimer(gen.stages.seconds),  # a second reconstruction replaces, not adds to, the first
            device=self.device(),
            progress=_progress(report),
        )
        report_data = result.report
        downloads = _mesh_downloads(
            folder, {fmt: rec["files"] for fmt, rec in report_data["exports"].items()}
        )
        views = folder / "views"
        downloads.append(
            _zip(folder / "views.zip", sorted(p for p in views.rglob("*") if p.is_file()), folder)
        )
        downloads.append(folder / "report.json")
        preview = folder / report_data["preview"] if report_data["preview"] else None
        if preview is not None:
            downloads.append(preview)
        glb = report_data["exports"]["glb"]
        summary = (
            f"{glb['faces']} faces, {'textured' if glb['textured'] else 'vertex colours'}; "
            f"reconstruction {report_data['reconstruction']['preset']} in "
            f"{report_data['stage_seconds'].get('reconstruct', 0.0):.1f} s on {report_data['device']}"
        )
        return Reconstructed(
            folder / "mesh.glb",
            preview if preview is not None and preview.suffix == ".mp4" else None,
            downloads,
            summary,
            run_command(merged, gen.source_name, self.options),
        )

    # ---- views tab ------------------------------------------------------------------------------
    def _views_source(self, session: Session, files: Sequence[str]) -> Path:
        """The uploaded files as a views folder (16 images [+ cameras.json]) or one strip image,
        each image read with the CLI's checks and stored as PNG."""

        paths = [Path(f) for f in files]
        cameras = [p for p in paths if p.suffix.lower() == ".json"]
        images = [p for p in paths if p.suffix.lower() in VIEW_SUFFIXES]
        other = [p for p in paths if p not in cameras and p not in images]
        if other:
            raise ViewsFolderError(
                f"{other[0].name} is neither a view image ({', '.join(VIEW_SUFFIXES)}) nor cameras.json"
            )
        if len(cameras) > 1 or (cameras and cameras[0].name != "cameras.json"):
            raise ViewsFolderError("the only other file a views folder may hold is one cameras.json")
        folder = session.fresh_dir("upload")
        folder.mkdir()
        if len(images) == 1 and not cameras:
            strip = folder / "strip.png"
            read_image(images[0], max_pixels=self.options.max_pixels).save(strip)
            return strip
        if len(images) != len(VIEW_FILES):
            raise ViewsFolderError(
                f"upload the {len(VIEW_FILES)} views (000.png ... 015.png, optionally with cameras.json) "
                f"or one {len(VIEW_FILES)}-view strip image; got {len(images)} image(s)"
            )
        numbered = {p.stem: p for p in images if re.fullmatch(r"\d{3}", p.stem)}
        names = [f[:-4] for f in VIEW_FILES]
        if sorted(numbered) == names:
            ordered = [numbered[n] for n in names]
        elif cameras:
            raise ViewsFolderError("with cameras.json the views must be named 000.png ... 015.png")
        else:  # any 16 names: taken in name order as azimuth 0, 22.5, ... (the default cameras)
            ordered = sorted(images, key=lambda p: p.name)
        for target, src in zip(VIEW_FILES, ordered, strict=True):
            read_image(src, max_pixels=self.options.max_pixels).save(folder / target)
        if cameras:
            shutil.copyfile(cameras[0], folder / "cameras.json")
        return folder

    def reconstruct_views(
        self,
        session_id: str | None,
        files: Sequence[str] | None,
        recon: ReconSettings,
        seed: int = defaults.SEED,
        report: Report | None = None,
    ) -> Reconstructed:
        """``sd3d reconstruct``: uploaded views -> textured mesh (needs no weights), one file per
        format of ``recon`` (the GLB always)."""

        if not files:
            raise ViewsFolderError("upload the 16 views (or a strip image) first, or load the example")
        session = self.session(session_id)
        with _uploads_named(files):
            source = self._views_source(session, files)
        with _uploads_named([source], ["the upload"]):
            views = read_views(source)
        result = reconstruct(views, recon, seed=seed, device=self.device(), progress=_progress(report))
        folder = session.fresh_dir("mesh")
        folder.mkdir()
        exports, faces, textured = {}, 0, False
        for fmt in _with_glb(recon.formats):
            exp = export_mesh(result, folder / f"mesh.{fmt}", faces=recon.faces)
            exports[fmt] = [p.name for p in exp.paths]
            if fmt == "glb":
                faces, textured = exp.num_faces, exp.textured
        summary = (
            f"{faces} faces, {'textured' if textured else 'vertex colours'}; reconstruction "
            f"{result.preset.name} ({result.preset.steps} steps) in {result.timings['train']:.1f} s on "
            f"{result.device}"
        )
        name = "views/" if source.is_dir() else "strip.png"
        return Reconstructed(
            folder / "mesh.glb",
            None,
            _mesh_downloads(folder, exports),
            summary,
            reconstruct_command(recon, seed, self.options, name),
        )


def example_views_dir() -> Path | None:
    """The shipped example views (``examples/spot`` of a source checkout), if present."""
    folder = Path(__file__).resolve().parents[2] / "examples" / "spot"
    return folder if (folder / VIEW_FILES[-1]).is_file() else None


def example_files() -> list[Path]:
    """The example's files as one would upload them: the 16 views and ``cameras.json``."""
    folder = example_views_dir()
    if folder is None:
        raise UserError("the example views (examples/spot) are not part of this installation")
    return [folder / f for f in VIEW_FILES] + [folder / "cameras.json"]
