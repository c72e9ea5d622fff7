"""rembg with the small U^2-Net model (``u2netp.onnx``, MIT/Apache-2.0, 4.6 MB) read from our weights dir.

rembg and onnxruntime are an optional extra (``pip install 'sd3d[rembg]'``) imported only when this
backend runs. rembg finds models through ``U2NET_HOME``; we point it at the sd3d weights folder only
while the session is created (and restore the variable afterwards), so rembg never downloads anything:
``scripts/fetch_u2netp.py`` (run by ``make install``) places the file there.

rembg imports pymatting, whose numba functions start numba's OpenMP thread pool; that pool shares
PyTorch's OpenMP runtime (one ``libgomp.so.1`` per process) and sets its thread count to the CPU count,
so PyTorch's intra-op thread count silently changed with it (``OMP_NUM_THREADS=1`` or a
``torch.set_num_threads`` of the caller lost). The backend keeps PyTorch's count across its work.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from sd3d.background.base import clean_matte, with_alpha
from sd3d.core.errors import MissingDependencyError, WeightsError
from sd3d.weights import expected_path, locate
from sd3d.weights.cache import search_order

MODEL_NAME = "u2netp"


def model_path(weights_dir: str | os.PathLike | None = None) -> Path:
    """Where ``u2netp.onnx`` is: the first copy the weights manager finds, else where it is expected."""

    found = locate(MODEL_NAME, weights_dir)
    return found.path if found is not None else expected_path(MODEL_NAME, weights_dir)


def missing_model_hint(weights_dir: str | os.PathLike | None = None) -> str:
    """Why ``auto`` cannot use rembg, or ``""`` when it can (said when another backend runs)."""
    if not rembg_installed():
        return "rembg is not installed (pip install 'sd3d[rembg]')"
    if model_path(weights_dir).is_file():
        return ""

    where = ", ".join(str(place.path.parent) for place in search_order(MODEL_NAME, weights_dir))
    return f"rembg model {MODEL_NAME}.onnx not found in {where} (get it with: sd3d weights download {MODEL_NAME})"


def rembg_installed() -> bool:
    """Cheap check (no import): both rembg and onnxruntime are importable."""
    return all(importlib.util.find_spec(m) is not None for m in ("rembg", "onnxruntime"))


def is_available(weights_dir: str | os.PathLike | None = None) -> bool:
    """True when ``auto`` may pick rembg: installed and the model file present locally."""
    return not missing_model_hint(weights_dir)


@contextlib.contextmanager
def _u2net_home(folder: Path) -> Iterator[None]:
    old = os.environ.get("U2NET_HOME")
    os.environ["U2NET_HOME"] = str(folder.resolve())
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("U2NET_HOME", None)
        else:
            os.environ["U2NET_HOME"] = old


@contextlib.contextmanager
def _torch_threads_kept() -> Iterator[None]:
    """PyTorch's intra-op thread count as it was before the block (see the module doc).

    Only where PyTorch is already imported: this module does not import it (preprocessing alone
    never needs it), and every sd3d pipeline that goes on to PyTorch work imports it first. A numba
    pool started here in a process without PyTorch leaves its count to a later ``import torch``."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if torch is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)


class RembgBackend:
    name = "rembg"

    def __init__(self, weights_dir: str | os.PathLike | None = None) -> None:
        self.weights_dir = weights_dir

    def segment(self, image: Image.Image) -> Image.Image:
        return with_alpha(image, self.mask(image))

    def mask(self, image: Image.Image) -> np.ndarray:
        if not rembg_installed():
            raise MissingDependencyError(
                "--background rembg needs rembg and onnxruntime: pip install 'sd3d[rembg]'"
            )
        path = model_path(self.weights_dir)
        if not path.is_file():
            raise WeightsError(
                f"rembg model {path.name} not found at {path}; "
                f"run: python scripts/fetch_u2netp.py --dest {path.parent}"
            )
        with _torch_threads_kept():
            from rembg import new_session, remove

            with _u2net_home(path.parent):
                try:
                    session = new_session(MODEL_NAME, providers=_providers())
                except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
                    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
                    raise WeightsError(
                        f"rembg model {path} cannot be loaded (corrupt or truncated? {reason}); fetch it "
                        f"again: python scripts/fetch_u2netp.py --dest {path.parent} (or make install)"
                    ) from exc
            matte = remove(image.convert("RGB"), session=session, only_mask=True)
        alpha = np.asarray(matte.convert("L") if matte.mode != "L" else matte)
        return clean_matte(alpha)


def _providers() -> list[str]:
    """CUDA when onnxruntime has it, else CPU (device-agnostic like the rest of sd3d)."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available
