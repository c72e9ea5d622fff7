"""``sd3d run`` (photo -> views -> textured mesh, one shot) and ``sd3d batch`` (a folder of photos).

Both take the options of every stage they chain (:data:`STAGE_OPTIONS`, one list given to two
signatures), typed and parsed by :mod:`cli.common`'s parsers; the work is done by
:mod:`sd3d.workflows.run` and, on a Ray cluster, :mod:`sd3d.workflows.batch_ray`.
"""

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import (
    Background,
    BatchViewNum,
    Cfg,
    CropSize,
    CudaGraph,
    Device,
    Dtype,
    Eta,
    Faces,
    GpuMemory,
    HashGrid,
    MaxPixels,
    Overwrite,
    Samples,
    Seed,
    Steps,
    Weights,
    WeightsDir,
    choice_option,
    number_option,
    retold,
    word,
)
from sd3d.core import defaults

ENGINES = ("local", "ray")


def register(app: typer.Typer) -> None:
    app.command("run", help="Photo -> 16 views -> textured mesh, preview video and report, in one go.")(run)
    app.command("batch", help="`sd3d run` for every image of a folder (model loaded once, resumable).")(batch)


def _option(name: str, annotation: Any, default: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)


def _positional(name: str, annotation: Any) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation)


def _words(value: str | Sequence[str]) -> tuple[str, ...]:
    """``--formats obj,.PLY`` -> ``("obj", "ply")`` (the default, a sequence, is taken as it is)."""
    words = value.split(",") if isinstance(value, str) else value
    return tuple(w.strip().lower().lstrip(".") for w in words if w.strip())


# The options of every stage `run` chains, shared by `run` and `batch` (one list, two signatures).
STAGE_OPTIONS = [
    _option(
        "elevation",
        Annotated[
            float | None,
            number_option(
                "--elevation", "-e", auto=True, metavar="DEG|auto", help="Input elevation; auto estimates it."
            ),
        ],
        None,
    ),
    _option("crop_size", CropSize, defaults.CROP_SIZE),
    _option("background", Background, "auto"),
    _option("max_pixels", MaxPixels, None),
    _option("steps", Steps, defaults.SYNCDREAMER_STEPS),
    _option("cfg", Cfg, defaults.SYNCDREAMER_CFG),
    _option("eta", Eta, defaults.DDIM_ETA),
    _option("seed", retold(Seed, "Random seed (generation and reconstruction)."), defaults.SEED),
    _option("samples", retold(Samples, "Generate N sets, keep the most consistent."), 1),
    _option(
        "sampler",
        Annotated[str, typer.Option("--sampler", parser=word, help="ddim, dpmpp or unipc.")],
        "ddim",
    ),
    _option("batch_view_num", BatchViewNum, None),
    _option(
        "quality",
        Annotated[
            str,
            typer.Option(
                "--quality",
                parser=word,
                help="Reconstruction preset: auto (standard on a GPU, draft on CPU), draft, standard or high.",
            ),
        ],
        "auto",
    ),
    _option(
        "recon_steps",
        Annotated[
            int | None, number_option("--recon-steps", kind=int, help="Override the preset's training steps.")
        ],
        None,
    ),
    _option("faces", Faces, None),
    _option("hash_grid", HashGrid, "auto"),
    _option("cuda_graph", CudaGraph, None),
    _option(
        "formats",
        Annotated[
            Sequence[str],
            typer.Option(
                "--formats",
                parser=_words,
                help="Extra mesh formats besides GLB: obj,ply.",
                show_default=False,
            ),
        ],
        (),
    ),
    _option(
        "preview",
        Annotated[str, typer.Option("--preview", parser=word, help="Turntable preview: mp4, gif or none.")],
        "mp4",
    ),
    _option(
        "preview_frames",
        Annotated[
            int,
            number_option("--preview-frames", kind=int, help="Turntable frames (72 = 3 s at 24 fps)."),
        ],
        defaults.PREVIEW_FRAMES,
    ),
    _option("device", Device, "auto"),
    _option("dtype", Dtype, "auto"),
    _option("gpu_memory", GpuMemory, None),
    _option("weights", retold(Weights, "SyncDreamer checkpoint file."), None),
    _option("weights_dir", WeightsDir, None),
]


OVERWRITE_OPTION = _option(
    "overwrite",
    retold(
        Overwrite,
        "Also write into an existing non-empty folder sd3d did not write (its own files are kept; "
        "a folder sd3d wrote is always reused, its earlier outputs replaced).",
    ),
    False,
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


def _settings(
    elevation: float | None,
    crop_size: int,
    background: str,
    max_pixels: int | None,
    steps: int,
    cfg: float,
    eta: float,
    seed: int,
    samples: int,
    sampler: str,
    batch_view_num: int | None,
    quality: str,
    recon_steps: int | None,
    faces: int | None,
    hash_grid: str,
    cuda_graph: bool | None,
    formats: Sequence[str],
    preview: str,
    preview_frames: int,
    device: str,
    dtype: str,
    gpu_memory: float | None,
    **_ignored,
):
    """The stage options -> the library's checked :class:`~sd3d.workflows.run.RunSettings`."""
    from recon.presets import ReconSettings
    from sd3d.pipelines.syncdreamer import GenerationSettings
    from sd3d.workflows.run import PreviewSettings, RunSettings

    return RunSettings(
        generation=GenerationSettings(
            steps=steps,
            cfg=cfg,
            eta=eta,
            seed=seed,
            samples=samples,
            batch_view_num=batch_view_num,
            sampler=sampler,
        ),
        recon=ReconSettings(
            quality=quality,
            steps=recon_steps,
            faces=faces,
            formats=("glb", *formats),
            hash_grid=hash_grid,
            cuda_graph=cuda_graph,
        ),
        preview=PreviewSettings(format=preview, frames=preview_frames),
        elevation_deg=elevation,
        crop_size=crop_size,
        background=background,
        max_pixels=max_pixels,
        device=device,
        dtype=dtype,
        gpu_memory_gib=gpu_memory,
    ).check()


@_with_stage_options(
    _positional(
        "image",
        Annotated[Path, typer.Argument(help="Input photo (any format Pillow reads).", show_default=False)],
    ),
    _positional(
        "output",
        Annotated[
            Path,
            typer.Option(
                "--output", "-o", help="Output folder (new, empty, or written by sd3d).", show_default=False
            ),
        ],
    ),
)
def run(image: Path, output: Path, **options) -> None:
    from contextlib import nullcontext

    from sd3d.models.warm_start import start_early_workers

    # before this process imports PyTorch: the kernel warm-up's workers import theirs meanwhile;
    # leaving the block ends them (the warm-up's own close, or nothing to do, after a finished run)
    with start_early_workers(str(options["device"])) or nullcontext() as compile_workers:
        _run(image, output, compile_workers, **options)


def _run(image: Path, output: Path, compile_workers, **options) -> None:
    from cli.common import echo, is_quiet, say_background
    from sd3d.core.progress import Progress
    from sd3d.workflows.run import run_photo

    settings = _settings(**options)
    quiet = is_quiet()
    progress = Progress(enabled=not quiet, transient=True)
    status = _stage_printer(quiet)
    result = run_photo(
        image,
        output,
        settings,
        progress=progress,
        on_stage=status,
        compile_workers=compile_workers,
        **_passed_on(options),
    )
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


_ENGINE_OPTIONS = (
    _option(
        "engine",
        Annotated[
            str,
            choice_option(
                "--engine",
                choices=ENGINES,
                help="local: one process, one image after another; ray: a Ray cluster (the sd3d 'ray' "
                "extra).",
            ),
        ],
        "local",
    ),
    _option(
        "address",
        Annotated[
            str | None,
            typer.Option(
                "--address",
                metavar="auto|ray://HOST:10001",
                help="Ray cluster to join (default: start Ray on this machine).",
            ),
        ],
        None,
    ),
    _option(
        "workers",
        Annotated[
            int | None,
            number_option(
                "--workers", kind=int, metavar="N", help="Model-holding workers (default: one per GPU)."
            ),
        ],
        None,
    ),
    _option(
        "gpus_per_worker",
        Annotated[
            float | None,
            number_option(
                "--gpus-per-worker", metavar="G", help="GPUs per worker, may be fractional; 0: CPU only."
            ),
        ],
        None,
    ),
)


def _engine_options(
    engine: str, address: str | None, workers: int | None, gpus_per_worker: float | None, **_ignored
):
    """The Ray options (None for the local engine, which refuses the Ray-only ones)."""
    from sd3d.core.errors import UserError

    if engine == "local":
        given = {"--address": address, "--workers": workers, "--gpus-per-worker": gpus_per_worker}
        for name, value in given.items():
            if value is not None:
                raise UserError(f"{name} needs --engine ray")
        return None
    from sd3d.workflows.engines import ray_engine

    return ray_engine().RayOptions(address=address, workers=workers, gpus_per_worker=gpus_per_worker)


@_with_stage_options(
    _positional(
        "folder",
        Annotated[
            str,
            typer.Argument(
                help="Folder of photos (jpg, png, webp); a URL such as s3://bucket/photos with --engine ray.",
                show_default=False,
            ),
        ],
    ),
    _positional(
        "output",
        Annotated[
            str,
            typer.Option(
                "--output",
                "-o",
                help="Output folder: one sub-folder per photo (a URL with --engine ray).",
                show_default=False,
            ),
        ],
    ),
    trailing=_ENGINE_OPTIONS,
)
def batch(folder: str, output: str, **options) -> None:
    from cli.common import progress
    from sd3d.core.errors import UserError
    from sd3d.workflows.run import BatchAborted, run_batch
    from sd3d.workflows.storage import is_url

    settings = _settings(**options)
    ray_options = _engine_options(**options)
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
