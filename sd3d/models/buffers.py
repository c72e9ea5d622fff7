"""A checkpoint's copies of the tables we recompute (noise schedule, cameras), and how they are judged.

Official checkpoints store buffers the model code derives from its configuration. We never load
them: inference uses our own recomputation. Their copies are still compared with it, under one rule:

* a buffer whose values inference relies on (our samplers read the recomputed schedule, the volume
  projections the recomputed cameras) must agree within a tolerance. If it does not, the checkpoint
  was made for another schedule or camera rig and would silently give wrong images, so loading
  stops with a one-line :class:`~sd3d.core.errors.WeightsError` naming the buffer;
* a buffer inference never reads (training-only tables such as the posterior variance) may hold
  anything, since only training reads it: a disagreement never makes a load fail. It is one
  :class:`~sd3d.core.errors.WeightsWarning` naming the buffers; the numbers go to this module's logger at
  DEBUG level (``sd3d --debug`` shows them).

A half-precision copy (``sd3d weights convert --dtype fp16/bf16``) rounds the buffers too, so the
tolerance is widened to two units in the last place of the stored dtype.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from sd3d.core.errors import WeightsError, WeightsWarning

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BufferRule:
    """What a checkpoint buffer must equal: ``reference`` within (``atol``, ``rtol``) if ``used``.

    ``kind`` names the table in messages (``schedule``, ``camera``).
    """

    reference: torch.Tensor
    used: bool
    atol: float
    rtol: float
    kind: str


def mismatch(value: torch.Tensor, rule: BufferRule, model: str) -> str | None:
    """Why ``value`` fails ``rule`` (one short phrase naming ``model``), or None if it agrees."""
    ref = rule.reference
    if tuple(value.shape) != tuple(ref.shape):
        return f"has shape {list(value.shape)}, expected {list(ref.shape)}"
    value = value.detach().to("cpu")
    if not value.is_floating_point():
        return f"holds {str(value.dtype).removeprefix('torch.')} values, not floating point"
    atol, rtol = rule.atol, rule.rtol
    if torch.finfo(value.dtype).bits < 32:
        eps = torch.finfo(value.dtype).eps
        rtol = max(rtol, 2 * eps)
        atol = max(atol, 2 * eps * float(ref.abs().max()))
    if torch.allclose(value.double(), ref.double(), atol=atol, rtol=rtol):
        return None
    err = (value.double() - ref.double()).abs().max().item()
    return f"differs from the {model} {rule.kind} values (max abs diff {err:.3g})"


def check_buffers(
    state_dict: Mapping[str, torch.Tensor],
    rules: Mapping[str, BufferRule],
    model: str,
    source: str | os.PathLike | None = None,
    extra_ignored: Mapping[str, str] | None = None,
) -> list[str]:
    """Apply the module's rule to the buffers of ``state_dict`` named in ``rules`` (absent ones pass).

    ``model`` names the model in messages (``SyncDreamer``, ``Zero123``). ``extra_ignored`` maps
    further unused buffers the caller found odd to the reason, so one warning covers them all.
    Returns the names of the unused buffers that disagree (and were warned about).
    """
    where = f" in {source}" if source is not None else ""
    odd: dict[str, str] = dict(extra_ignored or {})
    for key, rule in rules.items():
        if key not in state_dict:
            continue
        reason = mismatch(state_dict[key], rule, model)
        if reason is None:
            continue
        if rule.used:
            raise WeightsError(f"buffer {key!r}{where} {reason}: not an official {model} checkpoint")
        odd[key] = reason
    if odd:
        for key, reason in odd.items():
            logger.debug("buffer %r%s %s; inference does not use it", key, where, reason)
        names = ", ".join(repr(k) for k in odd)
        warnings.warn(
            f"checkpoint{where}: buffers that inference does not use differ from the {model} values "
            f"and are ignored: {names}",
            WeightsWarning,
            stacklevel=2,
        )
    return list(odd)
