"""``sd3d eval``: metrics. ``eval mesh`` (Chamfer, F-score, volume IoU), ``eval nvs`` (PSNR / SSIM /
LPIPS of views against ground truth), ``eval consistency`` (the 3DiM 3D-consistency score)."""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from cli.common import AsJson, Device, Seed, TrainingSteps, number_list_parser, number_option, retold, word
from sd3d.core import defaults

SamplingSeed = retold(Seed, "Seed of the surface sampling.")
FitSeed = retold(Seed, "Seed of the fit.")

eval_app = typer.Typer(
    help="Evaluate results: mesh metrics, novel-view image metrics.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")


@eval_app.command("mesh", help="Chamfer distance, F-score@0.01/0.02 and volume IoU of PRED against GT.")
def mesh(
    pred: Annotated[
        Path, typer.Argument(help="Predicted mesh (.glb/.obj/.ply ...; glTF is converted to +Z up).")
    ],
    gt: Annotated[
        Path, typer.Argument(help="Ground-truth mesh in the same frame (e.g. mesh_normalized.ply).")
    ],
    as_json: AsJson = False,
    samples: Annotated[
        int,
        number_option(
            "--samples", kind=int, at_least=1000, help="Surface samples per mesh (Chamfer, F-score)."
        ),
    ] = 100_000,
    seed: SamplingSeed = defaults.SEED,
    grid: Annotated[
        int,
        number_option(
            "--grid", kind=int, at_least=8, at_most=512, help="Volume IoU grid size over [-0.6, 0.6]^3."
        ),
    ] = 128,
    pred_up: Annotated[
        str,
        typer.Option("--pred-up", parser=word, help="Up axis of PRED: auto (glTF: y, others: z), y or z."),
    ] = "auto",
    gt_up: Annotated[str, typer.Option("--gt-up", parser=word, help="Up axis of GT: auto, y or z.")] = "auto",
) -> None:
    from cli.common import echo
    from recon.metrics import mesh_metrics
    from recon.raster import load_trimesh

    p = load_trimesh(pred, up=pred_up)
    g = load_trimesh(gt, up=gt_up)
    result = mesh_metrics(p, g, num_samples=samples, seed=seed, grid=grid)
    if as_json:
        echo(json.dumps({"pred": str(pred), "gt": str(gt), **result}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{pred} vs {gt}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("Chamfer distance (lower is better)", f"{result['chamfer']:.5f}")
    table.add_row("F-score @ 0.01", f"{result['fscore_0.01']:.4f}")
    table.add_row("F-score @ 0.02", f"{result['fscore_0.02']:.4f}")
    table.add_row(f"volume IoU ({grid}^3)", f"{result['volume_iou']:.4f}")
    Console().print(table)


@eval_app.command("nvs", help="PSNR / SSIM (/ LPIPS) of 16 predicted views against 16 ground-truth views.")
def nvs(
    pred: Annotated[Path, typer.Argument(help="Predicted views folder (000..015.png) or strip image.")],
    gt: Annotated[Path, typer.Argument(help="Ground-truth views folder (RGBA composited on white).")],
    as_json: AsJson = False,
) -> None:
    from cli.common import echo
    from recon.view_metrics import nvs_metrics
    from sd3d.core.io import read_views

    result = nvs_metrics(read_views(pred), read_views(gt))
    if as_json:
        echo(json.dumps({"pred": str(pred), "gt": str(gt), **result.as_dict()}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{pred} vs {gt}")
    for col in ("view", "PSNR", "SSIM") + (("LPIPS",) if result.lpips is not None else ()):
        table.add_column(col, justify="right")
    for i, (p, s) in enumerate(zip(result.psnr, result.ssim, strict=True)):
        row = [f"{i:03d}", f"{p:.3f}", f"{s:.4f}"]
        if result.lpips is not None:
            row.append(f"{result.lpips[i]:.4f}")
        table.add_row(*row)
    mean = ["mean", f"{result.mean_psnr:.3f}", f"{result.mean_ssim:.4f}"]
    if result.lpips is not None:
        mean.append(f"{float(sum(result.lpips) / len(result.lpips)):.4f}")
    table.add_row(*mean)
    console = Console()
    console.print(table)
    if result.lpips is None:
        console.print(result.lpips_note)


@eval_app.command(
    "consistency",
    help="3DiM 3D-consistency score: fit a field on 12 of the 16 views, score the held-out ones.",
)
def consistency(
    views: Annotated[
        Path, typer.Argument(help="Views folder (000..015.png [+ cameras.json]) or strip image.")
    ],
    held_out: Annotated[
        Sequence[int] | None,
        typer.Option(
            "--held-out",
            parser=number_list_parser("--held-out", int),
            metavar="I,J,...",
            help="Comma-separated held-out view indices (default: every fourth view, 3,7,11,15 of 16).",
            show_default=False,
        ),
    ] = None,
    quality: Annotated[
        str, typer.Option("--quality", parser=word, help="Reconstruction preset for the fit.")
    ] = "draft",
    steps: TrainingSteps = None,
    seed: FitSeed = defaults.SEED,
    device: Device = "auto",
    as_json: AsJson = False,
) -> None:
    from cli.common import echo, progress
    from recon.consistency import consistency_score
    from sd3d.core.io import read_views

    result = consistency_score(
        read_views(views),
        tuple(held_out),
        quality=quality,
        steps=steps,
        seed=seed,
        device=device,
        progress=progress(),
    )
    if as_json:
        echo(json.dumps({"views": str(views), **result.as_dict()}))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"3D consistency of {views} (fit on the other views)")
    for col in ("held-out view", "PSNR", "SSIM"):
        table.add_column(col, justify="right")
    for v, p, s in zip(result.held_out, result.psnr, result.ssim, strict=True):
        table.add_row(f"{v:03d}", f"{p:.2f}", f"{s:.4f}")
    table.add_row("mean", f"{result.mean_psnr:.2f}", f"{result.mean_ssim:.4f}")
    Console().print(table)
