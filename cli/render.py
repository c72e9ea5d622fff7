"""``sd3d render``: RGBA (+ depth) renders of a mesh at the 16 target cameras or any orbit."""

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from cli.common import Device, Overwrite, number_list_parser, number_option, word


def register(app: typer.Typer) -> None:
    app.command("render", help="Render a mesh (OBJ/GLB/PLY) to a views folder (RGBA + optional depth).")(
        render
    )


def render(
    mesh: Annotated[Path, typer.Argument(help="Mesh file: .obj (+ .mtl + textures), .glb/.gltf, .ply, ...")],
    output: Annotated[
        Path,
        typer.Option(
            "--output", "-o", help="Views folder to write: new, empty, or written by sd3d (replaced)."
        ),
    ],
    elevation: Annotated[
        float | None,
        number_option(
            "--elevation", help="Orbit elevation in degrees (default: 30, the target views' elevation)."
        ),
    ] = None,
    azimuths: Annotated[
        Sequence[float] | None,
        typer.Option(
            "--azimuths",
            parser=number_list_parser("--azimuths", what="degrees, e.g. 0,90,180,270"),
            metavar="DEG,DEG,...",
            help="Comma-separated azimuths in degrees (default: the 16 target views, i*22.5).",
        ),
    ] = None,
    distance: Annotated[float, number_option("--distance", help="Camera distance from the origin.")] = 1.5,
    size: Annotated[
        int,
        number_option("--size", kind=int, at_least=8, at_most=4096, help="Image size in pixels (square)."),
    ] = 256,
    normalize: Annotated[
        bool,
        typer.Option(
            "--normalize/--no-normalize", help="Scale the largest bbox side to 1 and centre it at 0."
        ),
    ] = True,
    up: Annotated[
        str, typer.Option("--up", parser=word, help="Up axis of the file: auto (glTF: y, others: z), y or z.")
    ] = "auto",
    yaw: Annotated[
        float, number_option("--yaw", help="Rotate about +Z by this many degrees (before normalising).")
    ] = 0.0,
    texture: Annotated[
        Path | None, typer.Option("--texture", help="Use this image as the texture (e.g. missing MTL).")
    ] = None,
    depth: Annotated[
        bool, typer.Option("--depth", help="Also write NNN-depth.png (uint16, like the GT renders).")
    ] = False,
    supersample: Annotated[
        int,
        number_option(
            "--supersample", kind=int, at_least=1, at_most=8, help="Samples per pixel side (coverage)."
        ),
    ] = 3,
    device: Device = "auto",
    overwrite: Overwrite = False,
) -> None:
    from cli.common import echo, progress
    from recon import raster
    from sd3d.core.device import resolve_device
    from sd3d.core.io import check_output_dir

    dev = resolve_device(device)
    cameras = raster.orbit_cameras(elevation, None if azimuths is None else list(azimuths), distance, size)
    check_output_dir(output, overwrite=overwrite, planned=raster.render_names(len(cameras), depth))
    loaded = raster.load_mesh(mesh, up=up, yaw_deg=yaw, normalize=normalize, texture=texture)
    renders = raster.render_mesh(loaded, cameras, supersample=supersample, device=dev, progress=progress())
    extra = {
        "source_mesh": str(mesh),
        "normalization": {
            "up_axis": up,
            "yaw_deg": yaw,
            "normalized": normalize,
            "raw_to_world": loaded.transform.tolist(),
            "note": "world = raw_to_world @ [x,y,z,1]"
            + ("; largest bbox side 1, bbox centred at 0" if normalize else ""),
        },
    }
    out = raster.write_renders(output, renders, cameras, depth=depth, extra=extra, overwrite=overwrite)
    echo(f"wrote {len(cameras)} views to {out}")
