"""scripts/warm_imports.py: the first import of rembg (pymatting's numba kernels) paid at install."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "warm_imports.py"


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.skipif(importlib.util.find_spec("rembg") is None, reason="rembg is not installed")
def test_rembg_is_imported_and_its_numba_kernels_are_cached():
    """After the script, pymatting's compiled kernels are in numba's cache, so the first sd3d run
    imports rembg in seconds (the script's own first run after an install took 48 s on 2 cores)."""
    res = _run()
    assert res.returncode == 0 and "rembg ready in" in res.stdout, res
    package = Path(importlib.util.find_spec("pymatting").origin).parent
    assert any(package.rglob("*.nbi")), "numba kept nothing in pymatting's __pycache__"


def test_without_rembg_there_is_nothing_to_do():
    res = _run("-S")  # no site-packages: rembg cannot be found
    assert res.returncode == 0 and "rembg is not installed" in res.stdout, res


def test_a_broken_rembg_only_warns(tmp_path):
    """A failing import must not fail `make install`: the background step reports its own errors."""
    (tmp_path / "rembg").mkdir()
    (tmp_path / "rembg" / "__init__.py").write_text("raise ImportError('onnxruntime is broken here')\n")
    res = _run("-S", env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert (
        res.returncode == 0
        and "importing rembg failed: ImportError: onnxruntime is broken here" in res.stderr
    )
