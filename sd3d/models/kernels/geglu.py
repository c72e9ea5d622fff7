"""GEGLU's ``a * gelu(g)`` in one pass over its projection ``[a, g]`` (Triton).

Why: in the UNet's feed-forward layers ``a, g = proj(x).chunk(2, -1); a * F.gelu(g)`` runs as two
PyTorch kernels on strided halves, which are not vectorised: on an H100 (session 15's profile of
the default step) the GELU took 1.16 ms and the product 1.13 ms of a 32.3 ms step, reading the
projection's ``2F`` columns and writing ``F`` twice over. This kernel reads each half once and writes
the product once.

It rounds where PyTorch does, so that it is PyTorch's function and not a neighbour of it: GELU in
float32 (``g * 0.5 * (1 + erf(g / sqrt(2)))``, the exact form, PyTorch's order of operations),
rounded to the tensor's dtype (PyTorch's GELU returns that), then the product in float32, rounded
again. On an H100 (session 16) it is within 0.001 of an ulp of PyTorch's at the tensor's largest
value, but 0.3-0.9 % of half-precision outputs differ from PyTorch's in their last bit, where none
were expected (both call libdevice's erf); the cause is not found (tests/test_triton_geglu.py keeps
it as an expected failure). The plain PyTorch code (:class:`sd3d.models.unet.GEGLU`) stays the
reference; the tests compare the two in the interpreter and on CUDA. No autograd.

Measured (session 16, H100, ``benchmarks/generate.py --quick``): 1.626 -> 1.517 s a generation on
top of the depth-attention kernel, deviation of the final latents from fp32 unchanged (1.21e-2); the
inference default (``prepare_for_inference(geglu_kernel="auto")``) since.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sd3d.core.triton_precompile import Launch
from sd3d.models.kernels import device_reason
from sd3d.models.kernels.rounding import _HALF_CODE, _round_to

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BLOCK_ELEMENTS = 4096
"""Elements a program handles (rows x columns): a tile of ``BLOCK_ELEMENTS / BLOCK_C`` rows."""


@triton.jit
def _geglu_kernel(
    h_ptr,
    y_ptr,
    rows,
    width,
    h_row_stride,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
    HALF: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    mask = (r < rows) & (c < width)
    row = h_ptr + r.to(tl.int64) * h_row_stride
    a = tl.load(row + c, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(row + width + c, mask=mask, other=0.0).to(tl.float32)
    gelu = _round_to(g * 0.5 * (1.0 + tl.math.erf(g * 0.7071067811865476)), HALF)  # PyTorch's GELU output
    y = _round_to(a * gelu, HALF)
    tl.store(y_ptr + r.to(tl.int64) * width + c, y.to(y_ptr.dtype.element_ty), mask=mask)


KERNELS = (_geglu_kernel,)

# ``TRITON_INTERPRET=1`` when Triton was imported: the kernel then runs on CPU tensors (tests).
INTERPRETED = type(_geglu_kernel).__name__ == "InterpretedFunction"


def unsupported_reason(h: torch.Tensor) -> str | None:
    """Why :func:`geglu` cannot take the projection ``h`` (``None`` when it can)."""
    return device_reason(h.device, INTERPRETED) or input_reason(h)


def input_reason(h: torch.Tensor) -> str | None:
    """:func:`unsupported_reason` without the device checks: dtype, shape and strides alone (the
    warm-up asks it of ``meta`` stand-ins)."""
    if h.dtype not in DTYPES:
        return f"dtype {h.dtype} (supported: float32, bfloat16, float16)"
    if h.dim() < 1 or h.shape[-1] % 2 or h.numel() == 0:
        return f"shape {tuple(h.shape)} (the last dimension must be even and nothing empty)"
    if h.stride(-1) != 1 or _rows_stride(h) is None:
        return f"strides {h.stride()} (rows of contiguous columns, one stride apart)"
    return None


def _rows_stride(h: torch.Tensor) -> int | None:
    """The stride between consecutive rows when every dimension but the last flattens to one."""
    if h.dim() == 1:
        return h.shape[0]
    try:
        return h.view(-1, h.shape[-1]).stride(0)
    except RuntimeError:
        return None


def kernel_launches(h: torch.Tensor, y: torch.Tensor) -> list[Launch]:
    """The launch :func:`geglu` makes for the projection ``h`` writing ``y`` (host work only, so it
    also runs on ``meta`` tensors: the kernel warm-up enumerates a generation's variants with it)."""
    width = h.shape[-1] // 2
    rows = h.numel() // h.shape[-1]
    block_c = min(triton.next_power_of_2(width), 512)
    block_r = max(1, BLOCK_ELEMENTS // block_c)
    grid = (triton.cdiv(rows, block_r), triton.cdiv(width, block_c))
    constants = {"BLOCK_R": block_r, "BLOCK_C": block_c, "HALF": _HALF_CODE[h.dtype], "num_warps": 4}
    return [Launch(_geglu_kernel, grid, (h, y, rows, width, _rows_stride(h)), constants)]


def geglu(h: torch.Tensor) -> torch.Tensor:
    """``a * F.gelu(g)`` for ``a, g = h.chunk(2, dim=-1)``, as a new contiguous tensor of ``h``'s
    dtype (see the module docstring for the roundings)."""
    reason = unsupported_reason(h)
    if reason is not None:
        raise ValueError(f"geglu cannot take this input: {reason}")
    y = torch.empty(*h.shape[:-1], h.shape[-1] // 2, dtype=h.dtype, device=h.device)
    for launch in kernel_launches(h, y):
        launch.run()
    return y
