"""Device and dtype selection shared by every stage (``--device auto`` / ``--dtype auto``)."""

from __future__ import annotations

import torch

from sd3d.core.errors import UserError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda:i`` is checked to exist."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r} requested but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"device {name!r} requested but only {torch.cuda.device_count()} CUDA devices exist"
            )
    elif device.type != "cpu":
        raise UserError(f"unsupported device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on CUDA (fp16 where bf16 is unsupported) and fp32 on CPU."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in _DTYPES:
        raise UserError(f"unknown dtype {name!r}: use auto, fp32, bf16 or fp16")
    dtype = _DTYPES[name]
    if device.type == "cpu" and dtype == torch.float16:
        raise UserError("fp16 is not supported on CPU: use --dtype fp32 or bf16")
    return dtype


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """An explicit generator: nothing in sd3d reads or writes the global RNG state."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen
