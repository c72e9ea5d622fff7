"""Where checkpoints live, and the one call model code uses to find them (:func:`require`).

Resolution order for the folder: an explicit ``weights_dir`` (``--weights-dir``) > ``$SD3D_WEIGHTS`` >
``./weights`` when it exists in the current directory (a clone has one) > ``~/.cache/sd3d``. Nothing
is ever downloaded implicitly: a missing file is a one-line error that says how to get it.
"""

from __future__ import annotations

import os
from pathlib import Path

from sd3d.core.errors import WeightsError
from sd3d.weights.registry import WeightsEntry, get_entry

ENV_VAR = "SD3D_WEIGHTS"


def resolve_weights_dir(weights_dir: str | os.PathLike | None = None) -> Path:
    """The folder checkpoints are read from and downloaded into (absolute; it need not exist yet)."""
    if weights_dir is not None and str(weights_dir) != "":
        return Path(weights_dir).expanduser().absolute()
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser().absolute()
    local = Path("weights")
    if local.is_dir():
        return local.absolute()
    return Path.home() / ".cache" / "sd3d"


def expected_path(entry: WeightsEntry | str, weights_dir: str | os.PathLike | None = None) -> Path:
    """Where ``entry``'s file is (or would be) in the resolved weights folder."""
    entry = get_entry(entry) if isinstance(entry, str) else entry
    return resolve_weights_dir(weights_dir) / entry.filename


def require(name: str, weights_dir: str | os.PathLike | None = None) -> Path:
    """Path of the registered file ``name`` if present, else a WeightsError telling how to get it.

    Presence is checked, not the hash (hashing gigabytes on every run would be slow); ``sd3d weights
    verify`` and the download itself do that.
    """
    entry = get_entry(name)
    path = expected_path(entry, weights_dir)
    if path.is_file():
        return path
    raise WeightsError(
        f"missing {entry.filename} (expected at {path}); get it with: sd3d weights download {entry.name}"
    )
