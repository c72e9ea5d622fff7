"""Small helpers shared by the command modules (option parsing only, no numerics)."""

from __future__ import annotations

import typer

from sd3d.core.progress import Progress


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


def parse_number(text: str, option: str, kind: type = float):
    """An option given as text -> int/float, or a one-line UserError naming the option.

    Options are taken as text (not Typer ints/floats) so that a bad value is our one-line ``error:``
    with exit 2 rather than a usage screen, and ``nan``/``inf`` are refused.
    """
    import math

    from sd3d.core.errors import UserError

    try:
        value = kind(str(text).strip())
    except (ValueError, AttributeError):
        what = "an integer" if kind is int else "a number"
        raise UserError(f"{option} must be {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise UserError(f"{option} must be a finite number, got {text!r}")
    return value
