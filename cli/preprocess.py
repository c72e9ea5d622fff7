"""``sd3d preprocess``: photo -> recentred 256x256 RGBA conditioning image (the official preprocessing).

Options are typed and parsed by :mod:`cli.common`'s parsers, so every bad value (unknown backend,
``--crop-size abc``) is one ``error:`` line and exit code 2, like every other user error; the work is
done by :func:`sd3d.preprocess.prepare_input`.
"""

from pathlib import Path
from typing import Annotated

import typer

from cli.common import Background, CropSize, MaxPixels, WeightsDir, retold
from sd3d.core import defaults

ObjectSize = retold(CropSize, "Object size in the 256x256 input (1..256), or -1 for no crop.")
RembgFolder = retold(WeightsDir, "Where rembg's u2netp.onnx is looked up.")


def register(app: typer.Typer) -> None:
    app.command(
        "preprocess",
        help="Find the object in a photo and recentre it into the 256x256 RGBA input SyncDreamer expects.",
    )(preprocess)


def preprocess(
    image: Annotated[
        Path, typer.Argument(help="Input photo (PNG, JPEG, WebP, TIFF, ...).", show_default=False)
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Output RGBA image (.png, .webp or .tiff).", show_default=False),
    ],
    crop_size: ObjectSize = defaults.CROP_SIZE,
    background: Background = "auto",
    max_pixels: MaxPixels = None,
    save_model_input: Annotated[
        Path | None,
        typer.Option(
            "--save-model-input",
            help="Also write the white-composited RGB the model sees.",
            show_default=False,
        ),
    ] = None,
    weights_dir: RembgFolder = None,
) -> None:
    from cli.common import echo, say_background
    from sd3d.core.errors import UserError
    from sd3d.preprocess import (
        RGB_SUFFIXES,
        RGBA_SUFFIXES,
        check_crop_size,
        check_output_path,
        prepare_input,
        save_prepared,
    )

    crop = check_crop_size(crop_size)
    check_output_path(output, RGBA_SUFFIXES, "output")
    if save_model_input is not None:
        check_output_path(save_model_input, RGB_SUFFIXES, "model input image")
        if save_model_input.resolve() == output.resolve():
            raise UserError(f"--save-model-input must differ from the output path ({output})")

    prepared = prepare_input(
        image, crop_size=crop, background=background, max_pixels=max_pixels, weights_dir=weights_dir
    )
    save_prepared(prepared, output, save_model_input)

    left, top, right, bottom = prepared.crop_box
    echo(
        f"wrote {output} (background: {prepared.background}, crop box: {left},{top},{right},{bottom} "
        f"of {prepared.source_size[0]}x{prepared.source_size[1]}, crop size {prepared.crop_size})"
    )
    if save_model_input is not None:
        echo(f"wrote {save_model_input}")
    say_background(prepared.background, prepared.background_note)
