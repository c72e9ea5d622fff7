"""The depth-wise attention's middle -- logits over the depth samples, softmax, weighted sum -- in one
pass over the frustum context, read in the layout it is made in (Triton).

Why: the folded form (:meth:`sd3d.models.depth_attention.DepthAttention.forward_folded`) multiplies
per pixel ``(heads x C) @ (C x D)`` and ``(heads x D) @ (D x C)``, which PyTorch's batched matrix
products can only take with the context's channels innermost, ``(b, P, D, C)``. The context is made
``(b, C, D, P)`` (the frustum net's output after the 1x1 Conv3d, GroupNorm and ReLU), so every call
copied it transposed: on an H100 (session 16's profile with call sites) those copies were 3.7 ms of a
~35 ms step, 0.74 ms for each of the four 32x32 blocks. Here a program owns a block of pixels of one
batch element: for each depth sample it loads the ``C`` channels of its pixels (contiguous along the
pixels, so the loads coalesce), forms every head's logit, and keeps a running softmax (the largest
logit so far, the sum of exponentials and the weighted sum of the context, rescaled when the maximum
grows), so the context is read once and nothing of size ``P x D`` is written.

Numerics: everything in float32 from the inputs as they are, rounded once to the output's dtype. The
PyTorch path rounds the logits and the attention weights to the compute dtype on the way; this one
does not, so it is closer to exact arithmetic, not bit-equal to PyTorch. The tests hold both against a
float64 computation. No autograd (inference only).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sd3d.core.triton_precompile import Launch
from sd3d.models.kernels import device_reason
from sd3d.models.kernels.rounding import _HALF_CODE, _round_to

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ELEMENTS = 8192
"""Accumulator elements per program (pixels x heads x channels, float32): with the queries as many
again, 128 per thread at eight warps, within the register file."""


@triton.jit
def _depth_attention_kernel(
    q_ptr,
    ctx_ptr,
    out_ptr,
    pixels,
    depth,
    ctx_sb,
    ctx_sc,
    ctx_sd,
    ctx_sp,
    C: tl.constexpr,
    HEADS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    HALF: tl.constexpr,
):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    b = tl.program_id(1).to(tl.int64)
    h = tl.arange(0, HEADS)
    c = tl.arange(0, C)
    inside = p < pixels
    # queries and output: (b, P, heads, C), contiguous
    row = b * pixels + p.to(tl.int64)
    offsets = (row[:, None, None] * HEADS + h[None, :, None]) * C + c[None, None, :]
    q = tl.load(q_ptr + offsets, mask=inside[:, None, None], other=0.0).to(tl.float32)
    # context (b, C, D, P) by its strides: one depth sample's channels of this block's pixels
    base = ctx_ptr + b * ctx_sb + c[None, :].to(tl.int64) * ctx_sc + p[:, None].to(tl.int64) * ctx_sp
    top = tl.full([BLOCK_P, HEADS], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_P, HEADS], dtype=tl.float32)
    acc = tl.zeros([BLOCK_P, HEADS, C], dtype=tl.float32)
    for d in range(depth):
        x = tl.load(base + d * ctx_sd, mask=inside[:, None], other=0.0).to(tl.float32)  # (BLOCK_P, C)
        logit = tl.sum(q * x[:, None, :], axis=2)  # (BLOCK_P, heads)
        new_top = tl.maximum(top, logit)
        rescale = tl.exp(top - new_top)  # 0 at the first sample (top = -inf)
        weight = tl.exp(logit - new_top)
        total = total * rescale + weight
        acc = acc * rescale[:, :, None] + weight[:, :, None] * x[:, None, :]
        top = new_top
    out = _round_to(acc / total[:, :, None], HALF)  # to nearest, in the interpreter too
    tl.store(out_ptr + offsets, out.to(out_ptr.dtype.element_ty), mask=inside[:, None, None])


KERNELS = (_depth_attention_kernel,)

# ``TRITON_INTERPRET=1`` when Triton was imported: the kernel then runs on CPU tensors (tests).
INTERPRETED = type(_depth_attention_kernel).__name__ == "InterpretedFunction"


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def unsupported_reason(q: torch.Tensor, context: torch.Tensor) -> str | None:
    """Why :func:`depth_attention` cannot take queries ``q`` (b, P, heads, C) and ``context``
    (b, C, D, P) (``None`` when it can)."""
    if (reason := device_reason(q.device, INTERPRETED)) is not None:
        return reason
    if context.device != q.device:
        return f"queries on {q.device}, context on {context.device}"
    return input_reason(q, context)


def input_reason(q: torch.Tensor, context: torch.Tensor) -> str | None:
    """:func:`unsupported_reason` without the device checks: the dtypes and shapes alone (the warm-up
    asks it of ``meta`` stand-ins)."""
    if q.dtype not in DTYPES or context.dtype not in DTYPES:
        return f"dtypes {q.dtype} / {context.dtype} (supported: float32, bfloat16, float16)"
    if q.dim() != 4 or context.dim() != 4:
        return (
            f"shapes {tuple(q.shape)} / {tuple(context.shape)} (expected (b, P, heads, C) and (b, C, D, P))"
        )
    b, pixels, heads, channels = q.shape
    if context.shape[0] != b or context.shape[1] != channels or context.shape[3] != pixels:
        return f"shapes {tuple(q.shape)} / {tuple(context.shape)} do not match"
    if not (_power_of_two(heads) and _power_of_two(channels)) or heads * channels > ELEMENTS:
        return f"{heads} heads x {channels} channels (powers of two, at most {ELEMENTS} together)"
    if q.numel() == 0 or context.shape[2] == 0:
        return "an empty input"
    return None


def kernel_launches(q: torch.Tensor, context: torch.Tensor, out: torch.Tensor) -> list[Launch]:
    """The launch :func:`depth_attention` makes for contiguous queries ``q`` and ``context`` writing
    ``out`` (host work only, so it also runs on ``meta`` tensors: the kernel warm-up enumerates a
    generation's variants with it)."""
    b, pixels, heads, channels = q.shape
    block_p = max(1, min(triton.next_power_of_2(pixels), ELEMENTS // (heads * channels)))
    constants = {
        "C": channels,
        "HEADS": heads,
        "BLOCK_P": block_p,
        "HALF": _HALF_CODE[q.dtype],
        "num_warps": 8 if block_p * heads * channels >= 8192 else 4,
    }
    grid = (triton.cdiv(pixels, block_p), b)
    return [
        Launch(
            _depth_attention_kernel,
            grid,
            (q, context, out, pixels, context.shape[2], *context.stride()),
            constants,
        )
    ]


def depth_attention(q: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """``softmax_D(q . context) @ context`` per pixel and head: ``q`` (b, P, heads, C) (the folded
    queries, scale included), ``context`` (b, C, D, P) in any strides; returns (b, P, heads, C),
    contiguous, in ``q``'s dtype."""
    reason = unsupported_reason(q, context)
    if reason is not None:
        raise ValueError(f"depth_attention cannot take this input: {reason}")
    q = q.contiguous()
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    for launch in kernel_launches(q, context, out):
        launch.run()
    return out
