"""Safe checkpoint loading: safetensors, or torch pickles read without ever running pickle code.

``load_state_dict`` accepts ``.safetensors`` and torch files (``.ckpt``/``.pt``/``.pth``/``.bin``,
zip or legacy format; the kind is sniffed from the bytes, not the name). A torch file is first read
with ``torch.load(weights_only=True)``; official Lightning checkpoints such as Zero123's pickle
foreign objects (a ``ModelCheckpoint`` callback, numpy scalars) that torch refuses, so those are
re-read with :mod:`sd3d.weights.safe_unpickle`, which turns every non-allow-listed global into an
inert placeholder. Zip files are memory-mapped, so only ``state_dict`` tensors that are used get
read (Zero123-XL's 15 GB file is mostly optimizer state).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sd3d.core.errors import WeightsError
from safetensors import SafetensorError, safe_open
import torch
from sd3d.weights import safe_unpickle

if TYPE_CHECKING:
    import torch

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def sniff_format(path: Path) -> str:
    """``'safetensors'``, ``'zip'`` (torch >= 1.6 format) or ``'legacy'`` (older torch pickle)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 0:
        raise WeightsError(f"cannot read {path}: the file is empty")
    if head[:4] in _ZIP_MAGIC:
        return "zip"
    if len(head) == 9 and head[8:9] == b"{":
        header_len = int.from_bytes(head[:8], "little")
        if 0 < header_len <= os.path.getsize(path) - 8:
            return "safetensors"
    return "legacy"


def load_state_dict(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint, keyed by their state-dict names (Lightning ``state_dict`` unwrapped).

    A plain state dict is returned as is; a Lightning checkpoint (a dict holding ``state_dict``)
    yields that inner dict. Non-tensor values inside the state dict are dropped (a strict model
    loader then reports them as missing). Parameters come back as plain tensors. Any unreadable,
    truncated or foreign file raises a one-line :class:`WeightsError`.
    """
    path = Path(path)
    if path.is_dir():
        raise WeightsError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    kind = sniff_format(path)
    if kind == "safetensors":
        return _load_safetensors(path, map_location)
    obj = _load_torch_file(path, map_location, mmap=kind == "zip")
    return _extract_state_dict(obj, path)


def state_dict_from(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
) -> tuple[Mapping[str, torch.Tensor], Path | None]:
    """``(state_dict, path)`` for a model loader: a mapping is used as is (``path`` None), anything
    else is a checkpoint file read with :func:`load_state_dict` (its path kept for error messages)."""
    if isinstance(source, Mapping):
        return source, None
    path = Path(source)
    return load_state_dict(path), path


def _load_safetensors(path: Path, map_location: Any) -> dict[str, torch.Tensor]:

    device = str(map_location) if map_location is not None else "cpu"
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            return {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise WeightsError(f"cannot read {path}: {_one_line(exc)}") from exc


def _load_torch_file(path: Path, map_location: Any, mmap: bool) -> Any:

    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        pass  # a global torch will not import: re-read below with placeholders for such globals
    except Exception as exc:  # torch raises RuntimeError/EOFError/ValueError/... for corrupt files
        raise WeightsError(f"cannot read {path}: {_one_line(exc)}") from exc

    if mmap and _is_torchscript(path):
        raise WeightsError(f"cannot read {path}: a TorchScript archive, not a checkpoint")

    try:
        return torch.load(
            path, map_location=map_location, weights_only=False, pickle_module=safe_unpickle, mmap=mmap
        )
    except Exception as exc:
        raise WeightsError(f"cannot read {path}: {_one_line(exc)}") from exc


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in zf.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:

    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state = obj["state_dict"]
    elif isinstance(obj, Mapping):
        state = obj
    else:
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict")
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[str(key)] = value.detach() if isinstance(value, torch.nn.Parameter) else value
    if not tensors:
        keys = ", ".join(str(k) for k in list(obj)[:8]) if isinstance(obj, Mapping) else ""
        raise WeightsError(f"{path} holds no tensors (top-level keys: {keys or 'none'})")
    return tensors
