"""``sd3d novel-view``: one photo -> the object seen from a camera moved by a relative pose (Zero123-XL).

Options are taken as text and parsed here so that every bad value is one ``error:`` line and exit
code 2; the work is done by :func:`sd3d.pipelines.zero123.novel_view`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import BACKGROUND_METAVAR, SEED_DEFAULT, max_pixels_option
from cli.common import parse_number as _number
from sd3d.core import defaults


def register(app: typer.Typer) -> None:
    app.command(
        "novel-view",
        help="Zero123-XL: render the object in a photo from a camera moved by a relative pose "
        "(degrees up / to the right, units further away).",
    )(novel_view)


def output_paths(output: Path, samples: int) -> list[Path]:
    """``view.png`` for one sample; ``view-0.png``, ``view-1.png``, ... for several."""
    if samples == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(samples)]


def novel_view(
    image: Path = typer.Argument(..., help="Input photo (PNG, JPEG, WebP, ...).", show_default=False),
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        help="Output image (.png, .webp, .jpg, ...); -0, -1, ... are added for --samples > 1.",
        show_default=False,
    ),
    d_elevation: str = typer.Option(
        "0", "--d-elevation", metavar="DEG", help="Move the camera up by this many degrees (negative: down)."
    ),
    d_azimuth: str = typer.Option(
        "0",
        "--d-azimuth",
        metavar="DEG",
        help="Move the camera around the object by this many degrees, to its right (counter-clockwise seen from above).",
    ),
    d_radius: str = typer.Option(
        "0",
        "--d-radius",
        metavar="UNITS",
        help="Move the camera away (positive) or closer; trained for |d| <= 0.7.",
    ),
    samples: str = typer.Option("1", "--samples", "-n", metavar="N", help="Number of samples (1..64)."),
    steps: str = typer.Option(
        str(defaults.ZERO123_STEPS), "--steps", metavar="N", help="DDIM steps (the demo UI used 75)."
    ),
    cfg: str = typer.Option(
        str(defaults.ZERO123_CFG), "--cfg", metavar="SCALE", help="Classifier-free guidance scale."
    ),
    seed: str = typer.Option(
        SEED_DEFAULT, "--seed", metavar="INT", help="Random seed (same seed, same views)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: str = typer.Option(
        "auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16."
    ),
    weights: Path = typer.Option(
        None,
        "--weights",
        help="Zero123 checkpoint file (default: zero123-xl.ckpt in the weights folder).",
        show_default=False,
    ),
    weights_dir: Path = typer.Option(None, "--weights-dir", help="Weights folder.", show_default=False),
    background: str = typer.Option(
        "auto",
        "--background",
        "-b",
        metavar=BACKGROUND_METAVAR,
        help="Foreground backend for the demo preprocessing.",
    ),
    no_preprocess: bool = typer.Option(
        False,
        "--no-preprocess",
        help="Skip the crop-and-recentre step (the photo must already be a centred object on white or transparent).",
    ),
    max_pixels: str = max_pixels_option(),
) -> None:
    from cli.common import echo, parse_max_pixels, progress, say_background
    from sd3d.background import check_backend_name
    from sd3d.core.errors import UserError
    from sd3d.core.zero123_pose import pose_from_deltas
    from sd3d.pipelines.zero123 import Zero123Settings, load_model, novel_view, prepare_zero123_input
    from sd3d.preprocess import RGB_SUFFIXES, check_output_path

    d_e = _number(d_elevation, "--d-elevation")
    d_a = _number(d_azimuth, "--d-azimuth")
    d_r = _number(d_radius, "--d-radius")
    n = _number(samples, "--samples", int)
    n_steps = _number(steps, "--steps", int)
    scale = _number(cfg, "--cfg")
    seed_value = _number(seed, "--seed", int)
    if not 0 <= seed_value < 2**63:
        raise UserError(f"--seed must be between 0 and 2**63-1, got {seed_value}")
    settings = Zero123Settings(steps=n_steps, cfg=scale, seed=seed_value, samples=n).check()
    method = check_backend_name(background)
    limit = parse_max_pixels(max_pixels)
    paths = [check_output_path(p, RGB_SUFFIXES, "output") for p in output_paths(output, n)]

    prepared = prepare_zero123_input(
        image, preprocess=not no_preprocess, background=method, max_pixels=limit, weights_dir=weights_dir
    )
    model = load_model(weights, weights_dir, device, dtype)
    views = novel_view(prepared, d_e, d_a, d_r, settings, progress=progress(), model=model)
    _save_all(paths, views)
    T = ", ".join(f"{v:.4g}" for v in pose_from_deltas(d_e, d_a, d_r))
    for path in paths:
        echo(f"wrote {path}")
    echo(
        f"pose T = [{T}], seed {seed_value}, {n_steps} steps, cfg {scale:g}, unet weights: {model.unet_weights}"
    )
    if prepared.preprocessed:
        say_background(prepared.background, prepared.background_note)


def _save_all(paths: list[Path], views: list) -> None:
    """Write every view atomically: all files appear, or none."""
    from contextlib import ExitStack

    from PIL import Image

    from sd3d.core.io import atomic_path

    with ExitStack() as stack:
        for path, view in zip(paths, views, strict=True):
            tmp = stack.enter_context(atomic_path(path))
            image = Image.fromarray(view, "RGB")
            if path.suffix.lower() == ".webp":
                image.save(tmp, lossless=True)
            elif path.suffix.lower() in (".jpg", ".jpeg"):
                image.save(tmp, quality=95)
            else:
                image.save(tmp)
