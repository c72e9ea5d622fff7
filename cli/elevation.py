"""``sd3d elevation``: estimate the input photo's camera elevation (no weights needed with --views)."""

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.common import AsJson, Background, CropSize, Device, MaxPixels, Seed, WeightsDir, retold
from sd3d.core import defaults

GeneratorSeed = retold(Seed, "Seed for generating the views (without --views).")
GeneratorWeightsDir = retold(WeightsDir, "Weights folder (generator path only).")
GeneratorDevice = retold(Device, "Device for the generator (without --views).")
RecentringSize = retold(CropSize, "Recentring as for the generator (object size, px).")
CurveJson = retold(AsJson, "Print one JSON object with the score curve.")


def register(app: typer.Typer) -> None:
    app.command("elevation", help="Estimate the elevation of a photo's camera from 16 views of the object.")(
        elevation
    )


def elevation(
    photo: Annotated[Path, typer.Argument(help="Input photo (RGBA with the object's alpha, or any image).")],
    views: Annotated[
        Path | None,
        typer.Option(
            "--views", help="Views folder (000..015.png [+ cameras.json]) at the 16 target cameras."
        ),
    ] = None,
    as_json: CurveJson = False,
    crop_size: RecentringSize = defaults.CROP_SIZE,
    background: Background = "auto",
    max_pixels: MaxPixels = None,
    seed: GeneratorSeed = defaults.SEED,
    weights_dir: GeneratorWeightsDir = None,
    device: GeneratorDevice = "auto",
) -> None:
    from cli.common import echo, progress, say_background
    from sd3d.preprocess import prepare_input
    from sd3d.workflows.elevation import estimate_elevation, generate_views_for_estimation

    prepared = prepare_input(photo, crop_size=crop_size, background=background, max_pixels=max_pixels)
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
