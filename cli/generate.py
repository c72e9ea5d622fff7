"""``sd3d generate``: one photo -> the 16 SyncDreamer views (a views folder).

Options are read as text and checked here so every bad value is one ``error:`` line with exit code
2; the work is done by :mod:`sd3d.pipelines.syncdreamer`. Cheap checks (options, output folder, input image,
weights file) all run before the model is loaded.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import BACKGROUND_METAVAR, SEED_DEFAULT, max_pixels_option
from cli.common import parse_number as _number
from sd3d.core import defaults


def register(app: typer.Typer) -> None:
    app.command(
        "generate",
        help="SyncDreamer: generate 16 consistent views of the object in a photo (a views folder for "
        "`sd3d reconstruct`).",
    )(generate)


def generate(
    image: Path = typer.Argument(
        ...,
        help="Input photo, or an already prepared 256x256 RGBA from `sd3d preprocess`.",
        show_default=False,
    ),
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        help="Views folder to write: new, empty, or written by sd3d (its earlier views are replaced).",
        show_default=False,
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Also write into a non-empty folder sd3d did not write (none of its files is replaced).",
    ),
    elevation: str = typer.Option(
        f"{defaults.INPUT_ELEVATION_DEG:g}",
        "--elevation",
        "-e",
        metavar="DEG",
        help="Elevation of the input view in degrees (the model was trained on -10..40).",
    ),
    samples: str = typer.Option(
        "1", "--samples", "-n", metavar="N", help="Independent 16-view sets (1..64)."
    ),
    steps: str = typer.Option(
        str(defaults.SYNCDREAMER_STEPS), "--steps", metavar="N", help="Sampling steps."
    ),
    cfg: str = typer.Option(
        "auto",
        "--cfg",
        metavar="SCALE",
        help=f"Classifier-free guidance scale (auto: {defaults.SYNCDREAMER_CFG} for SyncDreamer, "
        f"{defaults.ZERO123_CFG} for Zero123).",
    ),
    eta: str = typer.Option(
        str(defaults.DDIM_ETA), "--eta", metavar="ETA", help="DDIM eta (1 = the official stochastic sampler)."
    ),
    seed: str = typer.Option(
        SEED_DEFAULT, "--seed", metavar="INT", help="Random seed (same seed, same views)."
    ),
    batch_view_num: str = typer.Option(
        "auto",
        "--batch-view-num",
        metavar="N",
        help="Views per UNet chunk (memory knob; auto: from free memory).",
    ),
    crop_size: str = typer.Option(
        "auto",
        "--crop-size",
        metavar="PX",
        help="SyncDreamer: object size after recentring (150-200; auto: "
        f"{defaults.CROP_SIZE}); -1 keeps the framing: use "
        "it for a 256x256 RGBA made by `sd3d preprocess`, which is then used as is. (Zero123 crops as "
        "its demo does.)",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option(
        "auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16."
    ),
    sampler: str = typer.Option(
        "ddim",
        "--sampler",
        help="SyncDreamer: ddim (official), dpmpp or unipc. Zero123: independent (= ddim) or "
        "stochastic-conditioning (3DiM).",
    ),
    ddim_discretize: str = typer.Option(
        "uniform",
        "--ddim-discretize",
        metavar="uniform|quad",
        help="SyncDreamer DDIM timesteps: uniform (official default) or quad (more of them at low noise).",
    ),
    compile_steps: bool = typer.Option(
        False,
        "--compile",
        help="SyncDreamer on a GPU: torch.compile the denoiser (1.45 s instead of 2.5 s per image on an "
        "H100) after ~1 min of compiling (~8 s with a warm cache): worth it for many images per process.",
    ),
    model_name: str = typer.Option(
        "syncdreamer",
        "--model",
        help="syncdreamer (synchronized 16 views) or zero123 (each view on its own: the paper's baseline).",
    ),
    weights: Path = typer.Option(
        None,
        "--weights",
        help="SyncDreamer checkpoint (.ckpt or .safetensors; default: syncdreamer-pretrain.ckpt in the weights folder).",
        show_default=False,
    ),
    weights_dir: Path = typer.Option(None, "--weights-dir", help="Weights folder.", show_default=False),
    background: str = typer.Option(
        "auto", "--background", "-b", metavar=BACKGROUND_METAVAR, help="Foreground backend for preprocessing."
    ),
    max_pixels: str = max_pixels_option(),
) -> None:
    from cli.common import echo, parse_max_pixels, progress, say_background
    from sd3d.background import check_backend_name
    from sd3d.core.device import resolve_device, resolve_dtype
    from sd3d.core.errors import UserError
    from sd3d.pipelines.syncdreamer import (
        GenerationSettings,
        as_prepared,
        check_output_folder,
        generated_names,
        load_model,
        run_generation,
        weights_path,
        write_generated,
    )

    model_name = model_name.strip().lower()
    if model_name not in ("syncdreamer", "zero123"):
        raise UserError(f"unknown --model {model_name!r}: use syncdreamer or zero123")
    ddim_discretize = ddim_discretize.strip().lower()
    if model_name == "zero123":
        if ddim_discretize != "uniform":
            raise UserError("--ddim-discretize is SyncDreamer's DDIM option: drop it for --model zero123")
        _generate_zero123(
            image=image,
            output=output,
            elevation=elevation,
            samples=samples,
            steps=steps,
            cfg=cfg,
            seed=seed,
            eta=eta,
            batch_view_num=batch_view_num,
            crop_size=crop_size,
            compile_steps=compile_steps,
            device=device,
            dtype=dtype,
            sampler=sampler,
            weights=weights,
            weights_dir=weights_dir,
            background=background,
            max_pixels=max_pixels,
            overwrite=overwrite,
        )
        return
    settings = GenerationSettings(
        elevation_deg=_number(elevation, "--elevation"),
        steps=_number(steps, "--steps", int),
        cfg=defaults.SYNCDREAMER_CFG if cfg.strip() == "auto" else _number(cfg, "--cfg"),
        eta=_number(eta, "--eta"),
        seed=_number(seed, "--seed", int),
        samples=_number(samples, "--samples", int),
        batch_view_num=None
        if batch_view_num.strip() == "auto"
        else _number(batch_view_num, "--batch-view-num", int),
        sampler=sampler.strip().lower(),
        ddim_discretize=ddim_discretize,
    ).check()
    crop = defaults.CROP_SIZE if crop_size.strip() == "auto" else _number(crop_size, "--crop-size", int)
    method = check_backend_name(background)
    limit = parse_max_pixels(max_pixels)
    torch_device = resolve_device(device)  # resolved once here; the library gets torch objects
    torch_dtype = resolve_dtype(dtype, torch_device)
    check_output_folder(output, overwrite, generated_names(settings.samples))
    prepared = as_prepared(image, crop, method, weights_dir, limit)
    path = weights_path(weights, weights_dir)

    model = load_model(path, device=torch_device, dtype=torch_dtype)
    views = run_generation(
        model, prepared, settings, dtype=torch_dtype, progress=progress(), use_compile=compile_steps
    )
    write_generated(output, views, prepared.rgba, overwrite=overwrite)
    info = views[0].provenance
    what = "16 views" if settings.samples == 1 else f"{settings.samples} x 16 views"
    echo(f"wrote {what} to {output}")
    echo(
        f"elevation {settings.elevation_deg:g} deg, seed {settings.seed}, {settings.steps} {settings.sampler} steps, "
        f"cfg {settings.cfg:g}, {info['settings']['dtype']} on {info['device']}, {info['seconds']:.1f} s"
    )
    say_background(prepared.background, prepared.background_note)


def _generate_zero123(
    *,
    image,
    output,
    elevation,
    samples,
    steps,
    cfg,
    seed,
    eta,
    batch_view_num,
    crop_size,
    compile_steps,
    device,
    dtype,
    sampler,
    weights,
    weights_dir,
    background,
    max_pixels,
    overwrite,
) -> None:
    """``--model zero123``: the same 16 target cameras, each view from Zero123 (independently, or with
    3DiM stochastic conditioning); same output layout as SyncDreamer's. Options that only mean
    something for SyncDreamer are refused rather than silently ignored."""
    from dataclasses import replace

    import numpy as np

    from cli.common import echo, parse_max_pixels, progress, say_background
    from sd3d.background import check_backend_name
    from sd3d.core.device import resolve_device, resolve_dtype
    from sd3d.core.errors import UserError
    from sd3d.pipelines.syncdreamer import (
        check_batch_view_num,
        check_output_folder,
        generated_names,
        write_generated,
    )
    from sd3d.pipelines.zero123 import Zero123Settings, generate_views_zero123, prepare_zero123_input
    from sd3d.pipelines.zero123 import load_model as load_zero123_model

    sampler = sampler.strip().lower()
    sampler = {"ddim": "independent"}.get(sampler, sampler)
    if sampler not in ("independent", "stochastic-conditioning"):
        raise UserError(
            f"--sampler {sampler!r} is not available for Zero123: use independent or stochastic-conditioning"
        )
    if crop_size.strip() != "auto":
        raise UserError(
            "--crop-size is SyncDreamer's recentring; Zero123 crops as its demo does: drop --crop-size"
        )
    if compile_steps:
        raise UserError("--compile is for SyncDreamer's denoiser; Zero123 runs without it: drop --compile")
    views_per_call = (
        8
        if batch_view_num.strip() == "auto"
        else check_batch_view_num(_number(batch_view_num, "--batch-view-num", int))
    )
    elev = _number(elevation, "--elevation")
    n = _number(samples, "--samples", int)
    if not 1 <= n <= 64:
        raise UserError("--samples must be between 1 and 64")
    n_steps = _number(steps, "--steps", int)
    scale = defaults.ZERO123_CFG if cfg.strip() == "auto" else _number(cfg, "--cfg")
    base_seed = _number(seed, "--seed", int)
    eta_value = _number(eta, "--eta")
    settings = Zero123Settings(
        steps=n_steps,
        cfg=scale,
        eta=eta_value,
        seed=base_seed,
        samples=n,
        sampler=sampler,
        batch_view_num=views_per_call,
    ).check()
    method = check_backend_name(background)
    limit = parse_max_pixels(max_pixels)
    torch_device = resolve_device(device)  # resolved once here; the library gets torch objects
    torch_dtype = resolve_dtype(dtype, torch_device)
    check_output_folder(output, overwrite, generated_names(n))
    prepared = prepare_zero123_input(image, background=method, max_pixels=limit, weights_dir=weights_dir)
    model = load_zero123_model(weights, weights_dir, torch_device, torch_dtype)
    views = [
        generate_views_zero123(
            prepared, elev, replace(settings, seed=base_seed + i), progress=progress(), model=model
        )
        for i in range(n)
    ]
    rgba = np.concatenate(
        [np.rint(prepared.image * 255).astype(np.uint8), np.full((256, 256, 1), 255, np.uint8)], axis=-1
    )
    write_generated(output, views, rgba, overwrite=overwrite)
    echo(f"wrote {n} x 16 Zero123 views ({sampler}) to {output}")
    say_background(prepared.background, prepared.background_note)
