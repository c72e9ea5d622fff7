"""Shared test fixtures.

Tests that need ``../shared`` (reference fixtures, test data) use the ``shared_dir`` fixture, which
skips with a message when the folder is absent. Never write into ``../shared``. A reference file
that may also be copied into ``tests/fixtures/`` is found with :func:`fixture_path`.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("SD3D_SHARED", REPO_ROOT.parent / "shared"))


def _torch_threads() -> None:
    try:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    except Exception:  # pragma: no cover - torch always present in the test env
        pass


_torch_threads()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared reference folder not found at {SHARED_DIR} (set SD3D_SHARED)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def reference_dir(shared_dir: Path) -> Path:
    return shared_dir / "reference"


def fixture_path(name: str) -> Path:
    """``tests/fixtures/NAME`` if the repository has it, else ``../shared/reference/NAME``; skips the
    calling test when neither exists."""
    for path in (REPO_ROOT / "tests" / "fixtures" / name, SHARED_DIR / "reference" / name):
        if path.is_file():
            return path
    pytest.skip(f"reference file {name} not found in tests/fixtures or {SHARED_DIR / 'reference'}")


@pytest.fixture(scope="session")
def official_syncdreamer_buffers() -> dict:
    """The 10 buffers exactly as the official SyncDreamer code registers them (float32 tensors)."""
    from support.official_checkpoint import official_buffers

    return official_buffers(fixture_path("syncdreamer-official-buffers.npz"))


@pytest.fixture(scope="session")
def official_syncdreamer_ckpt(tmp_path_factory, official_syncdreamer_buffers):
    """A full-size checkpoint in the released file's format (Lightning dict with a pickled callback,
    all 1618 official keys, the official buffers), synthetic weights; 5.6 GB, written once."""
    import gc

    from support.official_checkpoint import official_state_dict, write_lightning_checkpoint

    from sd3d.models.configs import official_config

    path = tmp_path_factory.mktemp("official") / "syncdreamer-pretrain.ckpt"
    state = official_state_dict(official_config(), official_syncdreamer_buffers)
    write_lightning_checkpoint(path, state)
    del state
    gc.collect()
    yield path
    path.unlink(missing_ok=True)


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[-400:]!r}, err={self.err[-400:]!r})"


@pytest.fixture
def run_cli():
    """Run ``sd3d ARGS`` in-process; returns ``CliResult(code, stdout, stderr)``."""
    from cli.app import main

    def _run(*args: str) -> CliResult:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            old_argv = sys.argv
            try:
                code = main([str(a) for a in args])
            finally:
                sys.argv = old_argv
        return CliResult(code, out.getvalue(), err.getvalue())

    return _run


@pytest.fixture(scope="session")
def zero123_ckpt(tmp_path_factory):
    """A tiny Zero123 checkpoint with synthetic weights (the official key layout), written once."""
    from sd3d.models.zero123 import tiny_config, write_synthetic_checkpoint

    return write_synthetic_checkpoint(tmp_path_factory.mktemp("w") / "tiny-zero123.ckpt", tiny_config())


@pytest.fixture(scope="session")
def cutout_photo(tmp_path_factory):
    """A 128x96 cut-out object (RGBA, transparent background): a blue box with a red patch."""
    import numpy as np
    from PIL import Image

    rgba = np.zeros((96, 128, 4), np.uint8)
    rgba[20:80, 30:100] = (40, 160, 220, 255)
    rgba[40:60, 50:70, :3] = (250, 30, 30)
    path = tmp_path_factory.mktemp("in") / "object.png"
    Image.fromarray(rgba, "RGBA").save(path)
    return path
