"""The ``sd3d`` Typer application and its error policy.

Each command group lives in its own module exposing ``register(app)``; importing a module must be
cheap (heavy imports go inside the command functions) so ``sd3d --help`` stays fast and never
breaks on a missing optional extra. Commands declare their options as typed ``Annotated``
parameters (the shared ones are :mod:`cli.common`'s), and the command modules do without
``from __future__ import annotations``: Typer reads those annotations to build every command at
start-up, and annotations made once at import cost less than strings it would evaluate each time.

Error policy: a :class:`sd3d.core.errors.UserError` prints ``error: <one line>`` on stderr and exits 2
(``--debug`` shows the traceback); so does a usage error (unknown option, missing argument), with
a pointer to ``--help``; Ctrl-C exits 130 (``interrupted``) and SIGTERM 143 (``terminated``), both
through the same cleanup (temporary files and folders removed); the GPU running out of memory
prints one line saying what to lower and exits 3; anything else is a bug and keeps
its traceback. A warning prints ``warning: <first line>``; ``--debug`` shows it in Python's full
form instead and turns on the ``sd3d`` loggers' DEBUG messages (e.g. the numbers behind a
checkpoint warning).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import signal
import sys
import threading
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the program is, so every cleanup that runs on Ctrl-C runs too."""


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[threading.Event]:
    """Turn SIGTERM into :class:`Terminated` while a command runs (main thread only); the event
    yielded says whether it came. A second SIGTERM during the cleanup is ignored so the cleanup
    finishes; SIGKILL still stops everything."""
    terminated = threading.Event()

    def handler(signum, frame) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        terminated.set()
        raise Terminated()

    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or previous is None:
        yield terminated
        return
    signal.signal(signal.SIGTERM, handler)
    try:
        yield terminated
    finally:
        signal.signal(signal.SIGTERM, previous)


def _usage_line(exc: BaseException, args: list[str]) -> str:
    """A click usage error as one line with a pointer to the command's ``--help`` (click attaches
    some option errors to the root context: the first command word on the line names it then)."""
    message = " ".join(str(exc.format_message()).split()).rstrip(".")  # type: ignore[attr-defined]
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "sd3d"
    if command == "sd3d":
        names = {c.name for c in app.registered_commands} | {g.name for g in app.registered_groups}
        words = [a for a in args if not a.startswith("-")]
        if words and words[0] in names:
            command = f"sd3d {words[0]}"
    return f"error: {message} (see '{command} --help')"


def _brief_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message).strip().splitlines()
    print(f"warning: {text[0] if text else category.__name__}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code (also used in-process by tests)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    with _sigterm_as_interrupt() as terminated, warnings.catch_warnings(), _debug_logging(debug):
        if not debug:
            warnings.showwarning = _brief_warning
        code = _main(args, debug)
    # Typer turns an interrupt inside a command into exit code 130 without a word.
    if terminated.is_set():
        print("terminated", file=sys.stderr)
        return 143
    if code == 130:
        print("interrupted", file=sys.stderr)
    return code


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
    except KeyboardInterrupt:  # Terminated included: main() tells them apart
        return 130
    except _click_exception_types() as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `sd3d` / `sd3d weights`: the help screen
            exc.show(file=sys.stderr)  # type: ignore[attr-defined]
            return int(getattr(exc, "exit_code", 2))
        print(_usage_line(exc, args), file=sys.stderr)
        return 2
    except typer.Abort:
        return 130
    except Exception as exc:
        if debug or not _is_cuda_out_of_memory(exc):
            raise
        from sd3d.core.device import out_of_memory_message

        torch = sys.modules["torch"]
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else None
        print(f"error: {out_of_memory_message(exc, device)}", file=sys.stderr)
        return OUT_OF_MEMORY_EXIT


OUT_OF_MEMORY_EXIT = 3


def _is_cuda_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's CUDA out-of-memory error (torch is imported only by commands that
    use it, so a command that never imported it cannot have raised one)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def entry() -> None:
    sys.exit(main())
