"""``sd3d elevation``: estimate the input photo's camera elevation (no weights needed with --views)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from cli.common import BACKGROUND_METAVAR, max_pixels_option
from sd3d import DEFAULT_SEED


def register(app: typer.Typer) -> None:
    app.command("elevation", help="Estimate the elevation of a photo's camera from 16 views of the object.")(
        elevation
    )


def elevation(
    photo: Path = typer.Argument(..., help="Input photo (RGBA with the object's alpha, or any image)."),
    views: Path | None = typer.Option(
        None, "--views", help="Views folder (000..015.png [+ cameras.json]) at the 16 target cameras."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object with the score curve."),
    crop_size: int = typer.Option(
        200, "--crop-size", help="Recentring as for the generator (object size, px)."
    ),
    background: str = typer.Option(
        "auto", "--background", "-b", metavar=BACKGROUND_METAVAR, help="Foreground backend."
    ),
    max_pixels: str = max_pixels_option(),
    seed: int = typer.Option(DEFAULT_SEED, "--seed", help="Seed for generating the views (without --views)."),
    weights_dir: Path = typer.Option(None, "--weights-dir", help="Weights folder (generator path only)."),
    device: str = typer.Option("auto", "--device", help="Device for the generator (without --views)."),
) -> None:
    from cli.common import echo, parse_max_pixels, progress, say_background
    from sd3d.preprocess import prepare_input
    from sd3d.workflows.elevation import estimate_elevation, generate_views_for_estimation

    prepared = prepare_input(
        photo, crop_size=crop_size, background=background, max_pixels=parse_max_pixels(max_pixels)
    )
    if views is None:
        view_set = generate_views_for_estimation(prepared, seed=seed, weights_dir=weights_dir, device=device)
    else:
        from sd3d.core.io import read_views

        view_set = read_views(views)
    mask = prepared.rgba[..., 3].astype("float32") / 255.0
    result = estimate_elevation(mask, view_set, progress=progress())
    if as_json:
        echo(json.dumps({"photo": str(photo), "views": str(views) if views else None, **result.as_dict()}))
    else:
        echo(f"elevation: {result.elevation_deg:.1f} deg (silhouette score {result.score:.3f})")
    say_background(prepared.background, prepared.background_note)
