"""The command line's surface: ``--version``, help placeholders and defaults, one seed, one backend list."""

from __future__ import annotations

import re

import pytest
import typer

from cli.app import app
from cli.help_style import tidy_help
from sd3d import DEFAULT_SEED
from sd3d.background import BACKEND_NAMES


def _leaves(command, path=()):
    """(path, command) of every runnable command of the tree."""
    subs = getattr(command, "commands", None)
    if not subs:
        yield path, command
        return
    for name, sub in subs.items():
        yield from _leaves(sub, (*path, name))


LEAVES = list(_leaves(tidy_help(typer.main.get_command(app))))
NAMES = [" ".join(path) for path, _ in LEAVES]


def test_version(run_cli):
    from importlib.metadata import version

    res = run_cli("--version")
    assert res.code == 0 and res.out.strip() == f"sd3d {version('sd3d')}"


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=NAMES)
def test_help_placeholders_follow_one_rule(run_cli, monkeypatch, path, command):
    monkeypatch.setenv("COLUMNS", "200")
    res = run_cli(*path, "--help")
    assert res.code == 0, res
    assert "<bool>" not in res.out  # flags take no value
    for param in command.params:
        if getattr(param, "is_flag", False):
            assert param.metavar == "", (path, param.name)
        elif param.metavar is not None:
            assert re.fullmatch(r"<[^<>A-Z]+>", param.metavar), (path, param.name, param.metavar)
    # every option's own help text survives the rich markup (a "[default: ...]" in it would vanish)
    for param in command.params:
        text = getattr(param, "help", None)
        if text:
            assert " ".join(text.split())[:30] in " ".join(res.out.replace("│", " ").split()), (
                path,
                param.name,
            )


def test_render_help_shows_its_defaults(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    out = " ".join(run_cli("render", "--help").out.split())
    assert "(default: 30, the target views' elevation)" in out
    assert "(default: the 16 target views, i*22.5)" in out


def test_every_seed_defaults_to_the_official_seed():
    seeds = {" ".join(path): p.default for path, c in LEAVES for p in c.params if p.name == "seed"}
    assert {"generate", "run", "batch", "novel-view", "elevation", "reconstruct"} <= set(seeds)
    assert {name: int(value) for name, value in seeds.items()} == dict.fromkeys(seeds, DEFAULT_SEED)


def test_every_background_option_lists_every_backend():
    metavars = {" ".join(path): p.metavar for path, c in LEAVES for p in c.params if p.name == "background"}
    assert set(metavars) == {"preprocess", "generate", "novel-view", "elevation", "run", "batch"}
    assert set(metavars.values()) == {f"<{'|'.join(BACKEND_NAMES)}>"}


def test_every_photo_command_takes_max_pixels():
    takes = {" ".join(path) for path, c in LEAVES for p in c.params if p.name == "max_pixels"}
    assert takes == {"preprocess", "generate", "novel-view", "elevation", "run", "batch", "serve"}
