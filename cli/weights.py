"""``sd3d weights list|download|verify|path|convert``: manage checkpoints (a thin layer over sd3d.weights)."""

import sys
from pathlib import Path
from typing import Annotated

import typer

from cli.common import WeightsDir, retold, word

WEIGHTS_DIR_HELP = (
    "Weights folder (default: $SD3D_WEIGHTS, else ./weights if it exists, else ~/.cache/sd3d; files hosted "
    "on the Hugging Face Hub are also found in, and by default downloaded into, the Hugging Face cache)."
)
Folder = retold(WeightsDir, WEIGHTS_DIR_HELP)


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="List, download, verify and convert model checkpoints.",
        no_args_is_help=True,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    group.command("list", help="Show known checkpoints: present and verified? where found?")(list_weights)
    group.command(
        "download", help="Download a checkpoint (Hub files into the Hugging Face cache; sha256-verified)."
    )(download)
    group.command("verify", help="Check the sha256 of one or all present checkpoints.")(verify)
    group.command("path", help="Print where a checkpoint is (or must be placed by hand).")(path)
    group.command("convert", help="Write a safetensors copy of a checkpoint (fast mmap loading).")(convert)
    app.add_typer(group, name="weights")


def _human(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover


def list_weights(weights_dir: Folder = None) -> None:
    from rich.console import Console
    from rich.table import Table

    from sd3d.weights import entries, locate, weights_folder
    from sd3d.weights.hub import cache_dir
    from sd3d.weights.verify import file_status

    folder, source = weights_folder(weights_dir)
    table = Table()
    for column in ("name", "file", "size", "present", "verified", "found in", "needed by"):
        table.add_column(column, overflow="fold")
    for entry in entries():
        found = locate(entry, weights_dir)
        if found is not None:
            status = file_status(entry, found.path, stamp=found.stamp)
            present, where = "yes", found.describe()
        else:
            status = file_status(entry, folder / entry.filename)
            where = "-"
            if status.partial_bytes is not None and entry.size:
                present = f"partial {100 * status.partial_bytes / entry.size:.0f}%"
            else:
                present = "no"
        size = _human(entry.size)
        table.add_row(entry.name, entry.filename, size, present, status.verified, where, entry.needed_by)
    provisional = [e.name for e in entries() if e.sha256_provisional]
    if provisional:
        table.caption = f"sha256 provisional (third-party listing) for: {', '.join(provisional)}"
        table.caption_justify = "left"
    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200)
    console.print(f"weights folder: {folder} ({source})", soft_wrap=True, highlight=False, markup=False)
    console.print(f"Hugging Face cache: {cache_dir()}", soft_wrap=True, highlight=False, markup=False)
    console.print(table)


def download(
    name: Annotated[str, typer.Argument(help="Registered name (see `sd3d weights list`).")],
    url: Annotated[
        str | None, typer.Option("--url", help="Download from this URL instead (a mirror).")
    ] = None,
    weights_dir: Folder = None,
    sha256: Annotated[
        str | None, typer.Option("--sha256", help="Expect this sha256 instead of the registry's.")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Download again even if the file is present.")
    ] = False,
) -> None:
    from cli.common import echo, progress
    from sd3d.weights.download import download as fetch

    result = fetch(name, weights_dir, url=url, sha256=sha256, force=force, progress=progress())
    if not result.downloaded:
        echo(f"already present: {result.path}")
    else:
        echo(str(result.path))


def verify(
    name: Annotated[
        str | None, typer.Argument(help="Registered name; all present files when omitted.")
    ] = None,
    weights_dir: Folder = None,
) -> None:
    from cli.common import echo, progress
    from sd3d.core.errors import WeightsError
    from sd3d.weights import entries, get_entry, locate, require, resolve_weights_dir
    from sd3d.weights.verify import verify_file

    if name is not None:
        entry = get_entry(name)
        found = locate(entry, weights_dir)
        if found is None:
            require(entry.name, weights_dir)  # raises the usual "missing ... get it with" line
        todo = [(entry, found)]
    else:
        todo = [(e, found) for e in entries() if (found := locate(e, weights_dir)) is not None]
        if not todo:
            echo(f"no known weights present in {resolve_weights_dir(weights_dir)} or the Hugging Face cache")
            return
    failed = []
    for entry, found in todo:
        result = verify_file(entry, found.path, progress(), stamp=found.stamp)
        if result.ok:
            note = "" if entry.sha256 else " (size only: no published sha256)"
            echo(f"ok  {entry.name}  {found.path}{note}")
        else:
            failed.append(f"{entry.filename} {result.problem} (in {found.describe()})")
    if failed:
        more = f" (+{len(failed) - 1} more)" if len(failed) > 1 else ""
        raise WeightsError(f"{failed[0]}{more}; download it again with --force")


def path(
    name: Annotated[str, typer.Argument(help="Registered name.")],
    weights_dir: Folder = None,
) -> None:
    """Where the file is (any place in the search order), else where to place it by hand."""
    from cli.common import echo
    from sd3d.weights import expected_path, locate

    found = locate(name, weights_dir)
    echo(str(found.path if found is not None else expected_path(name, weights_dir)))


def convert(
    src: Annotated[Path, typer.Argument(help="Checkpoint to read (.ckpt/.pt/.pth/.bin/.safetensors).")],
    dst: Annotated[Path, typer.Argument(help="Output .safetensors file.")],
    dtype: Annotated[
        str, typer.Option("--dtype", parser=word, help="Floating-point dtype of the copy: fp32|fp16|bf16.")
    ] = "fp32",
    drop_prefix: Annotated[
        list[str],
        typer.Option("--drop-prefix", help="Leave out keys starting with this (repeatable), e.g. model_ema."),
    ] = [],  # noqa: B006 - only read, never changed
) -> None:
    from cli.common import echo, progress
    from sd3d.weights.convert import convert_checkpoint

    result = convert_checkpoint(src, dst, dtype=dtype, drop_prefixes=drop_prefix, progress=progress())
    dropped = f", {result.dropped} dropped" if result.dropped else ""
    echo(f"{result.path} ({result.tensors} tensors{dropped}, {result.dtype}, {_human(result.bytes)})")
