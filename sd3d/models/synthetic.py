"""Deterministic synthetic weights (docs/reference/syncdreamer.md §7.2) and checkpoint files made of them.

For key ``k`` of shape ``s`` (n elements, C order), in float64 then cast to float32:
``phase = crc32(k) / 2^32``; ``u_i = (i * 0.6180339887498949 + phase) mod 1``;
``unit_i = sqrt(2) sin(2 pi u_i)``; value = ``unit / sqrt(prod(s[1:]))`` for >= 2-d tensors,
``1 + 0.1 unit`` for 1-d keys ending in ``weight``, ``0.05 unit`` otherwise. The official code run
with these weights produced the golden fixture, so any implementation can rebuild the exact model.

Speed: evaluating ``sin`` for all 1.39 G elements takes minutes; instead each tensor is cut into
blocks of ``_BLOCK`` elements and ``sin(theta_j + phi_k) = sin(theta_j) cos(phi_k) + cos(theta_j)
sin(phi_k)`` is evaluated as a rank-2 float64 matrix product, with ``theta_j`` (the block start) and
``phi_k`` (the offset in the block) both reduced mod 1 exactly like the direct formula. The result
agrees with the direct formula to float64 round-off, i.e. within 1 float32 ulp (which the direct
formula's own ``i * 0.618...`` rounding already spans for large ``i``).
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterable
from pathlib import Path

import torch

from sd3d.core.io import atomic_path
from sd3d.models.configs import SyncDreamerConfig
from sd3d.models.syncdreamer_checkpoint import CHECKED_BUFFER_KEYS, expected_shapes, reference_buffers

GOLDEN_STEP = 0.6180339887498949
_BLOCK = 8192
_ROWS_PER_CHUNK = 512  # 4 M elements (32 MB of float64) per matrix product


def phase_of(key: str) -> float:
    return (zlib.crc32(key.encode("utf-8")) & 0xFFFFFFFF) / 2**32


def _direct(n: int, phase: float) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64)
    u = torch.remainder(i * GOLDEN_STEP + phase, 1.0)
    return torch.sin(2 * math.pi * u) * math.sqrt(2.0)


_OFFSET_TABLE: torch.Tensor | None = None


def _offset_table() -> torch.Tensor:
    """(2, _BLOCK) float64 ``[cos(phi_k); sin(phi_k)]`` with ``phi_k = 2 pi ((k * step) mod 1)``."""
    global _OFFSET_TABLE
    if _OFFSET_TABLE is None:
        k = torch.arange(_BLOCK, dtype=torch.float64)
        phi = 2 * math.pi * torch.remainder(k * GOLDEN_STEP, 1.0)
        _OFFSET_TABLE = torch.stack([torch.cos(phi), torch.sin(phi)])
    return _OFFSET_TABLE


def fill_unit_(out: torch.Tensor, key: str, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    """Fill the float32 tensor ``out`` in place with ``offset + scale * unit`` for ``key``."""
    flat = out.view(-1)
    n = flat.numel()
    phase = phase_of(key)
    if n <= _BLOCK:
        flat.copy_(_direct(n, phase) * scale + offset)
        return out
    table = _offset_table()
    blocks = -(-n // _BLOCK)
    starts = torch.arange(blocks, dtype=torch.float64) * _BLOCK
    theta = 2 * math.pi * torch.remainder(starts * GOLDEN_STEP + phase, 1.0)
    coef = torch.stack([torch.sin(theta), torch.cos(theta)], dim=1) * (math.sqrt(2.0) * scale)
    full_blocks = n // _BLOCK
    for r in range(0, full_blocks, _ROWS_PER_CHUNK):
        rows = min(_ROWS_PER_CHUNK, full_blocks - r)
        vals = coef[r : r + rows] @ table
        if offset:
            vals += offset
        flat[r * _BLOCK : (r + rows) * _BLOCK].view(rows, _BLOCK).copy_(vals)
    tail = n - full_blocks * _BLOCK
    if tail:
        vals = coef[full_blocks : full_blocks + 1] @ table[:, :tail]
        flat[full_blocks * _BLOCK :].copy_(vals.view(-1) + offset)
    return out


def synthetic_unit(key: str, shape: Iterable[int]) -> torch.Tensor:
    """Unscaled unit values (used for the fixture's ``x_T`` and injected noise)."""
    return fill_unit_(torch.empty(tuple(shape), dtype=torch.float32), key)


def synthetic_tensor(key: str, shape: Iterable[int]) -> torch.Tensor:
    """The docs/reference/syncdreamer.md §7.2 value of parameter ``key`` with ``shape``."""
    shape = tuple(shape)
    out = torch.empty(shape, dtype=torch.float32)
    if len(shape) >= 2:
        return fill_unit_(out, key, scale=1.0 / math.sqrt(math.prod(shape[1:])))
    if len(shape) == 1 and key.endswith("weight"):
        return fill_unit_(out, key, scale=0.1, offset=1.0)
    return fill_unit_(out, key, scale=0.05)


def synthetic_state_dict(config: SyncDreamerConfig | None = None) -> dict[str, torch.Tensor]:
    """Every key of an official-layout checkpoint for ``config``: synthetic parameters and the
    recomputed schedule/camera buffers (as the fixture kept them)."""

    config = SyncDreamerConfig() if config is None else config
    buffers = reference_buffers(config)
    return {
        key: buffers[key].clone() if key in CHECKED_BUFFER_KEYS else synthetic_tensor(key, shape)
        for key, shape in expected_shapes(config).items()
    }


def make_synthetic_checkpoint(path: str | os.PathLike, config: SyncDreamerConfig | None = None) -> Path:
    """Write a Lightning-style ``.ckpt`` (``{"state_dict": ...}``) with synthetic weights for ``config``.

    Works for any config (the tiny test config too); the file is written atomically.
    """

    path = Path(path)
    state_dict = synthetic_state_dict(config)
    with atomic_path(path) as tmp:
        torch.save({"state_dict": state_dict}, tmp)
    return path
