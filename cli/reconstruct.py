"""``sd3d reconstruct``: 16 views -> hash-grid NeuS -> textured mesh (.glb / .obj / .ply).

Options are parsed here so every bad value is one ``error:`` line and exit code 2; the work is
done by :func:`recon.pipeline.reconstruct` and :func:`recon.pipeline.export_mesh`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import SEED_DEFAULT


def register(app: typer.Typer) -> None:
    app.command(
        "reconstruct",
        help="Reconstruct a textured mesh from a views folder (000.png ... 015.png [+ cameras.json]) "
        "or a 16-view strip image.",
    )(reconstruct)


def _parse_int(text: str | None, option: str, minimum: int) -> int | None:
    from sd3d.core.errors import UserError

    if text is None:
        return None
    try:
        value = int(text.strip())
    except ValueError:
        raise UserError(f"{option} must be an integer, got {text!r}") from None
    if value < minimum:
        raise UserError(f"{option} must be at least {minimum}, got {value}")
    return value


def reconstruct(
    views: Path = typer.Argument(..., help="Views folder or 16-view strip image.", show_default=False),
    output: Path = typer.Option(
        ...,
        "--output",
        "-o",
        help="Output mesh: .glb (textured), .obj (+ NAME.mtl + NAME_texture.png) or .ply.",
        show_default=False,
    ),
    quality: str = typer.Option(
        "auto",
        "--quality",
        metavar="auto|draft|standard|high",
        help="Quality preset; auto = standard on a GPU, draft on CPU.",
    ),
    steps: str = typer.Option(None, "--steps", metavar="INT", help="Training steps (default: the preset's)."),
    seed: str = typer.Option(
        SEED_DEFAULT, "--seed", metavar="INT", help="Random seed (same seed, same mesh on CPU)."
    ),
    device: str = typer.Option("auto", "--device", metavar="auto|cpu|cuda[:N]", help="Compute device."),
    faces: str = typer.Option(None, "--faces", metavar="INT", help="Decimate the mesh to at most N faces."),
) -> None:
    import time

    from cli.common import echo, progress
    from recon.export import check_output_path
    from recon.pipeline import export_mesh
    from recon.pipeline import reconstruct as run_reconstruct
    from recon.presets import ReconSettings, resolve_quality
    from sd3d.core.device import resolve_device
    from sd3d.core.io import read_views

    n_steps = _parse_int(steps, "--steps", 1)
    n_seed = _parse_int(seed, "--seed", 0)
    n_faces = _parse_int(faces, "--faces", 4)
    check_output_path(output)
    dev = resolve_device(device)
    quality = resolve_quality(quality.strip().lower(), dev)
    settings = ReconSettings(quality, n_steps, n_faces)  # validates before any work
    vs = read_views(views)
    t0 = time.perf_counter()
    result = run_reconstruct(vs, settings, seed=n_seed, device=dev, progress=progress())
    exported = export_mesh(result, output, faces=settings.faces)
    total = time.perf_counter() - t0
    kind = (
        "textured"
        if exported.textured
        else f"vertex colours ({exported.fallback_reason})"
        if exported.fallback_reason
        else "vertex colours"
    )
    echo(f"wrote {', '.join(str(p) for p in exported.paths)} (quality {quality}, seed {n_seed}, {dev})")
    split = ", ".join(f"{k} {v:.1f}s" for k, v in {**result.timings, **exported.timings}.items())
    echo(f"{exported.num_faces} faces, {exported.num_vertices} vertices, {kind}; {total:.1f}s ({split})")
