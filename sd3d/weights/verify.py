"""sha256 verification of weights files, remembered in a small stamp next to each file.

Hashing 5-15 GB takes a while, so a successful (or failed) check is recorded in a stamp (JSON: sha256,
size, mtime_ns), by default ``<file>.verified`` next to the file. Files in the shared Hugging Face cache
get their stamp elsewhere (``stamp=``, see :mod:`sd3d.weights.hub`): that cache belongs to
huggingface_hub. ``sd3d weights list`` trusts a stamp only while the file's size and modification time
are unchanged; ``sd3d weights verify`` always re-hashes.
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


def write_stamp(path: Path, sha256: str, *, stamp: Path | None = None, expected: str | None = None) -> None:
    """Remember ``sha256`` for the current size/mtime of ``path``; best effort (read-only dirs are fine).

    ``stamp`` is where the record goes (default: ``<file>.verified`` next to ``path``). ``expected`` is
    the hash the file was checked against when it is not the registry's (``--sha256``), so that a file
    the user accepted that way still counts as good.
    """
    st = path.stat()
    record = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    if expected is not None:
        record["expected"] = expected
    stamp = stamp or stamp_path(path)
    tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}.tmp")
    with contextlib.suppress(OSError):
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(record) + "\n")
        os.replace(tmp, stamp)
    with contextlib.suppress(OSError):
        tmp.unlink()


def _record(path: Path, stamp: Path | None) -> dict | None:
    """The stamp's record while it still matches the file's size and mtime, else ``None``."""
    try:
        record = json.loads((stamp or stamp_path(path)).read_text())
        st = path.stat()
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        return None
    if record.get("size") != st.st_size or record.get("mtime_ns") != st.st_mtime_ns:
        return None
    return record


def read_stamp(path: Path, *, stamp: Path | None = None) -> str | None:
    """The remembered sha256 if the stamp still matches the file's size and mtime, else ``None``."""
    record = _record(path, stamp)
    return None if record is None else record["sha256"]


def recorded_check(
    entry: WeightsEntry, path: Path, *, stamp: Path | None = None
) -> tuple[str, str | None] | None:
    """(recorded sha256, the hash it is judged against) while the stamp matches the file, else ``None``.

    The hash judged against is the one accepted with ``--sha256`` when the stamp holds one, else the
    registry's. Costs one small read, no hashing.
    """
    record = _record(path, stamp)
    if record is None:
        return None
    return record["sha256"], record.get("expected") or entry.sha256


def known_mismatch(entry: WeightsEntry, path: Path, *, stamp: Path | None = None) -> str | None:
    """The recorded sha256 when a past check found it differs from what was expected, else ``None``.

    Loaders use it to refuse a file that is known to be bad without hashing it again.
    """
    check = recorded_check(entry, path, stamp=stamp)
    if check is None:
        return None
    got, expected = check
    return got if expected is not None and got != expected else None


@dataclass(frozen=True)
class FileStatus:
    """What ``sd3d weights list`` shows for one entry (no hashing involved)."""

    entry: WeightsEntry
    path: Path
    present: bool
    size: int | None  # of the file, when present
    partial_bytes: int | None  # of ``<file>.part``, when a download was interrupted
    verified: str  # "yes", "yes (--sha256)", "MISMATCH", "not checked", "no hash", "wrong size", "-"


def file_status(entry: WeightsEntry, path: Path, *, stamp: Path | None = None) -> FileStatus:
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
        check = recorded_check(entry, path, stamp=stamp)
        if check is None:
            verified = "not checked"
        elif check[0] == entry.sha256:
            verified = "yes"
        else:
            verified = "yes (--sha256)" if check[0] == check[1] else "MISMATCH"
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


def verify_file(
    entry: WeightsEntry,
    path: Path,
    progress: Progress | None = None,
    *,
    stamp: Path | None = None,
    sha256: str | None = None,
) -> VerifyResult:
    """Check size and sha256 of a present file; the result is also stamped for ``weights list``.

    ``sha256`` replaces the registry's expected hash (``--sha256``); ``stamp`` as in :func:`write_stamp`.
    """
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        return VerifyResult(entry, path, size, "", False, f"has {size:,} bytes, expected {entry.size:,}")
    digest = sha256_file(path, progress)
    write_stamp(path, digest, stamp=stamp, expected=sha256)
    expected = sha256 or entry.sha256
    if expected is not None and digest != expected:
        note = " (the expected hash is provisional)" if (sha256 is None and entry.sha256_provisional) else ""
        return VerifyResult(
            entry, path, size, digest, False, f"sha256 {digest} differs from expected {expected}{note}"
        )
    return VerifyResult(entry, path, size, digest, True, "")
