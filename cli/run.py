"""``sd3d run`` (photo -> views -> textured mesh, one shot) and ``sd3d batch`` (a folder of photos)."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer

from cli.common import BACKGROUND_METAVAR, max_pixels_option
from sd3d import DEFAULT_SEED
from sd3d.core import defaults


def register(app: typer.Typer) -> None:
    app.command("run", help="Photo -> 16 views -> textured mesh, preview video and report, in one go.")(run)
    app.command("batch", help="`sd3d run` for every image of a folder (model loaded once, resumable).")(batch)


def _option(name: str, annotation, default) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


# The options of every stage `run` chains, shared by `run` and `batch` (one list, two signatures).
STAGE_OPTIONS = [
    _option(
        "elevation",
        str,
        typer.Option(
            "auto", "--elevation", "-e", metavar="DEG|auto", help="Input elevation; auto estimates it."
        ),
    ),
    _option(
        "crop_size",
        int,
        typer.Option(defaults.CROP_SIZE, "--crop-size", help="Object size after recentring (-1: no crop)."),
    ),
    _option(
        "background",
        str,
        typer.Option("auto", "--background", "-b", metavar=BACKGROUND_METAVAR, help="Foreground backend."),
    ),
    _option("max_pixels", str, max_pixels_option()),
    _option("steps", int, typer.Option(defaults.SYNCDREAMER_STEPS, "--steps", help="Sampling steps.")),
    _option(
        "cfg", float, typer.Option(defaults.SYNCDREAMER_CFG, "--cfg", help="Classifier-free guidance scale.")
    ),
    _option("eta", float, typer.Option(defaults.DDIM_ETA, "--eta", help="DDIM eta.")),
    _option(
        "seed", int, typer.Option(DEFAULT_SEED, "--seed", help="Random seed (generation and reconstruction).")
    ),
    _option(
        "samples", int, typer.Option(1, "--samples", "-n", help="Generate N sets, keep the most consistent.")
    ),
    _option("sampler", str, typer.Option("ddim", "--sampler", help="ddim, dpmpp or unipc.")),
    _option("batch_view_num", str, typer.Option("auto", "--batch-view-num", help="Views per UNet chunk.")),
    _option(
        "quality",
        str,
        typer.Option(
            "auto",
            "--quality",
            help="Reconstruction preset: auto (standard on a GPU, draft on CPU), draft, standard or high.",
        ),
    ),
    _option(
        "recon_steps", int, typer.Option(None, "--recon-steps", help="Override the preset's training steps.")
    ),
    _option("faces", int, typer.Option(None, "--faces", help="Decimate the mesh to about N faces.")),
    _option("formats", str, typer.Option("", "--formats", help="Extra mesh formats besides GLB: obj,ply.")),
    _option("preview", str, typer.Option("mp4", "--preview", help="Turntable preview: mp4, gif or none.")),
    _option(
        "preview_frames",
        int,
        typer.Option(
            defaults.PREVIEW_FRAMES, "--preview-frames", help="Turntable frames (72 = 3 s at 24 fps)."
        ),
    ),
    _option("device", str, typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")),
    _option("dtype", str, typer.Option("auto", "--dtype", help="auto, fp32, bf16 or fp16.")),
    _option("weights", Path, typer.Option(None, "--weights", help="SyncDreamer checkpoint file.")),
    _option("weights_dir", Path, typer.Option(None, "--weights-dir", help="Weights folder.")),
]


OVERWRITE_OPTION = _option(
    "overwrite",
    bool,
    typer.Option(
        False,
        "--overwrite",
        help="Also write into an existing non-empty folder sd3d did not write (its own files are kept; "
        "a folder sd3d wrote is always reused, its earlier outputs replaced).",
    ),
)


def _with_stage_options(*leading: inspect.Parameter, trailing: tuple[inspect.Parameter, ...] = ()):
    """Give ``fn(**options)`` the signature ``(*leading, *STAGE_OPTIONS, --overwrite, *trailing)``
    that Typer reads."""

    def decorate(fn):
        fn.__signature__ = inspect.Signature([*leading, *STAGE_OPTIONS, OVERWRITE_OPTION, *trailing])
        return fn

    return decorate


def _passed_on(options: dict) -> dict:
    """The options ``run`` and ``batch`` hand to the library as they are (not settings)."""
    return {name: options[name] for name in ("weights", "weights_dir", "overwrite")}


def _positional(name: str, annotation, default) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation, default=default
    )


def _settings(
    elevation: str,
    crop_size: int,
    background: str,
    max_pixels: str | None,
    steps: int,
    cfg: float,
    eta: float,
    seed: int,
    samples: int,
    sampler: str,
    batch_view_num: str,
    quality: str,
    recon_steps: int | None,
    faces: int | None,
    formats: str,
    preview: str,
    preview_frames: int,
    device: str,
    dtype: str,
    **_ignored,
):
    from cli.common import parse_max_pixels
    from recon.presets import ReconSettings
    from sd3d.core.errors import UserError
    from sd3d.pipelines.syncdreamer import GenerationSettings
    from sd3d.workflows.run import PreviewSettings, RunSettings

    if elevation.strip().lower() == "auto":
        elev = None
    else:
        try:
            elev = float(elevation)
        except ValueError:
            raise UserError(f"--elevation must be a number of degrees or 'auto', got {elevation!r}") from None
    try:
        bvn = None if batch_view_num.strip().lower() == "auto" else int(batch_view_num)
    except ValueError:
        raise UserError(f"--batch-view-num must be an integer or 'auto', got {batch_view_num!r}") from None
    fmts = tuple(f.strip().lower().lstrip(".") for f in formats.split(",") if f.strip())
    max_pixels_value = parse_max_pixels(max_pixels)
    return RunSettings(
        generation=GenerationSettings(
            steps=steps, cfg=cfg, eta=eta, seed=seed, samples=samples, batch_view_num=bvn, sampler=sampler
        ),
        recon=ReconSettings(quality=quality, steps=recon_steps, faces=faces, formats=("glb", *fmts)),
        preview=PreviewSettings(format=preview, frames=preview_frames),
        elevation_deg=elev,
        crop_size=crop_size,
        background=background,
        max_pixels=max_pixels_value,
        device=device,
        dtype=dtype,
    ).check()


@_with_stage_options(
    _positional(
        "image", Path, typer.Argument(..., help="Input photo (any format Pillow reads).", show_default=False)
    ),
    _positional(
        "output",
        Path,
        typer.Option(
            ..., "--output", "-o", help="Output folder (new, empty, or written by sd3d).", show_default=False
        ),
    ),
)
def run(image: Path, output: Path, **options) -> None:
    from cli.common import echo, is_quiet, say_background
    from sd3d.core.progress import Progress
    from sd3d.workflows.run import run_photo

    settings = _settings(**options)
    quiet = is_quiet()
    progress = Progress(enabled=not quiet, transient=True)
    status = _stage_printer(quiet)
    result = run_photo(image, output, settings, progress=progress, on_stage=status, **_passed_on(options))
    if not quiet:
        _summary(result.report)
    pre = result.report["preprocess"]
    say_background(pre["background"], pre["background_note"])
    echo(str(result.out_dir))


def _stage_printer(quiet: bool):
    """Print ``done: <stage>`` when the next stage starts, so a run that fails on bad input prints
    only its one ``error:`` line (completed stages are listed, the failing one is not)."""
    import time

    from rich.console import Console

    console = Console(stderr=True)
    current: list = []

    def note(stage: str) -> None:
        if current and not quiet:
            name, start = current.pop()
            console.print(f"[green]done[/] {name} ({time.perf_counter() - start:.1f} s)")
        current.append((stage, time.perf_counter()))

    return note


def _summary(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sd3d run", show_header=True)
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for stage, secs in report["stage_seconds"].items():
        table.add_row(stage, f"{secs:.1f}")
    table.add_row("[bold]total", f"[bold]{report['total_seconds']:.1f}")
    console = Console(stderr=True)
    console.print(table)
    elev = report["elevation"]
    how = "estimated" if elev["source"] == "estimated" else "given"
    console.print(
        f"elevation {elev['elevation_deg']:.1f} deg ({how}); outputs: {', '.join(report['outputs'])}"
    )
    if report["samples"]["count"] > 1:
        scores = ", ".join(f"{s:.3f}" for s in report["samples"]["consistency_scores"])
        console.print(
            f"kept sample {report['samples']['chosen']} of {report['samples']['count']} (consistency {scores}) "
            "in views/; the others are in views/sample-<i>/"
        )


_ENGINE_OPTIONS = [
    _option(
        "engine",
        str,
        typer.Option(
            "local",
            "--engine",
            metavar="local|ray",
            help="local: one process, one image after another; ray: a Ray cluster (the sd3d 'ray' extra).",
        ),
    ),
    _option(
        "address",
        str,
        typer.Option(
            None,
            "--address",
            metavar="auto|ray://HOST:10001",
            help="Ray cluster to join (default: start Ray on this machine).",
        ),
    ),
    _option(
        "workers",
        str,
        typer.Option(None, "--workers", metavar="N", help="Model-holding workers (default: one per GPU)."),
    ),
    _option(
        "gpus_per_worker",
        str,
        typer.Option(
            None, "--gpus-per-worker", metavar="G", help="GPUs per worker, may be fractional; 0: CPU only."
        ),
    ),
]


def _engine_options(engine: str, address, workers, gpus_per_worker):
    """The Ray options (None for the local engine, which refuses the Ray-only ones)."""
    from cli.common import parse_number
    from sd3d.core.errors import UserError

    engine = engine.strip().lower()
    if engine not in ("local", "ray"):
        raise UserError(f"--engine must be local or ray, got {engine!r}")
    if engine == "local":
        given = [
            n
            for n, v in (
                ("--address", address),
                ("--workers", workers),
                ("--gpus-per-worker", gpus_per_worker),
            )
            if v is not None
        ]
        if given:
            raise UserError(f"{given[0]} needs --engine ray")
        return None
    from sd3d.workflows.engines import ray_engine

    batch_ray = ray_engine()
    return batch_ray.RayOptions(
        address=address,
        workers=None if workers is None else parse_number(workers, "--workers", int),
        gpus_per_worker=None
        if gpus_per_worker is None
        else parse_number(gpus_per_worker, "--gpus-per-worker"),
    )


@_with_stage_options(
    _positional(
        "folder",
        str,
        typer.Argument(
            ...,
            help="Folder of photos (jpg, png, webp); a URL such as s3://bucket/photos with --engine ray.",
            show_default=False,
        ),
    ),
    _positional(
        "output",
        str,
        typer.Option(
            ...,
            "--output",
            "-o",
            help="Output folder: one sub-folder per photo (a URL with --engine ray).",
            show_default=False,
        ),
    ),
    trailing=tuple(_ENGINE_OPTIONS),
)
def batch(folder: str, output: str, **options) -> None:
    from cli.common import progress
    from sd3d.core.errors import UserError
    from sd3d.workflows.run import BatchAborted, run_batch
    from sd3d.workflows.storage import is_url

    settings = _settings(**options)
    ray_options = _engine_options(
        options["engine"], options["address"], options["workers"], options["gpus_per_worker"]
    )
    common = {"progress": progress(), **_passed_on(options)}
    if ray_options is None:
        url = next((p for p in (folder, output) if is_url(p)), None)
        if url is not None:
            raise UserError(f"{url}: URLs need --engine ray")
        try:
            items = run_batch(Path(folder), Path(output), settings, **common)
        except BatchAborted as exc:
            _batch_summary(output, exc.items)
            raise
    else:
        from sd3d.workflows.batch_ray import run_batch_ray

        items = run_batch_ray(folder, output, settings, ray_options, **common)
    if _batch_summary(output, items):
        raise typer.Exit(1)


def _batch_summary(output: str, items) -> bool:
    """Print the per-image table and the counts; True when any image failed."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sd3d batch: {output}")
    for col in ("image", "status", "seconds", "error"):
        table.add_column(col)
    for it in items:
        table.add_row(it.image, it.status, f"{it.seconds:.1f}", it.error or "")
    Console(stderr=True).print(table)
    counts = {status: sum(it.status == status for it in items) for status in ("done", "skipped", "failed")}
    not_run = len(items) - sum(counts.values())
    where = f"{output.rstrip('/')}/batch.json"
    typer.echo(
        f"{counts['done']} done, {counts['skipped']} up to date, {counts['failed']} failed"
        + (f", {not_run} not run" if not_run else "")
        + f" (details: {where})"
    )
    return counts["failed"] > 0
