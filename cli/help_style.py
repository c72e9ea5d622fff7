"""One look for every command's ``--help``, and ``sd3d --version``.

Typer derives an option's value placeholder from its Python type (``<str>``, ``<int>``, ``<path>``)
and shows ``<bool>`` even on flags, which take no value; our own placeholders name the meaning
(``DEG``, ``N``, ``auto|cpu|cuda[:N]``). :func:`tidy_help` applies one rule to the built command
tree, so every command follows it without each module repeating it: a flag shows no placeholder, and
every value placeholder is written like Typer's own, lower case in angle brackets (``<deg>``,
``<auto|draft|standard|high>``).
"""

from __future__ import annotations

from typing import Any

HELP_OPTION_NAMES = ["-h", "--help"]


def tidy_help(command: Any) -> Any:
    """Apply the placeholder rule to ``command`` and every sub-command (in place); returns it."""
    ctx = command.context_class(command, help_option_names=HELP_OPTION_NAMES)
    help_option = command.get_help_option(ctx)
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        _tidy_param(param)
    for sub in getattr(command, "commands", {}).values():
        tidy_help(sub)
    return command


def _tidy_param(param: Any) -> None:
    if getattr(param, "is_flag", False):
        param.metavar = ""  # a flag takes no value: nothing to show
    elif param.metavar and not param.metavar.startswith("<"):
        param.metavar = f"<{param.metavar.lower()}>"


def version_line() -> str:
    """``sd3d <version>``: the installed distribution's version, else the package's own."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        number = version("sd3d")
    except PackageNotFoundError:
        import sd3d

        number = sd3d.__version__
    return f"sd3d {number}"
