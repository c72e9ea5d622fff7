"""``sd3d run`` (photo -> views -> textured mesh, one shot) and ``sd3d batch`` (a folder of photos)."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer

_BACKENDS = "auto|alpha|rembg|carvekit|grabcut|none"


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
        "crop_size", int, typer.Option(200, "--crop-size", help="Object size after recentring (-1: no crop).")
    ),
    _option(
        "background",
        str,
        typer.Option("auto", "--background", "-b", metavar=_BACKENDS, help="Foreground backend."),
    ),
    _option("steps", int, typer.Option(50, "--steps", help="Sampling steps.")),
    _option("cfg", float, typer.Option(2.0, "--cfg", help="Classifier-free guidance scale.")),
    _option("eta", float, typer.Option(1.0, "--eta", help="DDIM eta.")),
    _option("seed", int, typer.Option(6033, "--seed", help="Random seed (generation and reconstruction).")),
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
        typer.Option(72, "--preview-frames", help="Turntable frames (72 = 3 s at 24 fps)."),
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


def _with_stage_options(*leading: inspect.Parameter):
    """Give ``fn(**options)`` the signature ``(*leading, *STAGE_OPTIONS, --overwrite)`` that Typer reads."""

    def decorate(fn):
        fn.__signature__ = inspect.Signature([*leading, *STAGE_OPTIONS, OVERWRITE_OPTION])
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
    from sd3d.errors import UserError
    from sd3d.runner import RunSettings

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
    return RunSettings(
        elevation_deg=elev,
        crop_size=crop_size,
        background=background,
        steps=steps,
        cfg=cfg,
        eta=eta,
        seed=seed,
        samples=samples,
        sampler=sampler,
        batch_view_num=bvn,
        quality=quality,
        recon_steps=recon_steps,
        faces=faces,
        formats=("glb", *fmts),
        preview=preview,
        preview_frames=preview_frames,
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
    from cli.common import echo, is_quiet
    from sd3d.progress import Progress
    from sd3d.runner import run_photo

    settings = _settings(**options)
    quiet = is_quiet()
    progress = Progress(enabled=not quiet, transient=True)
    status = _stage_printer(quiet)
    result = run_photo(image, output, settings, progress=progress, on_stage=status, **_passed_on(options))
    if not quiet:
        _summary(result.report)
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
            f"kept sample {report['samples']['chosen']} of {report['samples']['count']} (consistency {scores})"
        )


@_with_stage_options(
    _positional(
        "folder", Path, typer.Argument(..., help="Folder of photos (jpg, png, webp).", show_default=False)
    ),
    _positional(
        "output",
        Path,
        typer.Option(
            ..., "--output", "-o", help="Output folder: one sub-folder per photo.", show_default=False
        ),
    ),
)
def batch(folder: Path, output: Path, **options) -> None:
    from cli.common import progress
    from sd3d.runner import BatchAborted, run_batch

    settings = _settings(**options)
    try:
        items = run_batch(folder, output, settings, progress=progress(), **_passed_on(options))
    except BatchAborted as exc:
        _batch_summary(output, exc.items)
        raise
    if _batch_summary(output, items):
        raise typer.Exit(1)


def _batch_summary(output: Path, items) -> bool:
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
    typer.echo(
        f"{counts['done']} done, {counts['skipped']} up to date, {counts['failed']} failed"
        + (f", {not_run} not run" if not_run else "")
        + f" (details: {output / 'batch.json'})"
    )
    return counts["failed"] > 0
