"""``sd3d render``: RGBA (+ depth) renders of a mesh at the 16 target cameras or any orbit."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("render", help="Render a mesh (OBJ/GLB/PLY) to a views folder (RGBA + optional depth).")(
        render
    )


def _parse_azimuths(text: str | None) -> list[float] | None:
    from sd3d.core.errors import UserError

    if text is None:
        return None
    try:
        values = [float(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise UserError(
            f"--azimuths must be comma-separated degrees, e.g. 0,90,180,270 (got {text!r})"
        ) from None
    if not values:
        raise UserError("--azimuths is empty")
    return values


def render(
    mesh: Path = typer.Argument(..., help="Mesh file: .obj (+ .mtl + textures), .glb/.gltf, .ply, ..."),
    output: Path = typer.Option(..., "--output", "-o", help="Views folder to write (replaced atomically)."),
    elevation: float | None = typer.Option(
        None, "--elevation", help="Orbit elevation in degrees (default: 30, the target views' elevation)."
    ),
    azimuths: str | None = typer.Option(
        None, "--azimuths", help="Comma-separated azimuths in degrees (default: the 16 target views, i*22.5)."
    ),
    distance: float = typer.Option(1.5, "--distance", help="Camera distance from the origin."),
    size: int = typer.Option(256, "--size", min=8, max=4096, help="Image size in pixels (square)."),
    normalize: bool = typer.Option(
        True, "--normalize/--no-normalize", help="Scale the largest bbox side to 1 and centre it at 0."
    ),
    up: str = typer.Option("auto", "--up", help="Up axis of the file: auto (glTF: y, others: z), y or z."),
    yaw: float = typer.Option(
        0.0, "--yaw", help="Rotate about +Z by this many degrees (before normalising)."
    ),
    texture: Path | None = typer.Option(
        None, "--texture", help="Use this image as the texture (e.g. missing MTL)."
    ),
    depth: bool = typer.Option(
        False, "--depth", help="Also write NNN-depth.png (uint16, like the GT renders)."
    ),
    supersample: int = typer.Option(
        3, "--supersample", min=1, max=8, help="Samples per pixel side (coverage)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    from cli.common import echo, progress
    from recon import raster
    from sd3d.core.device import resolve_device

    az = _parse_azimuths(azimuths)
    dev = resolve_device(device)
    loaded = raster.load_mesh(mesh, up=up.lower(), yaw_deg=yaw, normalize=normalize, texture=texture)
    cameras = raster.orbit_cameras(elevation, az, distance, size)
    renders = raster.render_mesh(loaded, cameras, supersample=supersample, device=dev, progress=progress())
    extra = {
        "source_mesh": str(mesh),
        "normalization": {
            "up_axis": up.lower(),
            "yaw_deg": yaw,
            "normalized": normalize,
            "raw_to_world": loaded.transform.tolist(),
            "note": "world = raw_to_world @ [x,y,z,1]"
            + ("; largest bbox side 1, bbox centred at 0" if normalize else ""),
        },
    }
    out = raster.write_renders(output, renders, cameras, depth=depth, extra=extra)
    echo(f"wrote {len(cameras)} views to {out}")
