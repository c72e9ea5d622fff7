"""The ``sd3d`` Typer application and its error policy.

Each command group lives in its own module exposing ``register(app)``; importing a module must be
cheap (heavy imports go inside the command functions) so ``sd3d --help`` stays fast and never
breaks on a missing optional extra.

Error policy: a :class:`sd3d.core.errors.UserError` prints ``error: <one line>`` on stderr and exits 2
(``--debug`` shows the traceback); Ctrl-C exits 130; anything else is a bug and keeps its traceback.
A warning prints ``warning: <first line>``; ``--debug`` shows it in Python's full form instead and
turns on the ``sd3d`` loggers' DEBUG messages (e.g. the numbers behind a checkpoint warning).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import warnings
from collections.abc import Iterator

import typer

# Command modules, in the order they appear in ``sd3d --help``.
COMMAND_MODULES = (
    "cli.preprocess",
    "cli.weights",
    "cli.cameras",
    "cli.generate",
    "cli.novel_view",
    "cli.reconstruct",
    "cli.render",
    "cli.evaluate",
    "cli.elevation",
    "cli.run",
    "cli.serve",
)

app = typer.Typer(
    name="sd3d",
    help="One photo -> 16 multiview-consistent views (SyncDreamer) -> textured 3D mesh.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from cli.help_style import version_line

        typer.echo(version_line())
        raise typer.Exit()


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for user errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Global options (the values are read by :func:`main` and :func:`cli.common.quiet`)."""


for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def _click_exception_types() -> tuple[type[BaseException], ...]:
    """ClickException classes: typer >= 0.2x vendors click as ``typer._click``; older typer uses click."""
    types: list[type[BaseException]] = []
    for cls in typer.BadParameter.__mro__:
        if cls.__name__ == "ClickException":
            types.append(cls)
    try:
        import click

        types.append(click.ClickException)
    except ImportError:  # pragma: no cover - click is optional once typer vendors it
        pass
    return tuple(types)


def _exit_types() -> tuple[type[BaseException], ...]:
    types: list[type[BaseException]] = [typer.Exit]
    try:
        import click

        types.append(click.exceptions.Exit)
    except ImportError:  # pragma: no cover
        pass
    return tuple(types)


def _brief_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message).strip().splitlines()
    print(f"warning: {text[0] if text else category.__name__}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code (also used in-process by tests)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    with warnings.catch_warnings(), _debug_logging(debug):
        if not debug:
            warnings.showwarning = _brief_warning
        return _main(args, debug)


@contextlib.contextmanager
def _debug_logging(enabled: bool) -> Iterator[None]:
    """With ``--debug``: the ``sd3d`` loggers' DEBUG messages go to stderr during this call."""
    if not enabled:
        yield
        return
    logger = logging.getLogger("sd3d")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("debug: %(name)s: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _main(args: list[str], debug: bool) -> int:
    from cli.help_style import tidy_help
    from sd3d.core.errors import UserError

    try:
        command = tidy_help(typer.main.get_command(app))
        result = command.main(args=args, prog_name="sd3d", standalone_mode=False)
        return int(result) if isinstance(result, int) else 0
    except UserError as exc:
        if debug:
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return exc.exit_code
    except _exit_types() as exc:
        return int(getattr(exc, "exit_code", 0) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _click_exception_types() as exc:
        exc.show(file=sys.stderr)  # type: ignore[attr-defined]
        return int(getattr(exc, "exit_code", 2))
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130


def entry() -> None:
    sys.exit(main())
