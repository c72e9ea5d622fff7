"""The multiresolution hash grid of :class:`recon.encoding.HashGrid`, fused in Triton.

Why: the PyTorch grid builds each call from whole-batch tensors (corner rows (L, N, 8), trilinear
coefficients (L, N, 4, 8), gathered values (L, N, F, 8)) that are written to and read back from
memory several times; at the standard preset that is hundreds of MB per call. Here each lane of a
program owns one (point, level): it computes its eight corners, their rows and weights in
registers, gathers F features per corner and writes only the outputs. The backward pass recomputes
the same corners from the saved positions (N x 3 floats) and scatters into the table gradient
with atomic adds, so nothing of size L x N x 8 is ever stored.

The maths is :class:`~recon.encoding.HashGrid`'s, operation for operation, so that the corners and
weights come out bit for bit the same:

* ``pos = u * scale + 0.5`` as two rounded float32 operations. The kernels are launched with
  ``enable_fp_fusion=False``: a fused multiply-add rounds once instead of twice, and a position one
  ulp off can fall on the other side of a cell boundary, where the Jacobian jumps.
* dense levels: ``(x + res*y + res^2*z) mod rows`` in int32 with a floored remainder (as
  ``torch.remainder``; Triton's ``%`` truncates like C, the fix-up makes both agree).
* hashed levels: ``(x * 1) ^ (y * 2654435761) ^ (z * 805459861)`` in **uint32**, where
  multiplication wraps modulo 2^32 by definition (tiny-cuda-nn's hash), then ``& (rows - 1)``
  (hashed tables have a power-of-two number of rows). The primes are read from the grid's int32
  ``mult`` buffer and bitcast, so their bits are exactly tcnn's constants.
* weights ``wx * (wy * wz)`` with ``w = 1 - f`` or ``f``, and the Jacobian coefficients
  ``+-(wy * wz)`` etc., the products PyTorch forms; the Jacobian is multiplied by the level's scale
  after the sum, as :meth:`~recon.encoding.HashGrid.forward_with_jacobian` does.

Only the order of the eight-term sums (and of the atomic adds in the backward) differs from PyTorch;
``tests/test_triton_hash_grid.py`` bounds the resulting float32 differences.

Launches: a grid of (blocks of points, levels), once for the dense levels and once for the hashed
ones, so the row rule is a compile-time constant of each launch. Output layout is point-major,
(N, L*F) and (N, L*F, 3); levels from ``active`` on are zeros and never computed.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sd3d.core.triton_precompile import Launch

# Points per program: one per thread at the default four warps. Read at each call, so tests can
# shrink it to get several programs (and a partial last one) from a small batch.
BLOCK = 128


# --------------------------------------------------------------------------------------------------
# device code
# --------------------------------------------------------------------------------------------------
@triton.jit
def _axis(u_ptr, pts, mask, scale, mult_ptr, level, AXIS: tl.constexpr, DENSE: tl.constexpr):
    """Along one axis: the row terms of the low and high corner, and their lerp weights (1 - f, f)."""
    u = tl.load(u_ptr + pts * 3 + AXIS, mask=mask, other=0.0)
    pos = u * scale + 0.5  # two roundings: the launch disables fp fusion
    cell_f = tl.floor(pos)
    frac = pos - cell_f  # exact
    cell = cell_f.to(tl.int32)
    mult = tl.load(mult_ptr + level * 3 + AXIS)
    if DENSE:
        lo = cell * mult
        hi = (cell + 1) * mult
    else:  # uint32: the products wrap modulo 2^32
        prime = mult.to(tl.uint32, bitcast=True)
        lo = cell.to(tl.uint32, bitcast=True) * prime
        hi = (cell + 1).to(tl.uint32, bitcast=True) * prime
    return lo, hi, 1.0 - frac, frac


@triton.jit
def _setup(
    u_ptr, scale_ptr, mult_ptr, rows_ptr, offset_ptr, n, level0, out_cols,
    F: tl.constexpr, DENSE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """What both kernels start from: the output offsets (BLOCK, F) and mask of this program's points
    at its level, the level's scale, rows and offset, and per axis :func:`_axis`'s corner terms."""
    level = level0 + tl.program_id(1)
    pts = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = pts < n
    scale = tl.load(scale_ptr + level)
    x0, x1, wx0, wx1 = _axis(u_ptr, pts, mask, scale, mult_ptr, level, 0, DENSE)
    y0, y1, wy0, wy1 = _axis(u_ptr, pts, mask, scale, mult_ptr, level, 1, DENSE)
    z0, z1, wz0, wz1 = _axis(u_ptr, pts, mask, scale, mult_ptr, level, 2, DENSE)
    out = pts[:, None] * out_cols + (level * F + tl.arange(0, F))[None, :]
    rows = tl.load(rows_ptr + level)
    offset = tl.load(offset_ptr + level)
    return out, mask[:, None], scale, rows, offset, x0, x1, wx0, wx1, y0, y1, wy0, wy1, z0, z1, wz0, wz1


@triton.jit
def _row(tx, ty, tz, rows, offset, DENSE: tl.constexpr):
    """Absolute table row of one corner from its three axis terms."""
    if DENSE:
        r = (tz + ty + tx) % rows
        r = tl.where(r < 0, r + rows, r)  # floored remainder, like torch.remainder
    else:
        h = tz ^ ty ^ tx
        r = (h & (rows.to(tl.uint32, bitcast=True) - 1)).to(tl.int32, bitcast=True)
    return r + offset


@triton.jit
def _corner(c: tl.constexpr, x0, x1, wx0, wx1, y0, y1, wy0, wy1, z0, z1, wz0, wz1):
    """Corner ``c`` (order x + 2y + 4z): its axis terms and lerp weights."""
    if c & 1:
        tx, wx = x1, wx1
    else:
        tx, wx = x0, wx0
    if c & 2:
        ty, wy = y1, wy1
    else:
        ty, wy = y0, wy0
    if c & 4:
        tz, wz = z1, wz1
    else:
        tz, wz = z0, wz0
    return tx, ty, tz, wx, wy, wz


@triton.jit
def _signed(c: tl.constexpr, bit: tl.constexpr, p):
    """``p`` for a corner on the high side of the axis with ``bit``, ``-p`` on the low side."""
    if c & bit:
        r = p
    else:
        r = -p
    return r


@triton.jit
def _forward_kernel(
    u_ptr,
    table_ptr,
    scale_ptr,
    mult_ptr,
    rows_ptr,
    offset_ptr,
    feat_ptr,
    jac_ptr,
    n,
    level0,
    out_cols,
    F: tl.constexpr,
    DENSE: tl.constexpr,
    WITH_JAC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    feats = tl.arange(0, F)
    out, mask2, scale, rows, offset, x0, x1, wx0, wx1, y0, y1, wy0, wy1, z0, z1, wz0, wz1 = _setup(
        u_ptr, scale_ptr, mult_ptr, rows_ptr, offset_ptr, n, level0, out_cols, F, DENSE, BLOCK
    )
    acc = tl.zeros([BLOCK, F], dtype=tl.float32)
    jx = tl.zeros([BLOCK, F], dtype=tl.float32)
    jy = tl.zeros([BLOCK, F], dtype=tl.float32)
    jz = tl.zeros([BLOCK, F], dtype=tl.float32)
    for c in tl.static_range(8):
        tx, ty, tz, wx, wy, wz = _corner(c, x0, x1, wx0, wx1, y0, y1, wy0, wy1, z0, z1, wz0, wz1)
        row = _row(tx, ty, tz, rows, offset, DENSE)
        v = tl.load(table_ptr + row[:, None] * F + feats[None, :], mask=mask2, other=0.0)
        acc += (wx * (wy * wz))[:, None] * v
        if WITH_JAC:
            jx += _signed(c, 1, wy * wz)[:, None] * v
            jy += _signed(c, 2, wx * wz)[:, None] * v
            jz += _signed(c, 4, wx * wy)[:, None] * v
    tl.store(feat_ptr + out, acc, mask=mask2)
    if WITH_JAC:  # d frac / d u = scale
        tl.store(jac_ptr + out * 3, jx * scale, mask=mask2)
        tl.store(jac_ptr + out * 3 + 1, jy * scale, mask=mask2)
        tl.store(jac_ptr + out * 3 + 2, jz * scale, mask=mask2)


@triton.jit
def _backward_kernel(
    u_ptr,
    scale_ptr,
    mult_ptr,
    rows_ptr,
    offset_ptr,
    gfeat_ptr,
    gjac_ptr,
    gtable_ptr,
    n,
    level0,
    out_cols,
    F: tl.constexpr,
    DENSE: tl.constexpr,
    HAS_GFEAT: tl.constexpr,
    HAS_GJAC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    feats = tl.arange(0, F)
    out, mask2, scale, rows, offset, x0, x1, wx0, wx1, y0, y1, wy0, wy1, z0, z1, wz0, wz1 = _setup(
        u_ptr, scale_ptr, mult_ptr, rows_ptr, offset_ptr, n, level0, out_cols, F, DENSE, BLOCK
    )
    if HAS_GFEAT:
        gf = tl.load(gfeat_ptr + out, mask=mask2, other=0.0)
    if HAS_GJAC:  # the gradient reaching the unscaled sums, rounded as autograd's mul backward does
        gx = tl.load(gjac_ptr + out * 3, mask=mask2, other=0.0) * scale
        gy = tl.load(gjac_ptr + out * 3 + 1, mask=mask2, other=0.0) * scale
        gz = tl.load(gjac_ptr + out * 3 + 2, mask=mask2, other=0.0) * scale
    for c in tl.static_range(8):
        tx, ty, tz, wx, wy, wz = _corner(c, x0, x1, wx0, wx1, y0, y1, wy0, wy1, z0, z1, wz0, wz1)
        row = _row(tx, ty, tz, rows, offset, DENSE)
        g = tl.zeros([BLOCK, F], dtype=tl.float32)
        if HAS_GFEAT:
            g = (wx * (wy * wz))[:, None] * gf
        if HAS_GJAC:
            g += _signed(c, 1, wy * wz)[:, None] * gx
            g += _signed(c, 2, wx * wz)[:, None] * gy
            g += _signed(c, 4, wx * wy)[:, None] * gz
        tl.atomic_add(gtable_ptr + row[:, None] * F + feats[None, :], g, mask=mask2, sem="relaxed")


# ``TRITON_INTERPRET=1`` when Triton was imported: kernels then run on CPU tensors (tests).
INTERPRETED = type(_forward_kernel).__name__ == "InterpretedFunction"


# --------------------------------------------------------------------------------------------------
# host code
# --------------------------------------------------------------------------------------------------
def launches(
    kernel, args: tuple, n: int, n_dense: int, active: int, out_cols: int, block: int, **consts
) -> list[Launch]:
    """The launches of one lookup (or its backward): one for the active dense levels, one for the
    active hashed ones. Host work only, so it also runs on ``meta`` tensors: the warm-up
    (:mod:`recon.kernels.warmup`) enumerates a fit's variants with it."""
    if n == 0:
        return []
    out = []
    for level0, count, dense in ((0, min(n_dense, active), True), (n_dense, active - n_dense, False)):
        if count > 0:
            constants = {"DENSE": dense, "BLOCK": block, "enable_fp_fusion": False, **consts}
            out.append(
                Launch(kernel, (triton.cdiv(n, block), count), (*args, n, level0, out_cols), constants)
            )
    return out


def run(launch: Launch) -> None:
    """Launch one :class:`Launch` (a function of its own, so that a test can watch every launch)."""
    launch.run()


def _launch(
    kernel, args: tuple, n: int, n_dense: int, active: int, out_cols: int, block: int, **consts
) -> None:
    for launch in launches(kernel, args, n, n_dense, active, out_cols, block, **consts):
        run(launch)


class _Lookup(torch.autograd.Function):
    """Features (and the Jacobian) of the hash grid; the backward gives the table gradient only."""

    @staticmethod
    def forward(ctx, table, u, scales, mult, rows, offsets, n_dense, active, with_jacobian, block):
        n, (total_rows, f) = u.shape[0], table.shape
        cols = scales.shape[0] * f
        feats = u.new_empty(n, cols)
        jac = u.new_empty(n, cols, 3) if with_jacobian else None
        if active * f < cols:  # inactive levels output zeros
            feats[:, active * f :] = 0.0
            if jac is not None:
                jac[:, active * f :] = 0.0
        args = (u, table, scales, mult, rows, offsets, feats, jac if jac is not None else feats)
        _launch(_forward_kernel, args, n, n_dense, active, cols, block, F=f, WITH_JAC=with_jacobian)
        ctx.save_for_backward(u, scales, mult, rows, offsets)
        ctx.meta = (n_dense, active, block, total_rows, f)
        ctx.set_materialize_grads(False)
        return (feats, jac) if with_jacobian else feats

    @staticmethod
    def backward(ctx, grad_feats, grad_jac=None):
        none = (None,) * 9
        if grad_feats is None and grad_jac is None:
            return (None, *none)
        u, scales, mult, rows, offsets = ctx.saved_tensors
        n_dense, active, block, total_rows, f = ctx.meta
        grad_table = torch.zeros(total_rows, f, dtype=torch.float32, device=u.device)
        gf = grad_feats.contiguous() if grad_feats is not None else grad_table  # unread when absent
        gj = grad_jac.contiguous() if grad_jac is not None else grad_table
        consts = {"F": f, "HAS_GFEAT": grad_feats is not None, "HAS_GJAC": grad_jac is not None}
        args = (u, scales, mult, rows, offsets, gf, gj, grad_table)
        _launch(_backward_kernel, args, u.shape[0], n_dense, active, scales.shape[0] * f, block, **consts)
        return (grad_table, *none)


def encode(
    table: torch.Tensor,
    u: torch.Tensor,
    scales: torch.Tensor,
    mult: torch.Tensor,
    rows: torch.Tensor,
    offsets: torch.Tensor,
    n_dense: int,
    active: int,
    with_jacobian: bool,
    block: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Hash-grid features (N, L*F), and with ``with_jacobian`` also d features / d u (N, L*F, 3).

    ``table`` (rows, F) float32 and the per-level buffers of :class:`~recon.encoding.HashGrid`
    (``scales`` (L,) float32, ``mult`` (L, 3) int32, ``rows`` and ``offsets`` (L,) int32; dense
    levels first, ``n_dense`` of them); ``u`` (N, 3) float32 in [0, 1] (outside, the rows still
    follow PyTorch's: floored remainder, wrapping hash). Differentiable with respect to ``table``
    only: positions are data, so ``u`` must not require a gradient.
    """
    if u.requires_grad:
        raise ValueError("the Triton hash grid does not differentiate w.r.t. its input positions")
    if table.dtype != torch.float32 or u.dtype != torch.float32:
        raise ValueError(f"the Triton hash grid computes in float32 (table {table.dtype}, input {u.dtype})")
    if scales.dtype != torch.float32 or any(t.dtype != torch.int32 for t in (mult, rows, offsets)):
        raise ValueError("level buffers: scales float32, mult / rows / offsets int32 (HashGrid's own)")
    if u.dim() != 2 or u.shape[1] != 3 or table.dim() != 2:
        raise ValueError(
            f"expected u (N, 3) and table (rows, F), got {tuple(u.shape)} and {tuple(table.shape)}"
        )
    block = BLOCK if block is None else block
    f = table.shape[1]
    if f & (f - 1):
        raise ValueError(f"features per level must be a power of two for the Triton grid, got {f}")
    if block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    levels = scales.shape[0]
    if not 1 <= active <= levels:
        raise ValueError(f"active levels must be in [1, {levels}], got {active}")
    # int32 offsets inside the kernels
    if table.numel() >= 2**31 or u.shape[0] * levels * f * 3 >= 2**31:
        raise ValueError("the Triton hash grid indexes with int32: split the batch or shrink the table")
    tensors = (u, scales, mult, rows, offsets)
    if any(t.device != table.device for t in tensors):
        raise ValueError("the table, the positions and the level buffers must be on one device")
    u, scales, mult, rows, offsets = (t.contiguous() for t in tensors)
    return _Lookup.apply(
        table.contiguous(), u, scales, mult, rows, offsets, n_dense, active, with_jacobian, block
    )
