"""What the command modules share: the options several commands take, as typed ``Annotated`` aliases
with their parsers, and the output helpers. No numerics.

Typer parses every option value through the ``parser`` declared with the option, before the command
body runs. A bad value raises :class:`sd3d.core.errors.UserError` naming the option (and the allowed
range), so it is the same one ``error:`` line with exit code 2 as every other user error, and
``nan``/``inf`` are refused. An option whose value may be ``auto`` parses that word to ``None``: the
library's own automatic choice. Defaults come from :mod:`sd3d.core.defaults` and the registries.

Only cheap modules are imported here: every command module imports this one, and ``sd3d --help``
builds its screens from these declarations without loading the library.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from copy import copy
from pathlib import Path
from typing import Annotated, Any, get_args

import typer

from sd3d.background import BACKEND_NAMES, check_backend_name
from sd3d.core import defaults
from sd3d.core.errors import UserError
from sd3d.core.progress import Progress


# --------------------------------------------------------------------------------------------------
# parsers
# --------------------------------------------------------------------------------------------------
def parse_number(value: Any, option: str, kind: type = float, *, or_auto: bool = False) -> int | float:
    """An option's text (or its default) -> a finite int/float, or a one-line UserError naming the option."""
    what = ("an integer" if kind is int else "a number") + (" or 'auto'" if or_auto else "")
    try:
        number = kind(str(value).strip())
    except (ValueError, AttributeError):
        raise UserError(f"{option} must be {what}, got {value!r}") from None
    if not math.isfinite(number):
        raise UserError(f"{option} must be a finite number, got {value!r}")
    return number


def check_range(
    value: float, option: str, at_least: float | None = None, at_most: float | None = None
) -> float:
    """``value`` if it lies in ``[at_least, at_most]`` (either bound may be open), else a UserError
    naming the option and the range."""

    def show(number: float) -> str:
        return f"{number:g}" if isinstance(number, float) else str(number)

    if (at_least is None or value >= at_least) and (at_most is None or value <= at_most):
        return value
    if at_least is not None and at_most is not None:
        allowed = f"between {show(at_least)} and {show(at_most)}"
    else:
        allowed = f"at least {show(at_least)}" if at_least is not None else f"at most {show(at_most)}"
    raise UserError(f"{option} must be {allowed}, got {show(value)}")


def number_parser(
    option: str,
    kind: type = float,
    *,
    at_least: float | None = None,
    at_most: float | None = None,
    auto: bool = False,
) -> Callable[[Any], Any]:
    """A typer ``parser`` for ``option``: its text -> ``kind`` within ``[at_least, at_most]``; with
    ``auto``, the word ``auto`` -> ``None``."""

    def parse(value: Any) -> Any:
        if auto and str(value).strip().lower() == "auto":
            return None
        return check_range(parse_number(value, option, kind, or_auto=auto), option, at_least, at_most)

    return parse


def number_option(
    *names: str,
    kind: type = float,
    at_least: float | None = None,
    at_most: float | None = None,
    auto: bool = False,
    **option: Any,
) -> Any:
    """``typer.Option(*names, ...)`` for a number parsed by :func:`number_parser` (the first name is
    the one errors show); an ``auto`` option shows its ``None`` default as ``auto``."""
    if auto:
        option.setdefault("show_default", "auto")
    parser = number_parser(names[0], kind, at_least=at_least, at_most=at_most, auto=auto)
    return typer.Option(*names, parser=parser, **option)


def number_list_parser(option: str, kind: type = float, what: str = "") -> Callable[[Any], Any]:
    """A typer ``parser`` for comma-separated numbers (``0,90,180``) -> a non-empty tuple; ``what``
    names them in the error (default: integers or numbers)."""
    what = what or ("integers" if kind is int else "numbers")

    def parse(value: Any) -> tuple:
        words = [w.strip() for w in str(value).split(",") if w.strip()]
        try:
            numbers = tuple(kind(w) for w in words)
        except ValueError:
            raise UserError(f"{option} must be comma-separated {what}, got {value!r}") from None
        if not numbers:
            raise UserError(f"{option} is empty")
        for number in numbers:
            parse_number(number, option, kind)  # finite
        return numbers

    return parse


def word(value: Any) -> str:
    """A typer ``parser`` for a name the library checks (sampler, quality, dtype, ...): trimmed, lower case."""
    return str(value).strip().lower()


def choice_option(*names: str, choices: tuple[str, ...], **option: Any) -> Any:
    """``typer.Option(*names, ...)`` for one of ``choices`` (the placeholder lists them); any other
    value is a one-line UserError naming the option and the choices."""

    def parse(value: Any) -> str:
        key = word(value)
        if key not in choices:
            allowed = " or ".join(choices) if len(choices) == 2 else "one of " + ", ".join(choices)
            raise UserError(f"{names[0]} must be {allowed}, got {value!r}")
        return key

    return typer.Option(*names, parser=parse, metavar="|".join(choices), **option)


def retold(alias: Any, help: str) -> Any:
    """``alias`` (an ``Annotated`` option) with another help text: a command that means something more
    specific by a shared option says so and keeps the shared names, parser and placeholder."""
    base, info = get_args(alias)
    info = copy(info)
    info.help = help
    return Annotated[base, info]


# --------------------------------------------------------------------------------------------------
# options several commands take (the default is given where the option is declared: `seed: Seed =
# defaults.SEED`; an option's meaning, names, parser and placeholder are declared once, here)
# --------------------------------------------------------------------------------------------------
BACKGROUND_METAVAR = "|".join(BACKEND_NAMES)
"""``--background``'s placeholder in every command's help: all the backends, from their one list."""

Seed = Annotated[
    int,
    number_option(
        "--seed",
        kind=int,
        at_least=defaults.SEED_RANGE[0],
        at_most=defaults.SEED_RANGE[1],
        metavar="INT",
        help="Random seed (same seed, same result).",
    ),
]
Steps = Annotated[int, number_option("--steps", kind=int, at_least=1, metavar="N", help="Sampling steps.")]
Cfg = Annotated[float, number_option("--cfg", metavar="SCALE", help="Classifier-free guidance scale.")]
Eta = Annotated[
    float, number_option("--eta", metavar="ETA", help="DDIM eta (1 = the official stochastic sampler).")
]
Samples = Annotated[
    int, number_option("--samples", "-n", kind=int, metavar="N", help="Independent samples (1..64).")
]
BatchViewNum = Annotated[
    int | None,
    number_option(
        "--batch-view-num",
        kind=int,
        auto=True,
        metavar="N|auto",
        help="Views per UNet chunk (a memory knob; auto: from free memory).",
    ),
]
CropSize = Annotated[
    int,
    number_option(
        "--crop-size",
        kind=int,
        metavar="PX",
        help="Object size after recentring, in pixels of 256 (-1: keep the framing, no crop).",
    ),
]
TrainingSteps = Annotated[
    int | None,
    number_option(
        "--steps", kind=int, at_least=1, metavar="N", help="Training steps (default: the preset's)."
    ),
]
Faces = Annotated[
    int | None, number_option("--faces", kind=int, metavar="N", help="Decimate the mesh to about N faces.")
]
MaxPixels = Annotated[
    int | None,
    typer.Option(
        "--max-pixels",
        parser=lambda value: _max_pixels(parse_number(value, "--max-pixels", int)),
        metavar="INT",
        help="Largest input photo accepted, in pixels (default 50000000; checked before decoding).",
        show_default=False,
    ),
]
Background = Annotated[
    str,
    typer.Option(
        "--background",
        "-b",
        parser=check_backend_name,
        metavar=BACKGROUND_METAVAR,
        help="Foreground backend. auto: the image's alpha if it has one, else rembg if its model is "
        "installed, else GrabCut.",
    ),
]
Device = Annotated[
    str, typer.Option("--device", parser=word, metavar="auto|cpu|cuda[:N]", help="Compute device.")
]
HashGrid = Annotated[
    str,
    typer.Option(
        "--hash-grid",
        parser=word,
        metavar="torch|triton|tcnn|auto",
        help="Hash-grid implementation the reconstruction trains with: auto (default) = our Triton "
        "kernels on CUDA when Triton is installed, else PyTorch; or name one: torch, triton, tcnn "
        "(tinycudann; both CUDA only).",
    ),
]
CudaGraph = Annotated[
    bool | None,
    typer.Option(
        "--cuda-graph/--no-cuda-graph",
        show_default=False,
        help="Replay each reconstruction training step from a CUDA graph: one launch per step instead "
        "of ~900. Default: on with a CUDA device, off elsewhere; --cuda-graph on a CPU is an error.",
    ),
]
GpuMemory = Annotated[
    float | None,
    number_option(
        "--gpu-memory",
        metavar="GIB",
        help="Most GPU memory this process may take, in GiB (to share a card, or run as on a smaller "
        "one; chunks and offloading adapt). Default: the whole card.",
        show_default=False,
    ),
]
Dtype = Annotated[
    str,
    typer.Option(
        "--dtype",
        parser=word,
        metavar="auto|fp32|bf16|fp16",
        help="Precision (auto: bf16 on CUDA, fp32 on CPU).",
    ),
]
Weights = Annotated[
    Path | None,
    typer.Option(
        "--weights",
        help="Checkpoint file (default: the model's registered file in the weights folder).",
        show_default=False,
    ),
]
WeightsDir = Annotated[Path | None, typer.Option("--weights-dir", help="Weights folder.", show_default=False)]
Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Also write into a non-empty folder sd3d did not write (none of its files is replaced).",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]


def _max_pixels(value: int) -> int | None:
    from sd3d.core.io import check_max_pixels  # the library's rule, read when the option is given

    return check_max_pixels(value)


# --------------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------------
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
