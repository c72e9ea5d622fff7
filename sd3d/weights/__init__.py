"""Checkpoints: registry, cache folder, download, verification, safe loading, conversion.

Model code needs two calls: :func:`require` (path of a registered file, or a one-line error saying
how to get it) and :func:`load_state_dict` (tensors from safetensors or a torch/Lightning file,
read without executing pickle code). Submodules import torch lazily so ``sd3d weights list`` and
``sd3d --help`` stay fast.
"""

from __future__ import annotations

from sd3d.weights.cache import ENV_VAR, expected_path, find, require, resolve_weights_dir, search_dirs
from sd3d.weights.loading import load_state_dict, state_dict_from
from sd3d.weights.registry import REGISTRY, WeightsEntry, entries, get_entry

__all__ = [
    "ENV_VAR",
    "REGISTRY",
    "WeightsEntry",
    "entries",
    "expected_path",
    "find",
    "get_entry",
    "load_state_dict",
    "require",
    "resolve_weights_dir",
    "search_dirs",
    "state_dict_from",
]
