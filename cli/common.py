"""Small helpers shared by the command modules (option parsing only, no numerics)."""

from __future__ import annotations

import typer

from sd3d import DEFAULT_SEED
from sd3d.background import BACKEND_NAMES
from sd3d.core.progress import Progress

BACKGROUND_METAVAR = "|".join(BACKEND_NAMES)
"""``--background``'s placeholder in every command's help: all the backends, from their one list."""

SEED_DEFAULT = str(DEFAULT_SEED)
"""``--seed``'s default, as text for the commands that parse their options themselves."""


def max_pixels_option():
    """``--max-pixels`` for every command that reads a photo (one definition, one parser)."""
    return typer.Option(
        None,
        "--max-pixels",
        metavar="INT",
        help="Largest input photo accepted, in pixels (default 50000000; checked before decoding).",
        show_default=False,
    )


def parse_max_pixels(text: str | None) -> int | None:
    """``--max-pixels`` text -> a positive int (``None``: the default limit), or a one-line error."""
    if text is None:
        return None
    from sd3d.core.io import check_max_pixels

    return check_max_pixels(parse_number(text, "--max-pixels", int))


def say_background(backend: str | None, note: str = "") -> None:
    """The info line naming the foreground backend that ran (and why), on stderr.

    Printed once the command succeeded (a failing command prints only its ``error:`` line), even
    with ``--quiet``: a silent fallback from rembg to GrabCut changes the result.
    """
    from sd3d.background import describe

    typer.echo(f"background: {describe(backend, note)}", err=True)


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
