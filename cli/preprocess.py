"""``sd3d preprocess``: photo -> recentred 256x256 RGBA conditioning image (the official preprocessing).

Options are taken as text and parsed here so that every bad value (unknown backend, ``--crop-size
abc``) is one ``error:`` line and exit code 2, like every other user error; the work is done by
:func:`sd3d.preprocess.prepare_input`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import BACKGROUND_METAVAR, max_pixels_option


def register(app: typer.Typer) -> None:
    app.command(
        "preprocess",
        help="Find the object in a photo and recentre it into the 256x256 RGBA input SyncDreamer expects.",
    )(preprocess)


def _parse_int(text: str | None, option: str) -> int | None:
    from sd3d.core.errors import UserError

    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        raise UserError(f"{option} must be an integer, got {text!r}") from None


def preprocess(
    image: Path = typer.Argument(..., help="Input photo (PNG, JPEG, WebP, TIFF, ...).", show_default=False),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Output RGBA image (.png, .webp or .tiff).", show_default=False
    ),
    crop_size: str = typer.Option(
        "200",
        "--crop-size",
        metavar="INT",
        help="Object size in the 256x256 input (1..256), or -1 for no crop.",
    ),
    background: str = typer.Option(
        "auto",
        "--background",
        "-b",
        metavar=BACKGROUND_METAVAR,
        help="Foreground backend. auto: the image's alpha if it has one, "
        "else rembg if its model is installed, else GrabCut.",
    ),
    max_pixels: str = max_pixels_option(),
    save_model_input: Path = typer.Option(
        None,
        "--save-model-input",
        help="Also write the white-composited RGB the model sees.",
        show_default=False,
    ),
    weights_dir: Path = typer.Option(
        None, "--weights-dir", help="Where rembg's u2netp.onnx is looked up.", show_default=False
    ),
) -> None:
    from cli.common import echo, parse_max_pixels, say_background
    from sd3d.background import check_backend_name
    from sd3d.core.errors import UserError
    from sd3d.preprocess import (
        RGB_SUFFIXES,
        RGBA_SUFFIXES,
        check_crop_size,
        check_output_path,
        prepare_input,
        save_prepared,
    )

    crop = check_crop_size(_parse_int(crop_size, "--crop-size"))
    limit = parse_max_pixels(max_pixels)
    method = check_backend_name(background)
    check_output_path(output, RGBA_SUFFIXES, "output")
    if save_model_input is not None:
        check_output_path(save_model_input, RGB_SUFFIXES, "model input image")
        if save_model_input.resolve() == output.resolve():
            raise UserError(f"--save-model-input must differ from the output path ({output})")

    prepared = prepare_input(
        image, crop_size=crop, background=method, max_pixels=limit, weights_dir=weights_dir
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
