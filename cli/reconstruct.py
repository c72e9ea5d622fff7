"""``sd3d reconstruct``: 16 views -> hash-grid NeuS -> textured mesh (.glb / .obj / .ply).

Options are typed and parsed by :mod:`cli.common`'s parsers, so every bad value is one ``error:``
line and exit code 2; the work is done by :func:`recon.pipeline.reconstruct` and
:func:`recon.pipeline.export_mesh`.
"""

from pathlib import Path
from typing import Annotated

import typer

from cli.common import CudaGraph, Device, Faces, GpuMemory, HashGrid, Seed, TrainingSteps, word
from sd3d.core import defaults


def register(app: typer.Typer) -> None:
    app.command(
        "reconstruct",
        help="Reconstruct a textured mesh from a views folder (000.png ... 015.png [+ cameras.json]) "
        "or a 16-view strip image.",
    )(reconstruct)


def reconstruct(
    views: Annotated[Path, typer.Argument(help="Views folder or 16-view strip image.", show_default=False)],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Output mesh: .glb (textured), .obj (+ NAME.mtl + NAME_texture.png) or .ply.",
            show_default=False,
        ),
    ],
    quality: Annotated[
        str,
        typer.Option(
            "--quality",
            parser=word,
            metavar="auto|draft|standard|high",
            help="Quality preset; auto = standard on a GPU, draft on CPU.",
        ),
    ] = "auto",
    steps: TrainingSteps = None,
    seed: Seed = defaults.SEED,
    device: Device = "auto",
    faces: Faces = None,
    hash_grid: HashGrid = "auto",
    cuda_graph: CudaGraph = None,
    gpu_memory: GpuMemory = None,
) -> None:
    import time

    from recon.warm_start import start_early_workers

    # before this process imports PyTorch: the workers import theirs meanwhile (see there)
    early = start_early_workers(device, hash_grid)
    try:
        from cli.common import echo, progress
        from recon.export import check_output_path
        from recon.pipeline import export_mesh
        from recon.pipeline import reconstruct as run_reconstruct
        from recon.presets import ReconSettings, resolve_quality
        from sd3d.core.device import limit_gpu_memory, resolve_device
        from sd3d.core.io import read_views

        check_output_path(output)
        dev = resolve_device(device)
        limit_gpu_memory(dev, gpu_memory)
        quality = resolve_quality(quality, dev)
        settings = ReconSettings(quality, steps, faces, hash_grid=hash_grid, cuda_graph=cuda_graph)
        settings.engine(dev)  # validates before any work
        vs = read_views(views)
        t0 = time.perf_counter()
        workers, early = early, None  # handed over: reconstruct gives them work or closes them
        result = run_reconstruct(
            vs, settings, seed=seed, device=dev, progress=progress(), compile_workers=workers
        )
    finally:
        if early is not None:  # a bad argument or input stopped the command first
            early.close()
    exported = export_mesh(result, output, faces=settings.faces)
    total = time.perf_counter() - t0
    kind = (
        "textured"
        if exported.textured
        else f"vertex colours ({exported.fallback_reason})"
        if exported.fallback_reason
        else "vertex colours"
    )
    echo(f"wrote {', '.join(str(p) for p in exported.paths)} (quality {quality}, seed {seed}, {dev})")
    split = ", ".join(f"{k} {v:.1f}s" for k, v in {**result.timings, **exported.timings}.items())
    echo(f"{exported.num_faces} faces, {exported.num_vertices} vertices, {kind}; {total:.1f}s ({split})")
