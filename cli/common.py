"""Small helpers shared by the command modules (option parsing only, no numerics)."""

from __future__ import annotations

import typer

from sd3d.progress import Progress


def is_quiet() -> bool:
    """``--quiet`` given to the top-level app (or no terminal)."""
    ctx = click_context()
    root = ctx.find_root() if ctx is not None else None
    return bool(root is not None and root.params.get("quiet"))


def click_context():
    """The running command's context (typer vendors click as ``typer._click`` in recent versions)."""
    try:
        from typer._click.globals import get_current_context
    except ImportError:  # older typer: plain click
        from click import get_current_context
    return get_current_context(silent=True)


def progress() -> Progress:
    return Progress(enabled=not is_quiet())


def echo(message: str) -> None:
    """Print a result line on stdout (quiet does not silence results, only progress)."""
    typer.echo(message)
