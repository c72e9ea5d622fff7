"""Device and dtype selection shared by every stage (``--device auto`` / ``--dtype auto``)."""

from __future__ import annotations

import math

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


def triton_unsupported_gpu(device: torch.device) -> str | None:
    """Why Triton cannot compile kernels for the CUDA ``device`` (``None``: it can): a compute
    capability below 7.0, where PyTorch's inductor draws the same line. The one rule behind both of
    our Triton kernels' availability (the hash grid, the GroupNorm)."""
    if not torch.cuda.is_available():
        return "CUDA is not available"
    major, minor = torch.cuda.get_device_capability(device)
    if major < 7:
        return f"Triton does not compile for this GPU (compute capability {major}.{minor}; it needs 7.0)"
    return None


def indexed_cuda(device: torch.device) -> torch.device:
    """A CUDA ``device`` with its index: ``cuda`` (which ``load_model`` has before any tensor
    exists) names the current device, which some of PyTorch's CUDA queries refuse to take unnamed
    (``get_device_properties``, ``get_per_process_memory_fraction``)."""
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def cuda_memory_budget(device: torch.device) -> int:
    """Bytes this process can still allocate on a CUDA ``device``.

    ``torch.cuda.mem_get_info`` reports the card's free memory, which ignores a per-process cap
    (``torch.cuda.set_per_process_memory_fraction``: how a shared GPU is split, and how a small
    card is emulated on a large one) and counts the blocks PyTorch's cache holds but does not use
    as taken. The budget is the smaller of the card's free memory plus those cached blocks, and the
    cap minus what is allocated.
    """
    device = indexed_cuda(device)  # get_per_process_memory_fraction needs an index
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    cached_unused = torch.cuda.memory_reserved(device) - allocated
    budget = free + cached_unused
    fraction = torch.cuda.get_per_process_memory_fraction(device)
    if fraction < 1.0:
        budget = min(budget, int(fraction * total) - allocated)
    return max(0, budget)


def out_of_memory_message(exc: BaseException, device: torch.device | None = None) -> str:
    """One line for a CUDA out-of-memory error: how much the process held, and what to lower."""
    held = ""
    if device is not None and device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        fraction = torch.cuda.get_per_process_memory_fraction(device)
        allowed = fraction * total
        held = (
            f" ({torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB at the peak of "
            f"{allowed / 2**30:.1f} GiB allowed)"
        )
    return (
        f"the GPU ran out of memory{held}: lower --samples or --batch-view-num, use --quality draft "
        "for reconstruction, close other programs on the GPU, or run with --device cpu"
    )


def limit_gpu_memory(device: torch.device, gib: float | None) -> None:
    """Cap what this process may allocate on a CUDA ``device`` at ``gib`` GiB (``None``: no cap).

    For sharing one card between processes (two batch workers on one GPU) and for running as on a
    smaller card; the view chunks, the decoder batch and the offloading of the conditioning encoders
    then size themselves to the cap (:func:`cuda_memory_budget`). A cap at or above the card's memory
    is no cap; on the CPU it does nothing.
    """
    if gib is None:
        return
    check_gpu_memory(gib)
    if device.type != "cuda":
        return
    # an index, not torch.device("cuda"): torch 2.11's set_per_process_memory_fraction refuses a
    # device without one (seen on the GPU machine)
    index = device.index if device.index is not None else torch.cuda.current_device()
    _, total = torch.cuda.mem_get_info(index)
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total), index)


def check_gpu_memory(gib: float | None) -> float | None:
    """A GPU memory cap must be a positive number of GiB (``None``: no cap)."""
    if gib is not None and not (math.isfinite(gib) and gib > 0):
        raise UserError(f"--gpu-memory must be a positive number of GiB, got {gib}")
    return gib
