"""Checkpoint files shaped like the released SyncDreamer one, without its weights.

The released ``syncdreamer-pretrain.ckpt`` is a PyTorch Lightning checkpoint: a dict holding
``state_dict`` (all 1618 official keys, the 10 buffers exactly as the official ``__init__`` registers
them), ``global_step``, ``epoch`` and pickled callback objects. These helpers write the same structure
with the synthetic weights of :mod:`sd3d.models.synthetic` and the official buffer values, so a test
exercises exactly what a user's first ``sd3d generate --weights`` reads.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from sd3d.core.errors import WeightsWarning
from sd3d.models.configs import SyncDreamerConfig


class ModelCheckpoint:
    """Stands for Lightning's ``ModelCheckpoint`` callback pickled in ``callbacks``; loaders must not
    run its code (its ``__setstate__`` would fail the test)."""

    def __init__(self) -> None:
        self.monitor = None
        self.best_model_path = "/apdcephfs/ckpt/last.ckpt"
        self.save_top_k = -1

    def __setstate__(self, state):  # pragma: no cover - proving it is never called
        raise AssertionError("a pickled callback was imported and its __setstate__ ran")


def official_buffers(npz_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The 10 buffers of the official model (``syncdreamer-official-buffers.npz``), as float32 tensors."""
    with np.load(npz_path) as data:
        return {k: torch.from_numpy(np.array(data[k], dtype=np.float32)) for k in data.files}


def official_state_dict(
    config: SyncDreamerConfig, buffers: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Every key of the official layout for ``config`` (synthetic parameters), with ``buffers``
    in place of our recomputed ones."""
    from sd3d.models.synthetic import synthetic_state_dict

    state = synthetic_state_dict(config)
    if set(buffers) - set(state):
        raise KeyError(f"not buffers of the official layout: {sorted(set(buffers) - set(state))}")
    state.update((k, v.clone()) for k, v in buffers.items())
    return state


def write_lightning_checkpoint(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor]) -> Path:
    """``torch.save`` a Lightning-style checkpoint around ``state_dict`` (with a pickled callback)."""
    path = Path(path)
    torch.save(
        {
            "epoch": 3,
            "global_step": 80000,
            "pytorch-lightning_version": "1.9.0",
            "state_dict": dict(state_dict),
            "callbacks": {"ModelCheckpoint{'monitor': None}": ModelCheckpoint()},
        },
        path,
    )
    return path


@contextlib.contextmanager
def no_weights_warning():
    """Fail if the block emits a :class:`WeightsWarning` (an official file must load silently)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        yield
    odd = [str(w.message) for w in seen if issubclass(w.category, WeightsWarning)]
    assert not odd, odd
