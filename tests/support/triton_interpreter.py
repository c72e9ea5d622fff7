"""Running a measurement script in Triton's interpreter, for the Triton kernel tests on the CPU.

The interpreter is chosen when Triton is first imported (``TRITON_INTERPRET=1`` must be in the
environment before that), so the kernels run in a subprocess; the script prints one JSON object on
its last line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_interpreted(script: Path, *args: str, timeout: float = 600) -> dict:
    """``python script *args`` with ``TRITON_INTERPRET=1``; its last stdout line, parsed."""
    # the repository first, then whatever the caller's path holds (the GPU machine's packages live
    # in a folder on PYTHONPATH: without it the script could not import PyMCubes there)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    res = subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def interpreted_cases(script: Path, names) -> dict:
    """A kernel test module's interpreter fixture: ``script``'s measurements of ``names`` on the CPU
    in Triton's interpreter; skipped without Triton (CI), and on a CUDA machine, where the compiled
    kernel is tested on the same cases instead."""
    import importlib.util

    import pytest
    import torch

    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed (CPU-only torch, as in CI): the interpreter needs it")
    if torch.cuda.is_available():
        pytest.skip("on a CUDA machine the compiled kernel is tested on these cases instead")
    return run_interpreted(script, *names)
