"""Where checkpoints live, and the one call model code uses to find them (:func:`require`).

The weights folder is resolved as: an explicit ``weights_dir`` (``--weights-dir``) > ``$SD3D_WEIGHTS``
> ``./weights`` when it exists in the current directory (a clone has one) > ``~/.cache/sd3d``. A file
hosted on the Hugging Face Hub is also looked for in the Hugging Face cache, in place (no copy): after
a chosen folder (flag, variable or ``./weights``) and before the default ``~/.cache/sd3d``. So the
search order for a file is ``--weights-dir`` > ``$SD3D_WEIGHTS`` > ``./weights`` > Hugging Face cache
> ``~/.cache/sd3d``, where only the first of the three folders that applies is searched (as before).
Unless a folder was chosen explicitly (flag or variable), the clone's own ``weights/`` and
``~/.cache/sd3d`` are searched after that too: which folder applies depends on the current directory,
and what ``make install`` put into the clone must not vanish because a command was started elsewhere.
Nothing is ever downloaded implicitly: a missing file is a one-line error that says how to get it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sd3d.core.errors import WeightsError
from sd3d.core.progress import Progress
from sd3d.weights import hub
from sd3d.weights.registry import WeightsEntry, get_entry
from sd3d.weights.verify import known_mismatch

ENV_VAR = "SD3D_WEIGHTS"

# Where a file was found (what ``sd3d weights list`` shows).
SOURCE_FLAG = "--weights-dir"
SOURCE_ENV = f"${ENV_VAR}"
SOURCE_LOCAL = "./weights"
SOURCE_HF = "Hugging Face cache"
SOURCE_HOME = "~/.cache/sd3d"
SOURCE_CLONE = "the clone's weights/"
EXPLICIT_SOURCES = (SOURCE_FLAG, SOURCE_ENV)


def weights_folder(weights_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The weights folder (absolute; it need not exist yet) and which rule chose it (a ``SOURCE_*``)."""
    if weights_dir is not None and str(weights_dir) != "":
        return Path(weights_dir).expanduser().absolute(), SOURCE_FLAG
    env = os.environ.get(ENV_VAR, "")
    if env:
        return Path(env).expanduser().absolute(), SOURCE_ENV
    local = Path("weights")
    if local.is_dir():
        return local.absolute(), SOURCE_LOCAL
    return Path.home() / ".cache" / "sd3d", SOURCE_HOME


def resolve_weights_dir(weights_dir: str | os.PathLike | None = None) -> Path:
    """The folder checkpoints are read from and downloaded into (absolute; it need not exist yet)."""
    return weights_folder(weights_dir)[0]


def clone_weights_dir() -> Path | None:
    """``weights/`` of the source clone this package runs from (an editable install), if any."""
    root = Path(__file__).resolve().parents[2]
    folder = root / "weights"
    return folder if (root / "pyproject.toml").is_file() and folder.is_dir() else None


def _fallback_folders(folder: Path, source: str) -> list[tuple[Path, str]]:
    """The folders searched after the resolved one when it was not chosen explicitly."""
    if source in EXPLICIT_SOURCES:
        return []
    out = [(clone_weights_dir(), SOURCE_CLONE), (Path.home() / ".cache" / "sd3d", SOURCE_HOME)]
    seen = {folder.resolve()}
    kept = []
    for path, name in out:
        if path is not None and path.resolve() not in seen:
            seen.add(path.resolve())
            kept.append((path.absolute(), name))
    return kept


def expected_path(entry: WeightsEntry | str, weights_dir: str | os.PathLike | None = None) -> Path:
    """Where ``entry``'s file is (or would be placed by hand) in the resolved weights folder."""
    entry = get_entry(entry) if isinstance(entry, str) else entry
    return resolve_weights_dir(weights_dir) / entry.filename


@dataclass(frozen=True)
class Location:
    """One place a file is looked for: its path, which rule put it in the search, and its stamp.

    ``stamp`` is where its sha256 check is recorded (``None``: next to the file, the default).
    """

    path: Path
    source: str
    stamp: Path | None = None

    def describe(self) -> str:
        return f"{self.source}: {self.path}"


def search_order(
    entry: WeightsEntry | str,
    weights_dir: str | os.PathLike | None = None,
    *,
    hf_cache: str | os.PathLike | None = None,
) -> list[Location]:
    """The places ``entry`` is looked for, best first; the Hugging Face one only when it is cached there."""
    entry = get_entry(entry) if isinstance(entry, str) else entry
    folder, source = weights_folder(weights_dir)
    places = [Location(folder / entry.filename, source)]
    if entry.hub is not None:
        cached = hub.cached_file(entry.hub, hf_cache)
        if cached is not None:
            hf = Location(cached, SOURCE_HF, hub.stamp_for(cached))
            places.insert(1 if source != SOURCE_HOME else 0, hf)
    places += [Location(path / entry.filename, name) for path, name in _fallback_folders(folder, source)]
    return places


def locate(
    entry: WeightsEntry | str,
    weights_dir: str | os.PathLike | None = None,
    *,
    hf_cache: str | os.PathLike | None = None,
) -> Location | None:
    """The first place in :func:`search_order` that holds the file, else ``None`` (no hashing)."""
    for place in search_order(entry, weights_dir, hf_cache=hf_cache):
        if place.path.is_file():
            return place
    return None


def require(
    name: str,
    weights_dir: str | os.PathLike | None = None,
    *,
    hf_cache: str | os.PathLike | None = None,
    progress: Progress | None = None,
) -> Path:
    """Path of the registered file ``name`` if present, else a WeightsError telling how to get it.

    A file in a weights folder is checked for presence, not hashed (hashing gigabytes on every run
    would be slow; ``sd3d weights verify`` and the download itself do that), but one whose recorded
    check failed is refused. A file in the Hugging Face cache may have been put there by another
    tool, so it is hashed once before its first use (the result is remembered); one that fails is
    refused and left in place (see :mod:`sd3d.weights.hub`). A refused file does not hide a good one
    further down the search order.
    """

    entry = get_entry(name)
    refused: WeightsError | None = None
    for place in search_order(entry, weights_dir, hf_cache=hf_cache):
        if not place.path.is_file():
            continue
        if place.source == SOURCE_HF:
            try:
                hub.check_cached(entry, place.path, progress=progress)
            except WeightsError as exc:
                refused = refused or exc
                continue
            return place.path
        bad = known_mismatch(entry, place.path, stamp=place.stamp)
        if bad is None:
            return place.path
        refused = refused or WeightsError(
            f"{place.path} failed its sha256 check (got {bad}); sd3d will not use it; "
            f"get a good copy with: sd3d weights download {entry.name} --force"
        )
    if refused is not None:
        raise refused
    path = expected_path(entry, weights_dir)
    raise WeightsError(
        f"missing {entry.filename} (expected at {path}); get it with: sd3d weights download {entry.name}"
    )
