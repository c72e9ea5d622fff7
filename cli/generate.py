"""``sd3d generate``: one photo -> the 16 SyncDreamer views (a views folder), or Zero123's baseline.

Options are typed and parsed by :mod:`cli.common`'s parsers, so a bad value is one ``error:`` line
with exit code 2 before anything runs; the work is done by :mod:`sd3d.pipelines.syncdreamer` and
:mod:`sd3d.pipelines.zero123`. Cheap checks (settings, output folder, input image, weights file) all
run before the model is loaded.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.common import (
    Background,
    BatchViewNum,
    Device,
    Dtype,
    Eta,
    GpuMemory,
    MaxPixels,
    Overwrite,
    Samples,
    Seed,
    Steps,
    Weights,
    WeightsDir,
    choice_option,
    number_option,
    word,
)
from sd3d.core import defaults

MODELS = ("syncdreamer", "zero123")
ZERO123_SAMPLER_NAMES = {"ddim": "independent"}  # Zero123's own DDIM is its independent sampler
LOW, HIGH = defaults.TRAINED_ELEVATION_RANGE_DEG

# generate's own options (the ones other commands take too are cli.common's)
InputImage = Annotated[
    Path,
    typer.Argument(
        help="Input photo, or an already prepared 256x256 RGBA from `sd3d preprocess`.",
        show_default=False,
    ),
]
ViewsFolder = Annotated[
    Path,
    typer.Option(
        "--output",
        "-o",
        help="Views folder to write: new, empty, or written by sd3d (its earlier views are replaced).",
        show_default=False,
    ),
]
InputElevation = Annotated[
    float,
    number_option(
        "--elevation",
        "-e",
        metavar="DEG",
        help=f"Elevation of the input view in degrees (the model was trained on {LOW:g}..{HIGH:g}).",
    ),
]
AutoCfg = Annotated[
    float | None,
    number_option(
        "--cfg",
        auto=True,
        metavar="SCALE",
        help=f"Classifier-free guidance scale (auto: {defaults.SYNCDREAMER_CFG:g} for SyncDreamer, "
        f"{defaults.ZERO123_CFG:g} for Zero123).",
    ),
]
AutoCropSize = Annotated[
    int | None,
    number_option(
        "--crop-size",
        kind=int,
        auto=True,
        metavar="PX",
        help=f"SyncDreamer: object size after recentring (150-200; auto: {defaults.CROP_SIZE}); -1 "
        "keeps the framing: use it for a 256x256 RGBA made by `sd3d preprocess`, which is then used "
        "as is. (Zero123 crops as its demo does.)",
    ),
]
Sampler = Annotated[
    str,
    typer.Option(
        "--sampler",
        parser=word,
        help="SyncDreamer: ddim (official), dpmpp or unipc. Zero123: independent (= ddim) or "
        "stochastic-conditioning (3DiM).",
    ),
]
DDIMDiscretize = Annotated[
    str,
    typer.Option(
        "--ddim-discretize",
        parser=word,
        metavar="uniform|quad",
        help="SyncDreamer DDIM timesteps: uniform (official default) or quad (more of them at low noise).",
    ),
]
Compile = Annotated[
    bool,
    typer.Option(
        "--compile",
        help="SyncDreamer on a GPU: torch.compile the denoiser (1.45 s per image on an H100 against a "
        "2.5 s default then; ~1.8 s is today's default) after ~1 min of compiling (~8 s with a warm "
        "cache): worth it for many images per process.",
    ),
]
Model = Annotated[
    str,
    choice_option(
        "--model",
        choices=MODELS,
        help="syncdreamer (synchronized 16 views) or zero123 (each view on its own: the paper's baseline).",
    ),
]


def register(app: typer.Typer) -> None:
    app.command(
        "generate",
        help="SyncDreamer: generate 16 consistent views of the object in a photo (a views folder for "
        "`sd3d reconstruct`).",
    )(generate)


def generate(
    image: InputImage,
    output: ViewsFolder,
    overwrite: Overwrite = False,
    elevation: InputElevation = defaults.INPUT_ELEVATION_DEG,
    samples: Samples = 1,
    steps: Steps = defaults.SYNCDREAMER_STEPS,
    cfg: AutoCfg = None,
    eta: Eta = defaults.DDIM_ETA,
    seed: Seed = defaults.SEED,
    batch_view_num: BatchViewNum = None,
    crop_size: AutoCropSize = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    gpu_memory: GpuMemory = None,
    sampler: Sampler = "ddim",
    ddim_discretize: DDIMDiscretize = "uniform",
    compile_steps: Compile = False,
    model_name: Model = "syncdreamer",
    weights: Weights = None,
    weights_dir: WeightsDir = None,
    background: Background = "auto",
    max_pixels: MaxPixels = None,
) -> None:
    from contextlib import nullcontext

    from sd3d.models.warm_start import start_early_workers

    # before this process imports PyTorch: the kernel warm-up's workers import theirs meanwhile;
    # leaving the block ends them (the warm-up's own close, or nothing to do, after a finished run)
    early = start_early_workers(device) if model_name == "syncdreamer" else None
    with early or nullcontext() as compile_workers:
        from sd3d.core.device import limit_gpu_memory, resolve_device, resolve_dtype
        from sd3d.pipelines.syncdreamer import GenerationSettings, check_output_folder, generated_names

        if model_name == "zero123":
            _refuse_syncdreamer_options(crop_size, compile_steps, ddim_discretize)
            settings = _zero123_settings(steps, cfg, eta, seed, samples, sampler, batch_view_num)
        else:
            settings = GenerationSettings(
                elevation_deg=elevation,
                steps=steps,
                cfg=defaults.SYNCDREAMER_CFG if cfg is None else cfg,
                eta=eta,
                seed=seed,
                samples=samples,
                batch_view_num=batch_view_num,
                sampler=sampler,
                ddim_discretize=ddim_discretize,
            ).check()
        torch_device = resolve_device(device)  # resolved once here; the library gets torch objects
        limit_gpu_memory(torch_device, gpu_memory)
        torch_dtype = resolve_dtype(dtype, torch_device)
        job = _Job(
            image, output, overwrite, background, max_pixels, torch_device, torch_dtype, weights, weights_dir
        )
        check_output_folder(output, overwrite, generated_names(samples))
        if model_name == "zero123":
            _run_zero123(job, settings, elevation)
        else:
            crop = defaults.CROP_SIZE if crop_size is None else crop_size
            _run_syncdreamer(job, settings, crop, compile_steps, compile_workers)


@dataclass(frozen=True)
class _Job:
    """What a run of either model needs besides its settings: input, output, device, weights."""

    image: Path
    output: Path
    overwrite: bool
    background: str
    max_pixels: int | None
    device: Any  # torch.device (torch is imported only when a command runs)
    dtype: Any  # torch.dtype
    weights: Path | None
    weights_dir: Path | None


def _run_syncdreamer(job: _Job, settings, crop_size: int, compile_steps: bool, compile_workers=None) -> None:
    """Prepare, load, sample and write SyncDreamer's views, then say what was made (``compile_workers``:
    the kernel warm-up's, started before PyTorch was imported)."""
    from cli.common import echo, progress, say_background
    from sd3d.pipelines import syncdreamer as sd

    prepared = sd.as_prepared(job.image, crop_size, job.background, job.weights_dir, job.max_pixels)
    model = sd.load_model(
        sd.weights_path(job.weights, job.weights_dir),
        device=job.device,
        dtype=job.dtype,
        compile_workers=compile_workers,
    )
    views = sd.run_generation(
        model, prepared, settings, dtype=job.dtype, progress=progress(), use_compile=compile_steps
    )
    sd.write_generated(job.output, views, prepared.rgba, overwrite=job.overwrite)
    info = views[0].provenance
    what = "16 views" if settings.samples == 1 else f"{settings.samples} x 16 views"
    echo(f"wrote {what} to {job.output}")
    echo(
        f"elevation {settings.elevation_deg:g} deg, seed {settings.seed}, {settings.steps} {settings.sampler} "
        f"steps, cfg {settings.cfg:g}, {info['settings']['dtype']} on {info['device']}, {info['seconds']:.1f} s"
    )
    say_background(prepared.background, prepared.background_note)


def _refuse_syncdreamer_options(crop_size: int | None, compile_steps: bool, ddim_discretize: str) -> None:
    """``--model zero123`` refuses the options that only mean something for SyncDreamer rather than
    silently ignoring them."""
    from sd3d.core.errors import UserError

    if ddim_discretize != "uniform":
        raise UserError("--ddim-discretize is SyncDreamer's DDIM option: drop it for --model zero123")
    if crop_size is not None:
        raise UserError(
            "--crop-size is SyncDreamer's recentring; Zero123 crops as its demo does: drop --crop-size"
        )
    if compile_steps:
        raise UserError("--compile is for SyncDreamer's denoiser; Zero123 runs without it: drop --compile")


def _zero123_settings(steps, cfg, eta, seed, samples, sampler, batch_view_num):
    """Zero123's settings from ``generate``'s options (``auto`` cfg and views per call: its defaults)."""
    from sd3d.core.errors import UserError
    from sd3d.pipelines.syncdreamer import check_batch_view_num
    from sd3d.pipelines.zero123 import SAMPLERS, Zero123Settings

    sampler = ZERO123_SAMPLER_NAMES.get(sampler, sampler)
    if sampler not in SAMPLERS:
        raise UserError(f"--sampler {sampler!r} is not available for Zero123: use {' or '.join(SAMPLERS)}")
    return Zero123Settings(
        steps=steps,
        cfg=Zero123Settings.cfg if cfg is None else cfg,
        eta=eta,
        seed=seed,
        samples=samples,
        sampler=sampler,
        batch_view_num=Zero123Settings.batch_view_num
        if batch_view_num is None
        else check_batch_view_num(batch_view_num),
    ).check()


def _run_zero123(job: _Job, settings, elevation: float) -> None:
    """Zero123's 16 target views for each sample (independently, or with 3DiM stochastic
    conditioning), written in SyncDreamer's layout."""
    from cli.common import echo, progress, say_background
    from sd3d.pipelines.syncdreamer import write_generated
    from sd3d.pipelines.zero123 import generate_view_sets_zero123, load_model, prepare_zero123_input

    prepared = prepare_zero123_input(
        job.image, background=job.background, max_pixels=job.max_pixels, weights_dir=job.weights_dir
    )
    model = load_model(job.weights, job.weights_dir, job.device, job.dtype)
    views = generate_view_sets_zero123(prepared, elevation, settings, model=model, progress=progress())
    write_generated(job.output, views, prepared.opaque_rgba(), overwrite=job.overwrite)
    echo(f"wrote {settings.samples} x 16 Zero123 views ({settings.sampler}) to {job.output}")
    say_background(prepared.background, prepared.background_note)
