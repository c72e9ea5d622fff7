"""What both download paths share (plain URLs in :mod:`sd3d.weights.download`, the Hugging Face Hub
in :mod:`sd3d.weights.hub`): the result record, the early write check and the one-line offline error."""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from sd3d.core.errors import WeightsError
from sd3d.weights.registry import WeightsEntry


@dataclass(frozen=True)
class DownloadResult:
    """``downloaded`` is False when the file was already in place (nothing fetched)."""

    path: Path
    size: int
    sha256: str | None
    downloaded: bool
    resumed_from: int  # bytes already in ``.part`` when this call started
    attempts: int


def check_writable(folder: Path) -> None:
    """Fail early (before any network traffic) when ``folder`` could not be created or written."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise WeightsError(f"cannot create {folder}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WeightsError(f"cannot write to {existing}: permission denied")


def unreachable_error(entry: WeightsEntry, url: str, place_at: Path, why: str) -> WeightsError:
    """One line: the file, where it is hosted, why it cannot be fetched, where to place it by hand."""
    host = urllib.parse.urlsplit(url).netloc or url
    where = f" ({entry.hub.describe()})" if entry.hub is not None else ""
    return WeightsError(
        f"cannot download {entry.filename} from {host} ({why}); fetch {url}{where} by hand "
        f"and place it at {place_at}"
    )
