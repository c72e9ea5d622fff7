"""Checkpoints: registry, cache folder, download, verification, safe loading, conversion.

Model code needs two calls: :func:`require` (path of a registered file, found in the weights folder
or the Hugging Face cache, or a one-line error saying how to get it) and :func:`load_state_dict`
(tensors from safetensors or a torch/Lightning file, read without executing pickle code). Submodules
import torch (and huggingface_hub) lazily so ``sd3d weights list`` and ``sd3d --help`` stay fast.
"""

from __future__ import annotations

from sd3d.weights.cache import (
    ENV_VAR,
    Location,
    expected_path,
    locate,
    require,
    resolve_weights_dir,
    weights_folder,
)
from sd3d.weights.loading import load_state_dict, state_dict_from
from sd3d.weights.registry import REGISTRY, HubFile, WeightsEntry, entries, get_entry

__all__ = [
    "ENV_VAR",
    "REGISTRY",
    "HubFile",
    "Location",
    "WeightsEntry",
    "entries",
    "expected_path",
    "get_entry",
    "load_state_dict",
    "locate",
    "require",
    "resolve_weights_dir",
    "state_dict_from",
    "weights_folder",
]
