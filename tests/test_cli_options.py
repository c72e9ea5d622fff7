"""The option parsers of ``cli/common.py``: values, ``auto``, ranges and the one-line errors they give."""

from __future__ import annotations

import inspect
from typing import Annotated, get_args, get_origin

import pytest
import typer

from cli.common import (
    Seed,
    check_range,
    choice_option,
    number_list_parser,
    number_parser,
    retold,
)
from sd3d.core import defaults
from sd3d.core.errors import UserError


def test_numbers_are_parsed_and_kept_in_range():
    steps = number_parser("--steps", int, at_least=1)
    assert steps(" 12 ") == 12 and steps(50) == 50  # a default arrives as a number
    with pytest.raises(UserError, match=r"^--steps must be an integer, got '2\.5'$"):
        steps("2.5")
    with pytest.raises(UserError, match=r"^--steps must be at least 1, got 0$"):
        steps("0")
    port = number_parser("--port", int, at_least=1, at_most=65535)
    with pytest.raises(UserError, match=r"^--port must be between 1 and 65535, got 70000$"):
        port("70000")
    eta = number_parser("--eta", at_most=1.0)
    with pytest.raises(UserError, match=r"^--eta must be at most 1, got 1\.5$"):
        eta("1.5")
    for text in ("nan", "inf", "-inf"):
        with pytest.raises(UserError, match="--eta must be a finite number"):
            eta(text)


def test_auto_is_none_and_named_in_the_error():
    cfg = number_parser("--cfg", auto=True)
    assert cfg("auto") is None and cfg(" AUTO ") is None and cfg("2.5") == 2.5
    with pytest.raises(UserError, match=r"^--cfg must be a number or 'auto', got 'x'$"):
        cfg("x")
    with pytest.raises(UserError, match="--seed must be a number"):
        number_parser("--seed")("auto")  # only an auto option takes the word


def test_the_seed_range_is_the_librarys():
    parse = get_args(Seed)[1].parser
    first, last = defaults.SEED_RANGE
    assert parse(str(first)) == first and parse(str(last)) == last
    with pytest.raises(UserError, match=f"between {first} and {last}"):
        parse(str(last + 1))
    assert check_range(0.5, "--x", 0.0, 1.0) == 0.5


def test_choices_and_lists():
    engine = choice_option("--engine", choices=("local", "ray")).parser
    assert engine(" RAY ") == "ray"
    with pytest.raises(UserError, match=r"^--engine must be local or ray, got 'spark'$"):
        engine("spark")
    three = choice_option("--up", choices=("auto", "y", "z")).parser
    with pytest.raises(UserError, match=r"^--up must be one of auto, y, z, got 'x'$"):
        three("x")
    azimuths = number_list_parser("--azimuths", what="degrees")
    assert azimuths("0, 90,,180") == (0.0, 90.0, 180.0)
    with pytest.raises(UserError, match="--azimuths must be comma-separated degrees, got '0,x'"):
        azimuths("0,x")
    with pytest.raises(UserError, match="--azimuths is empty"):
        azimuths(" , ")
    with pytest.raises(UserError, match="--held-out must be comma-separated integers"):
        number_list_parser("--held-out", int)("3,7.5")


def test_retold_changes_only_the_help():
    told = retold(Seed, "Seed of the fit.")
    base, info = get_args(told)
    shared = get_args(Seed)[1]
    assert base is int and info.help == "Seed of the fit." and shared.help != info.help
    assert (info.default, info.param_decls, info.parser, info.metavar) == (
        shared.default,
        shared.param_decls,
        shared.parser,
        shared.metavar,
    )


def _commands(group: typer.Typer):
    for info in group.registered_commands:
        yield info.callback
    for sub in group.registered_groups:
        yield from _commands(sub.typer_instance)


def test_every_command_declares_its_options_one_way():
    """Typed ``Annotated`` parameters, the default after ``=``: no ``typer.Option`` as a default."""
    from cli.app import app

    found = 0
    for callback in _commands(app):
        for param in inspect.signature(callback, eval_str=True).parameters.values():
            found += 1
            where = f"{callback.__module__}.{callback.__name__}({param.name})"
            assert get_origin(param.annotation) is Annotated, where
            assert not isinstance(param.default, typer.models.ParameterInfo), where
    assert found > 100
