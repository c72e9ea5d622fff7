"""sha256 verification of weights files, remembered in a small stamp next to each file.

Hashing 5-15 GB takes a while, so a successful (or failed) check is recorded in ``<file>.verified``
(JSON: sha256, size, mtime_ns). ``sd3d weights list`` trusts a stamp only while the file's size and
modification time are unchanged; ``sd3d weights verify`` always re-hashes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from sd3d.core.progress import Progress, resolve
from sd3d.weights.registry import WeightsEntry

_CHUNK = 1 << 20


def stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def sha256_file(path: Path, progress: Progress | None = None, *, update=None) -> str:
    """Hex sha256 of ``path``, read in 1 MiB chunks (``update`` is an existing hasher to extend)."""
    digest = update if update is not None else hashlib.sha256()
    size = path.stat().st_size
    with resolve(progress).task(f"sha256 {path.name}", total=size) as advance, open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            advance(len(chunk))
    return digest.hexdigest()


def write_stamp(path: Path, sha256: str) -> None:
    """Remember ``sha256`` for the current size/mtime of ``path``; best effort (read-only dirs are fine)."""
    st = path.stat()
    record = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    stamp = stamp_path(path)
    tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}.tmp")
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, stamp)
    with contextlib.suppress(OSError):
        tmp.unlink()


def read_stamp(path: Path) -> str | None:
    """The remembered sha256 if the stamp still matches the file's size and mtime, else ``None``."""
    try:
        record = json.loads(stamp_path(path).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if record.get("size") != st.st_size or record.get("mtime_ns") != st.st_mtime_ns:
        return None
    sha = record.get("sha256")
    return sha if isinstance(sha, str) else None


@dataclass(frozen=True)
class FileStatus:
    """What ``sd3d weights list`` shows for one entry (no hashing involved)."""

    entry: WeightsEntry
    path: Path
    present: bool
    size: int | None  # of the file, when present
    partial_bytes: int | None  # of ``<file>.part``, when a download was interrupted
    verified: str  # "yes", "MISMATCH", "not checked", "no hash", "wrong size", "-"


def file_status(entry: WeightsEntry, path: Path) -> FileStatus:
    part = path.with_name(path.name + ".part")
    partial = part.stat().st_size if part.is_file() else None
    if not path.is_file():
        return FileStatus(entry, path, False, None, partial, "-")
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        verified = "wrong size"
    elif entry.sha256 is None:
        verified = "no hash"
    else:
        known = read_stamp(path)
        verified = "not checked" if known is None else ("yes" if known == entry.sha256 else "MISMATCH")
    return FileStatus(entry, path, True, size, partial, verified)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of hashing one file against its registry entry."""

    entry: WeightsEntry
    path: Path
    size: int
    sha256: str
    ok: bool
    problem: str  # empty when ok


def verify_file(entry: WeightsEntry, path: Path, progress: Progress | None = None) -> VerifyResult:
    """Check size and sha256 of a present file; the result is also stamped for ``weights list``."""
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        return VerifyResult(entry, path, size, "", False, f"has {size:,} bytes, expected {entry.size:,}")
    digest = sha256_file(path, progress)
    write_stamp(path, digest)
    if entry.sha256 is not None and digest != entry.sha256:
        note = " (the expected hash is provisional)" if entry.sha256_provisional else ""
        return VerifyResult(
            entry, path, size, digest, False, f"sha256 {digest} differs from expected {entry.sha256}{note}"
        )
    return VerifyResult(entry, path, size, digest, True, "")
