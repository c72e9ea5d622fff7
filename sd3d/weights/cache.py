"""Where checkpoints live, and the one call model code uses to find them (:func:`require`).

Resolution order for the folder: an explicit ``weights_dir`` (``--weights-dir``) > ``$SD3D_WEIGHTS`` >
``./weights`` when it exists in the current directory (a clone has one) > ``~/.cache/sd3d``. Downloads
go there. A present file is also found in the checkout's ``weights/`` and in ``~/.cache/sd3d`` when no
folder was given explicitly (:func:`search_dirs`), so a command run outside the clone still finds
what ``make install`` put into it. Nothing is ever downloaded implicitly: a missing file is a
one-line error that says how to get it.
"""

from __future__ import annotations

import os
from pathlib import Path

from sd3d.errors import WeightsError
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


def _checkout_weights_dir() -> Path | None:
    """``weights/`` of the source checkout this package runs from (an editable install), if any."""
    root = Path(__file__).resolve().parents[2]
    folder = root / "weights"
    return folder if (root / "pyproject.toml").is_file() and folder.is_dir() else None


def search_dirs(weights_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders a registered file is looked for in, in order (absolute, without repeats).

    An explicit ``weights_dir`` is the only one (the user chose it). Otherwise the resolved folder
    comes first, then the checkout's ``weights/`` (where ``make install`` puts rembg's model) and
    ``~/.cache/sd3d``: which of them :func:`resolve_weights_dir` picks depends on the current
    folder, and a file must not vanish because a command was started somewhere else.
    """
    first = resolve_weights_dir(weights_dir)
    if weights_dir is not None and str(weights_dir) != "":
        return [first]
    candidates = [first, _checkout_weights_dir(), Path.home() / ".cache" / "sd3d"]
    return list(dict.fromkeys(c.absolute() for c in candidates if c is not None))


def find(entry: WeightsEntry | str, weights_dir: str | os.PathLike | None = None) -> Path | None:
    """The first present copy of ``entry``'s file in :func:`search_dirs`, or ``None``."""
    entry = get_entry(entry) if isinstance(entry, str) else entry
    for folder in search_dirs(weights_dir):
        if (folder / entry.filename).is_file():
            return folder / entry.filename
    return None


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
    found = find(entry, weights_dir)
    if found is not None:
        return found
    path = expected_path(entry, weights_dir)
    raise WeightsError(
        f"missing {entry.filename} (expected at {path}); get it with: sd3d weights download {entry.name}"
    )
