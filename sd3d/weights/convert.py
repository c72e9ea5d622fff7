"""``sd3d weights convert``: a checkpoint -> one safetensors file that later loads fast with mmap.

The writer streams tensor by tensor from a memory-mapped source, so converting a 5-15 GB Lightning
checkpoint needs about one tensor of extra memory, not a second copy of the model. Tensors are
written largest element size first, which keeps every tensor's offset aligned to its element size
(the header is padded to 8 bytes), so readers can map them without copying.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sd3d.core.errors import OutputPathError, WeightsError
from sd3d.core.io import atomic_path
from sd3d.core.progress import Progress, resolve
from sd3d.weights.loading import load_state_dict
import torch

if TYPE_CHECKING:
    import torch

DTYPES = ("fp32", "fp16", "bf16")


def _float_dtype(name: str) -> torch.dtype:

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name not in table:
        raise WeightsError(f"unknown dtype {name!r}; use one of {', '.join(DTYPES)}")
    return table[name]


def _safetensors_code(dtype: torch.dtype) -> str:

    codes = {
        torch.float64: "F64",
        torch.float32: "F32",
        torch.float16: "F16",
        torch.bfloat16: "BF16",
        torch.int64: "I64",
        torch.int32: "I32",
        torch.int16: "I16",
        torch.int8: "I8",
        torch.uint8: "U8",
        torch.bool: "BOOL",
    }
    for name, code in (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"), ("uint16", "U16")):
        if hasattr(torch, name):
            codes[getattr(torch, name)] = code
    if dtype not in codes:
        raise WeightsError(f"safetensors cannot store {dtype} tensors")
    return codes[dtype]


def write_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    float_dtype: torch.dtype | None = None,
    progress: Progress | None = None,
) -> int:
    """Write ``tensors`` as safetensors atomically, one tensor in memory at a time; returns the size.

    ``float_dtype`` (if given) is what floating-point tensors are cast to, tensor by tensor while
    writing; other tensors keep their dtype. Layout: 8-byte little-endian header length, the JSON
    header (padded with spaces to a multiple of 8), then the raw little-endian bytes.
    """

    if sys.byteorder != "little":  # pragma: no cover - every platform torch ships for
        raise WeightsError("safetensors writing needs a little-endian machine")

    def out_dtype(t: torch.Tensor) -> torch.dtype:
        return float_dtype if float_dtype is not None and t.is_floating_point() else t.dtype

    def itemsize(dtype: torch.dtype) -> int:
        return torch.empty((), dtype=dtype).element_size()

    # largest element size first (stable, so key order is kept within a size): aligned offsets
    order = sorted(tensors, key=lambda k: -itemsize(out_dtype(tensors[k])))
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for key in order:
        t = tensors[key]
        dtype = out_dtype(t)
        nbytes = t.numel() * itemsize(dtype)
        header[key] = {
            "dtype": _safetensors_code(dtype),
            "shape": list(t.shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    task = resolve(progress).task(f"write {Path(path).name}", total=len(order))
    with atomic_path(path) as tmp, open(tmp, "wb") as f, task as advance:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for key in order:
            t = tensors[key].detach().to(device="cpu", dtype=out_dtype(tensors[key])).contiguous()
            if t.numel():
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
            advance()
    return 8 + len(blob) + offset


@dataclass(frozen=True)
class ConvertResult:
    path: Path
    tensors: int
    dropped: int
    bytes: int
    dtype: str


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    dtype: str = "fp32",
    drop_prefixes: Iterable[str] = (),
    progress: Progress | None = None,
) -> ConvertResult:
    """Copy every tensor of ``src`` (minus keys starting with ``drop_prefixes``) into ``dst``.

    Floating-point tensors are cast to ``dtype``; integer/bool tensors (e.g. ``num_updates``) keep
    theirs. Nothing is dropped unless asked. ``dst`` must end in ``.safetensors``.
    """
    src, dst = Path(src), Path(dst)
    target = _float_dtype(dtype)
    if dst.suffix != ".safetensors":
        raise OutputPathError(f"output must end in .safetensors: {dst}")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise OutputPathError(f"output would overwrite the input: {dst}")
    tensors = load_state_dict(src)
    prefixes = tuple(p for p in drop_prefixes if p)
    kept = {k: v for k, v in tensors.items() if not k.startswith(prefixes)} if prefixes else tensors
    if not kept:
        raise WeightsError(f"--drop-prefix removed every tensor of {src}")
    metadata = {"format": "pt", "sd3d_source": src.name, "sd3d_dtype": dtype}
    if prefixes:
        metadata["sd3d_dropped_prefixes"] = ",".join(prefixes)
    size = write_safetensors(dst, kept, metadata, float_dtype=target, progress=progress)
    return ConvertResult(dst, len(kept), len(tensors) - len(kept), size, dtype)
