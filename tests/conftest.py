"""Shared test fixtures.

Reference *numbers* (golden parity fixtures, reference vectors, state-dict manifests, the official
buffers) and the few input photos the parity fixtures were computed from live in the repository under
``tests/fixtures/`` (provenance in its README), so a contributor's clone runs the whole parity suite.
Only tests that need the shared meshes and their renders use ``../shared`` through the ``shared_dir``
fixture, which skips with a message when the folder is absent. Never write into ``../shared``.
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
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"
SHARED_DIR = Path(os.environ.get("SD3D_SHARED", REPO_ROOT.parent / "shared"))


def _torch_threads() -> None:
    try:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    except Exception:  # pragma: no cover - torch always present in the test env
        pass


_torch_threads()


# PyTorch's process-wide settings a test could leave changed for the rest of its worker: how to read
# each and how to put it back.
_TORCH_GLOBALS = {
    "intra-op thread count": ("get_num_threads", "set_num_threads"),
    "grad mode": ("is_grad_enabled", "set_grad_enabled"),
    "default dtype": ("get_default_dtype", "set_default_dtype"),
    "deterministic algorithms": ("are_deterministic_algorithms_enabled", "use_deterministic_algorithms"),
}


@pytest.fixture(autouse=True)
def _torch_globals_unchanged():
    """A test must leave PyTorch's process-wide settings as it found them: a change leaks into every
    later test of the same worker. The thread count did: rembg's numba pool moved it to 2, and on the
    2-core CI machine two threads per worker spin-wait on cores the other worker holds (one elevation
    estimate read 3.8 s of thread time instead of 0.25 s; sd3d.background.rembg_u2netp keeps it now).
    Restored, then reported as this test's error, so the leak is named where it happens."""
    import torch

    before = {name: getattr(torch, get)() for name, (get, _) in _TORCH_GLOBALS.items()}
    yield
    changed = []
    for name, (get, put) in _TORCH_GLOBALS.items():
        now = getattr(torch, get)()
        if now != before[name]:
            getattr(torch, put)(before[name])
            changed.append(f"{name} from {before[name]} to {now}")
    if changed:
        pytest.fail("the test changed torch's " + "; ".join(changed))


@pytest.fixture(autouse=True)
def _private_hf_cache(tmp_path_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets an empty Hugging Face cache: weights are looked for there too, and a test must
    neither find the developer's real checkpoints nor write into that shared cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared reference folder not found at {SHARED_DIR} (set SD3D_SHARED)")
    return SHARED_DIR


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """Reference numbers from the official code (copied from ``shared/reference``)."""
    return FIXTURES_DIR / "reference"


@pytest.fixture(scope="session")
def testset_dir() -> Path:
    """The official test-set photos that the golden parity fixtures were computed from."""
    return FIXTURES_DIR / "testset"


@pytest.fixture(scope="session")
def official_syncdreamer_buffers(reference_dir: Path) -> dict:
    """The 10 buffers exactly as the official SyncDreamer code registers them (float32 tensors)."""
    from support.official_checkpoint import official_buffers

    return official_buffers(reference_dir / "syncdreamer-official-buffers.npz")


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


@pytest.fixture
def stop_after_load(monkeypatch):
    """``sd3d generate`` stops (exit 0) right after loading the model (sampling the full-size model
    on a CPU is far too slow for a test); returns what generation got: ``(config, settings, cc_proj)``."""
    import typer

    import sd3d.pipelines.syncdreamer

    seen = []

    def stop(model, prepared, settings, **kwargs):
        seen.append((model.config, settings, model.cc_projection.weight.detach().clone()))
        raise typer.Exit(0)

    monkeypatch.setattr(sd3d.pipelines.syncdreamer, "run_generation", stop)
    return seen


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[-400:]!r}, err={self.err[-400:]!r})"


@pytest.fixture
def object_views():
    """Decoded views show an object on white (see tests/support/object_decoder.py), so that a run
    with a synthetic checkpoint gets through reconstruction to its outputs."""
    from support import object_decoder

    object_decoder.install()
    yield
    object_decoder.uninstall()


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
    from sd3d.models.zero123 import tiny_config
    from sd3d.models.zero123_checkpoint import write_synthetic_checkpoint

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
