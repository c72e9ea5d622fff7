"""GroupNorm for inference in Triton: the input's own layout, fused input bias and activation.

Why: PyTorch's CUDA GroupNorm only reads contiguous NCHW. On a channels-last UNet every norm therefore
copies its input to NCHW, and the next convolution copies the output back; the SiLU after the norm and
the per-(N, C) bias added before it (a ResBlock's time embedding, the 3D nets' time / view
embeddings) are separate elementwise passes over the same tensor. This kernel reads the input in
its own layout, adds the bias, normalises, applies the activation and writes the output in the
input's layout:

    y = act((x + pre_bias[n, c] - mean[n, g]) * rstd[n, g] * weight[c] + bias[c])

(rounded where the unfused PyTorch code rounds: "Rounding" below).

Layouts: any tensor (N, C, *spatial) whose spatial dims flatten to one stride, i.e. contiguous
NCHW / NCDHW, ``channels_last`` and ``channels_last_3d`` (and batch slices of them). dtypes: float32,
bfloat16, float16 in and out (the output dtype is the caller's choice, so a norm with float32
parameters can return the input's half precision, as CompVis' ``GroupNorm32`` does).

Numerics: everything is computed in float32, on the input shifted by a pivot: each group's first
channel at the sample's first position, ``x - pivot`` exact where the values are within a factor of
two of it (Sterbenz), so a large common offset costs no precision. Statistics are exact per tile
(mean, then the sum of squared deviations from it, both from registers) and merged across tiles,
programs and channels with Chan et al.'s pairwise update of (count, mean, M2), the parallel form of
Welford's algorithm that PyTorch's CUDA kernel uses. In float32 and with rounding "fused" the output is
``((x - pivot) - centre) * scale + shift`` rather than PyTorch's ``x * a + b``, which cancels when
|mean| >> std: the group mean is carried as pivot + centre, never rounded to one float32 near the
offset (with an offset of 100 standard deviations that rounding alone left the output 18 % further
from float64 than PyTorch's CUDA GroupNorm, seen on an H100).

Rounding (``group_norm(..., rounding=...)``): ``"unfused"``, the default, rounds a half-precision
call where the PyTorch code it replaces does on CUDA -- ``x + term`` to the input's dtype after each
term; the group's mean and 1/std to the input's dtype (``native_group_norm`` returns them in that
dtype unless a parameter is float32, and its CUDA affine reads them back), then PyTorch's ``a * x + b``
with ``a = rstd * weight``, ``b = bias - a * mean`` (fmas, as nvcc compiles them); the norm's
output to the output dtype; the activation's output again -- with round-to-nearest-even done on
the float32 bits (so Triton's interpreter, whose bfloat16 cast truncates, rounds as the GPU does).
It changes the memory traffic, not the numbers: in the interpreter its half-precision output
equals an emulation of PyTorch's CUDA path bit for bit. float32 calls keep the pivot form (nothing
to round; it does not cancel). ``"fused"`` adds the bias in float32 (through the statistics, the
terms' sum shifting each channel's mean), keeps the statistics in float32 and applies the activation
to the float32 value, rounding once: closer to float64 shape by shape, further from a float32 model
over a whole SyncDreamer generation (:mod:`sd3d.models.norms` says by how much).

Programs: one per (sample, block of whole groups, spatial chunk). Per-channel (mean, M2) are
reduced over the spatial axis, so the loaded tile is [spatial, channels] with whichever axis is
contiguous in memory: a channels-last row of a block is one contiguous run of channels. A block's
channels are then combined into their groups with a small membership matrix (group sizes such as
10, 20, 40 channels need not be powers of two). With one chunk per sample-block, one kernel computes
the statistics and then normalises (its second read mostly hits L2); with several, a first kernel
writes per-chunk per-channel partial statistics and a second merges them and normalises its chunk
(:func:`plan_launch` decides from the shape and the device's SM count).
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from sd3d.core.triton_precompile import Launch, compile_launch, distinct_variants
from sd3d.models.kernels import GROUP_NORM_ROUNDINGS, device_reason
from sd3d.models.kernels.rounding import _HALF_CODE, _round_to

ACTIVATIONS = {None: 0, "silu": 1, "relu": 2}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_TILE = 4096  # elements of one [spatial, channel] tile
_MAX_BLOCK_C = 256
_MAX_PARTIALS = 8192  # split x block_c partial statistics merged by one program


# --------------------------------------------------------------------------------------------------
# device code
# --------------------------------------------------------------------------------------------------
@triton.jit
def _load_term(t_ptr, n, ch, mask_c, stride_tn, stride_tc):
    """One pre-norm bias term's values for sample ``n``, channels ``ch`` (float32)."""
    return tl.load(t_ptr + n * stride_tn + ch * stride_tc, mask=mask_c, other=0.0).to(tl.float32)


@triton.jit
def _with_terms(x, t1, t2, NUM_TERMS: tl.constexpr, HALF: tl.constexpr):
    """``x`` plus the pre-norm bias terms one at a time, each sum rounded to the input's dtype
    (``HALF``) as PyTorch's ``x = x + term`` does (rounding "unfused"; NUM_TERMS = 0 otherwise)."""
    if NUM_TERMS > 0:
        x = _round_to(x + t1[None, :], HALF)
    if NUM_TERMS > 1:
        x = _round_to(x + t2[None, :], HALF)
    return x


@triton.jit
def _channel_moments(
    x_ptr,
    col,
    mask_c,
    s_begin,
    s_end,
    stride_s,
    pivot,
    t1,
    t2,
    BLOCK_S: tl.constexpr,
    BLOCK_C: tl.constexpr,
    NUM_TERMS: tl.constexpr,
    HALF: tl.constexpr,
):
    """Per-channel mean and M2 (sum of squared deviations) of x[s, col] - pivot for s in
    [s_begin, s_end), x with the ``NUM_TERMS`` bias terms added (:func:`_with_terms`)."""
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    rows = tl.arange(0, BLOCK_S)
    for s0 in range(s_begin, s_end, BLOCK_S):
        s = s0 + rows
        valid = s < s_end
        mask = valid[:, None] & mask_c[None, :]
        x = tl.load(x_ptr + s[:, None] * stride_s + col[None, :], mask=mask, other=0.0).to(tl.float32)
        x = _with_terms(x, t1, t2, NUM_TERMS, HALF)
        x = tl.where(mask, x - pivot[None, :], 0.0)
        n_a = (s0 - s_begin) * 1.0
        n_b = tl.sum(valid.to(tl.float32), axis=0)
        tile_mean = tl.sum(x, axis=0) / n_b
        dev = tl.where(mask, x - tile_mean[None, :], 0.0)
        tile_m2 = tl.sum(dev * dev, axis=0)
        n = n_a + n_b
        delta = tile_mean - mean
        mean = mean + delta * (n_b / n)
        m2 = m2 + tile_m2 + delta * delta * (n_a * n_b / n)
    return mean, m2


@triton.jit
def _group_pivot(x_base, c, mask_c, stride_xc, CG: tl.constexpr):
    """Each channel's pivot: its group's first channel at the sample's first position (the same
    for every program and chunk of the sample, so partial statistics merge without re-centring)."""
    return tl.load(x_base + (c // CG) * CG * stride_xc, mask=mask_c, other=0.0).to(tl.float32)


@triton.jit
def _terms_and_pivot(
    t1_ptr,
    t2_ptr,
    n,
    c,
    mask_c,
    stride_t1n,
    stride_t1c,
    stride_t2n,
    stride_t2c,
    pivot,
    CG: tl.constexpr,
    NUM_TERMS: tl.constexpr,
):
    """The bias terms added element by element (rounding "unfused") for channels ``c``, and the
    pivot moved by the pivot channel's terms (any value near the group's data would do; the same
    one in the statistics and the normalisation)."""
    t1 = tl.zeros_like(pivot)
    t2 = tl.zeros_like(pivot)
    first = (c // CG) * CG
    if NUM_TERMS > 0:
        t1 = _load_term(t1_ptr, n, c, mask_c, stride_t1n, stride_t1c)
        pivot = pivot + _load_term(t1_ptr, n, first, mask_c, stride_t1n, stride_t1c)
    if NUM_TERMS > 1:
        t2 = _load_term(t2_ptr, n, c, mask_c, stride_t2n, stride_t2c)
        pivot = pivot + _load_term(t2_ptr, n, first, mask_c, stride_t2n, stride_t2c)
    return t1, t2, pivot


@triton.jit
def _affine(
    mean,
    m2,
    count,
    c,
    c_local,
    mask_c,
    n,
    w_ptr,
    b_ptr,
    beta_ptr,
    stride_beta_n,
    stride_beta_c,
    eps,
    pivot,
    CG: tl.constexpr,
    GROUPS_P2: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_BETA: tl.constexpr,
    AFFINE: tl.constexpr,
    STATS_HALF: tl.constexpr,
):
    """Per-channel (centre, scale, shift) from per-channel (mean, M2) of x - pivot over ``count``
    values each: the pre-norm bias shifts each channel's mean, then the channels of each group are
    merged (equal counts) into the group's mean and 1/std. What they mean depends on ``AFFINE``
    (:func:`_normalize` applies them): 0, y = ((x - pivot) - centre) * scale + shift; 1, PyTorch's
    CUDA form y = fma(x, a, b) with a = rstd * weight, b = fma(-a, mean, bias), mean and rstd first
    rounded to ``STATS_HALF`` (returned as centre = 0, scale = a, shift = b); 2, PyTorch's form
    without parameters, y = (x - mean) * rstd (centre = mean, scale = rstd)."""
    beta = tl.zeros_like(mean)
    if HAS_BETA:
        beta = tl.load(beta_ptr + n * stride_beta_n + c * stride_beta_c, mask=mask_c, other=0.0).to(
            tl.float32
        )
    mean = mean + beta
    groups = tl.arange(0, GROUPS_P2)
    member = (groups[:, None] == (c_local // CG)[None, :]) & mask_c[None, :]
    group_mean = tl.sum(tl.where(member, mean[None, :], 0.0), axis=1) / CG
    mean_of_group = tl.sum(tl.where(member, group_mean[:, None], 0.0), axis=0)
    dev = mean - mean_of_group
    group_m2 = tl.sum(tl.where(member, (m2 + count * dev * dev)[None, :], 0.0), axis=1)
    group_rstd = tl.div_rn(1.0, tl.sqrt_rn(group_m2 / (count * CG) + eps))
    scale = tl.sum(tl.where(member, group_rstd[:, None], 0.0), axis=0)
    if AFFINE != 0:
        # native_group_norm returns mean and rstd in the input's dtype when the parameters share it,
        # and its CUDA affine reads them back from there: round them as it does
        mean_r = _round_to(pivot + mean_of_group, STATS_HALF)
        rstd_r = _round_to(scale, STATS_HALF)
        if AFFINE == 2:
            return mean_r, rstd_r, tl.zeros_like(mean)
        a = rstd_r
        if HAS_WEIGHT:
            a = a * tl.load(w_ptr + c, mask=mask_c, other=0.0).to(tl.float32)
        b = tl.zeros_like(mean)
        if HAS_BIAS:
            b = tl.load(b_ptr + c, mask=mask_c, other=0.0).to(tl.float32)
        return tl.zeros_like(mean), a, tl.fma(-a, mean_r, b)
    if HAS_WEIGHT:
        scale = scale * tl.load(w_ptr + c, mask=mask_c, other=0.0).to(tl.float32)
    shift = tl.zeros_like(mean)
    if HAS_BIAS:
        shift = tl.load(b_ptr + c, mask=mask_c, other=0.0).to(tl.float32)
    return mean_of_group - beta, scale, shift


@triton.jit
def _normalize(
    x_ptr,
    y_ptr,
    x_col,
    y_col,
    mask_c,
    s_begin,
    s_end,
    stride_xs,
    stride_ys,
    pivot,
    centre,
    scale,
    shift,
    t1,
    t2,
    ACTIVATION: tl.constexpr,
    BLOCK_S: tl.constexpr,
    NUM_TERMS: tl.constexpr,
    HALF: tl.constexpr,
    OUT_HALF: tl.constexpr,
    UNFUSED: tl.constexpr,
    AFFINE: tl.constexpr,
):
    rows = tl.arange(0, BLOCK_S)
    for s0 in range(s_begin, s_end, BLOCK_S):
        s = s0 + rows
        mask = (s < s_end)[:, None] & mask_c[None, :]
        x = tl.load(x_ptr + s[:, None] * stride_xs + x_col[None, :], mask=mask, other=0.0).to(tl.float32)
        x = _with_terms(x, t1, t2, NUM_TERMS, HALF)
        if AFFINE == 1:  # PyTorch's CUDA GroupNorm: a * x + b, one fma
            y = tl.fma(x, scale[None, :], shift[None, :])
        elif AFFINE == 2:
            y = (x - centre[None, :]) * scale[None, :]
        else:
            y = ((x - pivot[None, :]) - centre[None, :]) * scale[None, :] + shift[None, :]
        if UNFUSED:  # the norm's output is rounded before the activation, as in PyTorch's two ops
            y = _round_to(y, OUT_HALF)
        if ACTIVATION == 1:
            y = y * tl.sigmoid(y)
        elif ACTIVATION == 2:
            y = tl.where(y > 0.0, y, 0.0)
        if UNFUSED:
            y = _round_to(y, OUT_HALF)  # to nearest in the interpreter too (the cast below is exact)
        tl.store(y_ptr + s[:, None] * stride_ys + y_col[None, :], y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gn_fused_kernel(
    x_ptr,
    y_ptr,
    w_ptr,
    b_ptr,
    beta_ptr,
    t1_ptr,
    t2_ptr,
    C,
    S,
    stride_xn,
    stride_xc,
    stride_xs,
    stride_yn,
    stride_yc,
    stride_ys,
    stride_beta_n,
    stride_beta_c,
    stride_t1n,
    stride_t1c,
    stride_t2n,
    stride_t2c,
    eps,
    CG: tl.constexpr,
    GROUPS_PER_BLOCK: tl.constexpr,
    GROUPS_P2: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_BETA: tl.constexpr,
    ACTIVATION: tl.constexpr,
    NUM_TERMS: tl.constexpr,
    HALF: tl.constexpr,
    OUT_HALF: tl.constexpr,
    UNFUSED: tl.constexpr,
    AFFINE: tl.constexpr,
    STATS_HALF: tl.constexpr,
):
    """One program per (sample, block of groups): statistics over all of S, then normalise."""
    n = tl.program_id(0)
    c_local = tl.arange(0, BLOCK_C)
    c = tl.program_id(1) * (GROUPS_PER_BLOCK * CG) + c_local
    mask_c = (c_local < GROUPS_PER_BLOCK * CG) & (c < C)
    x_base = x_ptr + n.to(tl.int64) * stride_xn
    y_base = y_ptr + n.to(tl.int64) * stride_yn
    pivot = _group_pivot(x_base, c, mask_c, stride_xc, CG)
    t1, t2, pivot = _terms_and_pivot(
        t1_ptr, t2_ptr, n, c, mask_c, stride_t1n, stride_t1c, stride_t2n, stride_t2c, pivot, CG, NUM_TERMS
    )
    mean, m2 = _channel_moments(
        x_base, c * stride_xc, mask_c, 0, S, stride_xs, pivot, t1, t2, BLOCK_S, BLOCK_C, NUM_TERMS, HALF
    )
    centre, scale, shift = _affine(
        mean, m2, S * 1.0, c, c_local, mask_c, n, w_ptr, b_ptr, beta_ptr, stride_beta_n, stride_beta_c,
        eps, pivot, CG, GROUPS_P2, HAS_WEIGHT, HAS_BIAS, HAS_BETA, AFFINE, STATS_HALF,
    )  # fmt: skip
    _normalize(
        x_base, y_base, c * stride_xc, c * stride_yc, mask_c, 0, S, stride_xs, stride_ys,
        pivot, centre, scale, shift, t1, t2, ACTIVATION, BLOCK_S, NUM_TERMS, HALF, OUT_HALF, UNFUSED, AFFINE,
    )  # fmt: skip


@triton.jit
def _gn_partial_kernel(
    x_ptr,
    part_ptr,
    t1_ptr,
    t2_ptr,
    C,
    S,
    CHUNK,
    SPLIT,
    PART_STRIDE,
    stride_xn,
    stride_xc,
    stride_xs,
    stride_t1n,
    stride_t1c,
    stride_t2n,
    stride_t2c,
    CG: tl.constexpr,
    GROUPS_PER_BLOCK: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    NUM_TERMS: tl.constexpr,
    HALF: tl.constexpr,
):
    """Split path, first kernel: per-channel (mean, M2) of one spatial chunk, to ``part``
    (2, N, SPLIT, C) float32."""
    n = tl.program_id(0)
    chunk = tl.program_id(2)
    c_local = tl.arange(0, BLOCK_C)
    c = tl.program_id(1) * (GROUPS_PER_BLOCK * CG) + c_local
    mask_c = (c_local < GROUPS_PER_BLOCK * CG) & (c < C)
    s_begin = chunk * CHUNK
    s_end = tl.minimum(s_begin + CHUNK, S)
    x_base = x_ptr + n.to(tl.int64) * stride_xn
    pivot = _group_pivot(x_base, c, mask_c, stride_xc, CG)
    t1, t2, pivot = _terms_and_pivot(
        t1_ptr, t2_ptr, n, c, mask_c, stride_t1n, stride_t1c, stride_t2n, stride_t2c, pivot, CG, NUM_TERMS
    )
    mean, m2 = _channel_moments(
        x_base,
        c * stride_xc,
        mask_c,
        s_begin,
        s_end,
        stride_xs,
        pivot,
        t1,
        t2,
        BLOCK_S,
        BLOCK_C,
        NUM_TERMS,
        HALF,
    )
    offset = (n * SPLIT + chunk) * C + c
    tl.store(part_ptr + offset, mean, mask=mask_c)
    tl.store(part_ptr + PART_STRIDE + offset, m2, mask=mask_c)


@triton.jit
def _gn_apply_kernel(
    x_ptr,
    y_ptr,
    w_ptr,
    b_ptr,
    beta_ptr,
    part_ptr,
    t1_ptr,
    t2_ptr,
    C,
    S,
    CHUNK,
    SPLIT,
    PART_STRIDE,
    stride_xn,
    stride_xc,
    stride_xs,
    stride_yn,
    stride_yc,
    stride_ys,
    stride_beta_n,
    stride_beta_c,
    stride_t1n,
    stride_t1c,
    stride_t2n,
    stride_t2c,
    eps,
    CG: tl.constexpr,
    GROUPS_PER_BLOCK: tl.constexpr,
    GROUPS_P2: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    SPLIT_P2: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    HAS_BETA: tl.constexpr,
    ACTIVATION: tl.constexpr,
    NUM_TERMS: tl.constexpr,
    HALF: tl.constexpr,
    OUT_HALF: tl.constexpr,
    UNFUSED: tl.constexpr,
    AFFINE: tl.constexpr,
    STATS_HALF: tl.constexpr,
):
    """Split path, second kernel: merge the chunks' partial statistics (Chan), normalise one chunk."""
    n = tl.program_id(0)
    chunk = tl.program_id(2)
    c_local = tl.arange(0, BLOCK_C)
    c = tl.program_id(1) * (GROUPS_PER_BLOCK * CG) + c_local
    mask_c = (c_local < GROUPS_PER_BLOCK * CG) & (c < C)
    k = tl.arange(0, SPLIT_P2)
    mask_k = k < SPLIT
    counts = tl.where(mask_k, tl.minimum(S - k * CHUNK, CHUNK), 0).to(tl.float32)
    mask = mask_k[:, None] & mask_c[None, :]
    offset = (n * SPLIT + k)[:, None] * C + c[None, :]
    part_mean = tl.load(part_ptr + offset, mask=mask, other=0.0)
    part_m2 = tl.load(part_ptr + PART_STRIDE + offset, mask=mask, other=0.0)
    total = S * 1.0
    mean = tl.sum(part_mean * counts[:, None], axis=0) / total
    dev = tl.where(mask, part_mean - mean[None, :], 0.0)
    m2 = tl.sum(part_m2 + counts[:, None] * dev * dev, axis=0)
    s_begin = chunk * CHUNK
    s_end = tl.minimum(s_begin + CHUNK, S)
    x_base = x_ptr + n.to(tl.int64) * stride_xn
    pivot = _group_pivot(x_base, c, mask_c, stride_xc, CG)
    t1, t2, pivot = _terms_and_pivot(
        t1_ptr, t2_ptr, n, c, mask_c, stride_t1n, stride_t1c, stride_t2n, stride_t2c, pivot, CG, NUM_TERMS
    )
    centre, scale, shift = _affine(
        mean, m2, total, c, c_local, mask_c, n, w_ptr, b_ptr, beta_ptr, stride_beta_n, stride_beta_c,
        eps, pivot, CG, GROUPS_P2, HAS_WEIGHT, HAS_BIAS, HAS_BETA, AFFINE, STATS_HALF,
    )  # fmt: skip
    _normalize(
        x_base, y_ptr + n.to(tl.int64) * stride_yn, c * stride_xc,
        c * stride_yc, mask_c, s_begin, s_end, stride_xs, stride_ys, pivot, centre, scale, shift,
        t1, t2, ACTIVATION, BLOCK_S, NUM_TERMS, HALF, OUT_HALF, UNFUSED, AFFINE,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# host code
# --------------------------------------------------------------------------------------------------
KERNELS = (_gn_fused_kernel, _gn_partial_kernel, _gn_apply_kernel)

# ``TRITON_INTERPRET=1`` when Triton was imported: kernels then run on CPU tensors (tests).
INTERPRETED = type(_gn_fused_kernel).__name__ == "InterpretedFunction"


@dataclass(frozen=True)
class Plan:
    """How one call is cut into programs: ``groups_per_block`` whole groups (``block_c`` >= their
    channels, a power of two) per program, spatial tiles of ``block_s`` rows, ``split`` spatial
    chunks per (sample, block) (1: the single fused kernel)."""

    groups_per_block: int
    block_c: int
    block_s: int
    split: int
    num_warps: int


def flat_strides(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(stride_n, stride_c, stride_s) when the spatial dims of ``t`` (N, C, *spatial) flatten to one
    index with a single stride (contiguous and channels-last layouts), else ``None``."""
    spatial = [(size, stride) for size, stride in zip(t.shape[2:], t.stride()[2:], strict=True) if size != 1]
    for (_, outer), (size, inner) in zip(spatial, spatial[1:], strict=False):
        if outer != inner * size:
            return None
    return t.stride(0), t.stride(1), spatial[-1][1] if spatial else 1


def next_pow2(v: int) -> int:
    """The smallest power of two >= ``v`` (1 for ``v`` <= 1)."""
    return 1 << max(0, int(v) - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _chunking(s: int, split: int, block_s: int) -> tuple[int, int]:
    """(rows per chunk, a multiple of ``block_s``; number of chunks) for about ``split`` chunks of ``s`` rows."""
    chunk = _cdiv(_cdiv(s, max(1, split)), block_s) * block_s
    return chunk, _cdiv(s, chunk)


@functools.cache
def sm_count(device: torch.device) -> int:
    """Multiprocessors of a CUDA device (what :func:`plan_launch` sizes the grid for)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the Triton interpreter (CPU tensors): a few programs are enough


def plan_launch(n: int, c: int, groups: int, s: int, channels_last: bool, itemsize: int, sms: int) -> Plan:
    """The launch for an (n, c, s) input with ``groups`` groups; ``channels_last``: channels are the
    contiguous axis; ``sms``: the device's multiprocessor count.

    Channels-last: blocks of several groups so that a block's row is a long contiguous run starting
    on a 16-byte boundary (e.g. 12 groups of 10 channels = 120 of 128 lanes); contiguous layouts: one
    group per block (its rows are contiguous along the spatial axis). The spatial axis is split into
    chunks when there would otherwise be fewer than about two programs per SM.
    """
    cg = c // groups
    if channels_last:
        vec = max(1, 16 // itemsize)
        best: tuple[float, int] | None = None
        for gpb in range(1, groups + 1):
            width = gpb * cg
            block_c = next_pow2(width)
            if block_c > max(_MAX_BLOCK_C, next_pow2(cg)):
                break
            score = width / block_c
            score *= 1.0 if (width % vec == 0 or gpb == groups) else 0.6  # unaligned rows: no vector loads
            score *= 1.0 if (block_c >= 64 or gpb == groups) else 0.85  # short rows: partial sectors
            if best is None or score > best[0] + 1e-9:
                best = (score, gpb)
        gpb = best[1]
    else:
        gpb = 1
    block_c = next_pow2(gpb * cg)
    programs = n * _cdiv(groups, gpb)
    block_s = max(1, min(_TILE // block_c, next_pow2(s)))
    split = 1
    if programs < 2 * sms and s >= 4 * block_s:
        max_split = max(1, _MAX_PARTIALS // block_c)
        split = _chunking(s, min(max_split, _cdiv(4 * sms, programs), s // (2 * block_s)), block_s)[1]
    num_warps = 8 if block_s * block_c >= _TILE else 4
    return Plan(gpb, block_c, block_s, split, num_warps)


def unsupported_reason(
    x: torch.Tensor, num_groups: int, out_dtype: torch.dtype | None = None, rounding: str = "unfused"
) -> str | None:
    """Why :func:`group_norm` cannot take ``x`` (``None`` when it can): device, dtype, shape or layout."""
    return device_reason(x.device, INTERPRETED) or input_reason(x, num_groups, out_dtype, rounding)


def input_reason(
    x: torch.Tensor, num_groups: int, out_dtype: torch.dtype | None = None, rounding: str = "unfused"
) -> str | None:
    """:func:`unsupported_reason` but for the device: why a CUDA tensor shaped, strided and typed
    like ``x`` could not be taken (so meta tensors can stand in for it, :func:`kernel_launches`)."""
    if x.dtype not in DTYPES or (out_dtype is not None and out_dtype not in DTYPES):
        return f"dtype {x.dtype} -> {out_dtype} (supported: float32, bfloat16, float16)"
    if x.dim() < 2 or x.shape[1] % num_groups:
        return f"shape {tuple(x.shape)} with {num_groups} groups"
    if x.numel() == 0:
        return "empty input"
    if x[0].numel() >= 2**31:
        return "more than 2^31 elements per sample"
    if flat_strides(x) is None:
        return f"spatial dims that do not flatten to one stride (strides {x.stride()})"
    if rounding == "unfused" and x.dtype != torch.float32 and x[0, 0].numel() == 1:
        # PyTorch's CUDA GroupNorm has another formula for one position per channel; no SyncDreamer
        # norm sees such an input, so it is left to PyTorch rather than reproduced
        return "one spatial position per channel with rounding 'unfused' (PyTorch's 1-d formula)"
    return None


ROUNDINGS = GROUP_NORM_ROUNDINGS


def _torch_affine(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> tuple[int, int]:
    """(AFFINE, STATS_HALF) for rounding "unfused": how PyTorch's CUDA GroupNorm maps a half-precision
    input (native_group_norm's mean and rstd in the input's dtype unless a parameter is float32, the
    "mixed" case; ``a * x + b``, or ``(x - mean) * rstd`` without parameters). float32 keeps the
    pivot form: no rounding to reproduce, and it does not cancel when |mean| >> std."""
    if x.dtype == torch.float32:
        return 0, 0
    mixed = any(p is not None and p.dtype != x.dtype for p in (weight, bias))
    return (2 if weight is None and bias is None else 1), (0 if mixed else _HALF_CODE[x.dtype])


def _term_matrices(pre_bias, n: int, c: int) -> list[torch.Tensor]:
    """Each per-(sample, channel) bias term as an (n, c) view."""
    terms = [pre_bias] if isinstance(pre_bias, torch.Tensor) else list(pre_bias or ())
    out = []
    for term in terms:
        if term.dim() < 2 or term.shape[0] not in (1, n) or term.shape[1] != c or term[0, 0].numel() != 1:
            raise ValueError(
                f"a pre-norm bias of shape {tuple(term.shape)} is not one value per (sample, channel)"
            )
        out.append(term.reshape(term.shape[0], c).expand(n, c))
    return out


def _pre_bias_matrix(terms: list[torch.Tensor]) -> torch.Tensor | None:
    """The terms' sum as one (n, c) matrix (rounding "fused"): a view of a single term, else their
    float32 sum."""
    total = None
    for mat in terms:
        total = mat if total is None else total.float() + mat.float()
    return total


def group_norm(
    x: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    activation: str | None = None,
    pre_bias: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    out_dtype: torch.dtype | None = None,
    plan: Plan | None = None,
    rounding: str = "unfused",
) -> torch.Tensor:
    """``act(group_norm(x + sum(pre_bias)))`` in ``out_dtype`` (default: ``x.dtype``), same layout as ``x``.

    ``pre_bias``: one tensor or a sequence of tensors with one value per (sample, channel) (shapes
    (N, C), (N, C, 1, ..., 1), or N = 1 for all samples; at most two with ``rounding="unfused"``);
    ``activation``: None, ``"silu"`` or ``"relu"``; ``plan``: a launch other than
    :func:`plan_launch`'s (benchmarks, tests). No autograd.

    ``rounding``: where a half-precision call rounds. ``"unfused"`` (the default) rounds where the
    PyTorch code it replaces does on CUDA: each ``x + term`` to the input's dtype, the statistics to
    the input's dtype, the norm's output to the output dtype, then the activation's; so the kernel
    changes the layout work, not the numbers (one position per channel, where PyTorch uses another
    formula, is refused: :func:`unsupported_reason`).
    ``"fused"`` adds the terms and applies the activation in float32 and rounds once: closer to
    float64 shape by shape, yet a whole SyncDreamer generation with it ended 9-10 % further from the
    float32 model (benchmarks/RESULTS.md, sessions 10 and 13), which #14 does not allow.
    """
    reason = unsupported_reason(x, num_groups, out_dtype, rounding)
    if reason is not None:
        raise ValueError(f"Triton GroupNorm cannot take this input: {reason}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; known: silu, relu")
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; known: {', '.join(ROUNDINGS)}")
    n, c = x.shape[:2]
    y = output_like(x, out_dtype or x.dtype)
    terms = _term_matrices(pre_bias, n, c)
    if rounding == "unfused" and len(terms) > 2:
        raise ValueError(f"rounding='unfused' takes at most two pre-norm bias terms, got {len(terms)}")
    for launch in kernel_launches(x, y, num_groups, weight, bias, eps, activation, terms, plan, rounding):
        launch.run()
    return y


def output_like(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The empty output :func:`group_norm` writes for ``x``: ``x``'s layout, or contiguous where
    ``x`` is not dense (its spatial dims do not flatten to one stride)."""
    y = torch.empty_like(x, dtype=dtype)
    return y if flat_strides(y) is not None else torch.empty(x.shape, dtype=dtype, device=x.device)


def kernel_launches(
    x: torch.Tensor,
    y: torch.Tensor,
    num_groups: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    activation: str | None,
    terms: list[torch.Tensor],
    plan: Plan | None,
    rounding: str,
    sms: int | None = None,
) -> list[Launch]:
    """The launches of :func:`group_norm` writing ``y`` (host work only, so it also runs on the meta
    device: benchmarks/norm_variants.py counts the variants a generation compiles); ``terms``: the
    pre-norm bias terms as (n, c) matrices; ``sms``: the device's multiprocessor count (default: asked)."""
    n, c = x.shape[:2]
    s = x[0, 0].numel()
    y_strides = flat_strides(y)
    x_strides = flat_strides(x)
    unfused = rounding == "unfused"
    beta = None if unfused else _pre_bias_matrix(terms)
    elementwise = terms if unfused else []  # the terms the kernel adds element by element
    term_args = [*elementwise, *[x] * (2 - len(elementwise))]  # x: a placeholder pointer, never read
    term_strides = [st for t in elementwise for st in t.stride()] + [0] * (4 - 2 * len(elementwise))
    rounded = dict(
        NUM_TERMS=len(elementwise),
        HALF=_HALF_CODE[x.dtype] if unfused else 0,
        OUT_HALF=_HALF_CODE[y.dtype] if unfused else 0,
        UNFUSED=unfused,
    )
    affine_form, stats_half = _torch_affine(x, weight, bias) if unfused else (0, 0)
    if plan is None:
        channels_last = x_strides[1] == 1 and s > 1
        sms = sm_count(x.device) if sms is None else sms
        plan = plan_launch(n, c, num_groups, s, channels_last, x.element_size(), sms)
    cg = c // num_groups
    blocks = _cdiv(num_groups, plan.groups_per_block)
    dummy = x
    common = dict(
        CG=cg,
        GROUPS_PER_BLOCK=plan.groups_per_block,
        BLOCK_C=plan.block_c,
        BLOCK_S=plan.block_s,
        num_warps=plan.num_warps,
    )
    affine = dict(
        GROUPS_P2=next_pow2(plan.groups_per_block),
        HAS_WEIGHT=weight is not None,
        HAS_BIAS=bias is not None,
        HAS_BETA=beta is not None,
        ACTIVATION=ACTIVATIONS[activation],
        AFFINE=affine_form,
        STATS_HALF=stats_half,
    )
    w = weight if weight is not None else dummy
    b = bias if bias is not None else dummy
    beta_t = beta if beta is not None else dummy
    beta_strides = beta.stride() if beta is not None else (0, 0)
    if plan.split == 1:
        args = (
            x,
            y,
            w,
            b,
            beta_t,
            *term_args,
            c,
            s,
            *x_strides,
            *y_strides,
            *beta_strides,
            *term_strides,
            float(eps),
        )
        return [Launch(_gn_fused_kernel, (n, blocks), args, {**common, **affine, **rounded})]
    chunk, split = _chunking(s, plan.split, plan.block_s)
    part = torch.empty((2, n, split, c), dtype=torch.float32, device=x.device)
    part_stride = n * split * c
    grid = (n, blocks, split)
    partial_args = (x, part, *term_args, c, s, chunk, split, part_stride, *x_strides, *term_strides)
    apply_args = (
        x, y, w, b, beta_t, part, *term_args, c, s, chunk, split, part_stride, *x_strides, *y_strides,
        *beta_strides, *term_strides, float(eps),
    )  # fmt: skip
    return [
        Launch(
            _gn_partial_kernel,
            grid,
            partial_args,
            {**common, "NUM_TERMS": rounded["NUM_TERMS"], "HALF": rounded["HALF"]},
        ),
        Launch(
            _gn_apply_kernel, grid, apply_args, {"SPLIT_P2": next_pow2(split), **common, **affine, **rounded}
        ),
    ]


def warm_up(launches: list[Launch], workers: int, device: torch.device | None = None) -> dict:
    """Compile the variants of ``launches`` (each once) on ``workers`` threads of this process,
    without launching: Triton's ``warmup`` specialises as a launch would (a tensor argument given by
    its dtype counts as 16-byte aligned, as PyTorch's allocations are), compiles, and leaves the kernel
    in its in-memory and on-disk caches, where the launches then find it. Compilation holds the GIL for
    much of its work (on an H100's host, 8 threads were ~1.7x faster than one, and slowed everything
    else this process did): :mod:`sd3d.core.triton_precompile` compiles in processes instead; this
    is its comparison in ``benchmarks/first_generation.py --warmup-threads``. Returns ``{"variants": n, "failed":
    [reason, ...]}``; a variant that fails here is compiled (and fails, if it must) at its launch."""
    from concurrent.futures import ThreadPoolExecutor

    unique = distinct_variants(launches)

    def compile_one(launch: Launch) -> str | None:
        try:
            with torch.cuda.device(device) if device is not None else contextlib.nullcontext():
                compile_launch(launch)
        except Exception as exc:  # a Triton without warmup, a compiler error: the launch will tell
            return f"{type(exc).__name__}: {exc}"
        return None

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(unique) or 1))) as pool:
        failed = [r for r in pool.map(compile_one, unique) if r is not None]
    return {"variants": len(unique), "failed": failed}
