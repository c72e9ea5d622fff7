"""``sd3d novel-view``: one photo -> the object seen from a camera moved by a relative pose (Zero123-XL).

Options are typed and parsed by :mod:`cli.common`'s parsers, so every bad value is one ``error:``
line and exit code 2; the work is done by :func:`sd3d.pipelines.zero123.novel_view`.
"""

from pathlib import Path
from typing import Annotated

import typer

from cli.common import (
    Background,
    Cfg,
    Device,
    Dtype,
    MaxPixels,
    Samples,
    Seed,
    Steps,
    Weights,
    WeightsDir,
    number_option,
    retold,
)
from sd3d.core import defaults

ZeroSteps = retold(Steps, "DDIM steps (the demo UI used 75).")
ZeroWeights = retold(Weights, "Zero123 checkpoint file (default: zero123-xl.ckpt in the weights folder).")
DemoBackground = retold(Background, "Foreground backend for the demo preprocessing.")


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
    image: Annotated[Path, typer.Argument(help="Input photo (PNG, JPEG, WebP, ...).", show_default=False)],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Output image (.png, .webp, .jpg, ...); -0, -1, ... are added for --samples > 1.",
            show_default=False,
        ),
    ],
    d_elevation: Annotated[
        float,
        number_option(
            "--d-elevation", metavar="DEG", help="Move the camera up by this many degrees (negative: down)."
        ),
    ] = 0.0,
    d_azimuth: Annotated[
        float,
        number_option(
            "--d-azimuth",
            metavar="DEG",
            help="Move the camera around the object by this many degrees, to its right "
            "(counter-clockwise seen from above).",
        ),
    ] = 0.0,
    d_radius: Annotated[
        float,
        number_option(
            "--d-radius",
            metavar="UNITS",
            help="Move the camera away (positive) or closer; trained for |d| <= 0.7.",
        ),
    ] = 0.0,
    samples: Samples = 1,
    steps: ZeroSteps = defaults.ZERO123_STEPS,
    cfg: Cfg = defaults.ZERO123_CFG,
    seed: Seed = defaults.SEED,
    device: Device = "auto",
    dtype: Dtype = "auto",
    weights: ZeroWeights = None,
    weights_dir: WeightsDir = None,
    background: DemoBackground = "auto",
    no_preprocess: Annotated[
        bool,
        typer.Option(
            "--no-preprocess",
            help="Skip the crop-and-recentre step (the photo must already be a centred object on white "
            "or transparent).",
        ),
    ] = False,
    max_pixels: MaxPixels = None,
) -> None:
    from cli.common import echo, progress, say_background
    from sd3d.core.zero123_pose import pose_from_deltas
    from sd3d.pipelines.zero123 import Zero123Settings, load_model, novel_view, prepare_zero123_input
    from sd3d.preprocess import RGB_SUFFIXES, check_output_path

    settings = Zero123Settings(steps=steps, cfg=cfg, seed=seed, samples=samples).check()
    paths = [check_output_path(p, RGB_SUFFIXES, "output") for p in output_paths(output, samples)]
    prepared = prepare_zero123_input(
        image,
        preprocess=not no_preprocess,
        background=background,
        max_pixels=max_pixels,
        weights_dir=weights_dir,
    )
    model = load_model(weights, weights_dir, device, dtype)
    views = novel_view(prepared, d_elevation, d_azimuth, d_radius, settings, progress=progress(), model=model)
    _save_all(paths, views)
    pose = ", ".join(f"{v:.4g}" for v in pose_from_deltas(d_elevation, d_azimuth, d_radius))
    for path in paths:
        echo(f"wrote {path}")
    echo(f"pose T = [{pose}], seed {seed}, {steps} steps, cfg {cfg:g}, unet weights: {model.unet_weights}")
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
