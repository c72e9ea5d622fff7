"""Batch input and output folders: a local (or shared) folder, or any fsspec URL (``s3://bucket/prefix``).

A batch result is one sub-folder per image whose ``report.json`` is written last, so the marker's
presence means the folder is complete:

* local folder: the sub-folder is built under a temporary name beside its final one and renamed into
  place (:func:`sd3d.core.io.atomic_dir`, under its output-folder policy: marked as sd3d's, and a
  folder sd3d did not write is never emptied); a process killed mid-write leaves only a hidden
  ``.<name>.*.part`` folder (``.sd3d-*`` inside an existing result), which
  :meth:`LocalFolder.clean_stale` removes;
* URL (object stores have no rename): the sub-folder is built in a local temporary folder, the old
  marker is deleted first, then every file is uploaded and the marker last. A prefix without its
  marker is an unfinished result and is overwritten by the next attempt.

Both kinds pickle to a few strings, so Ray tasks on other machines receive them as arguments.
URLs need fsspec and the file system's package (``s3fs`` for ``s3://``: ``pip install 'sd3d[cloud]'``).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sd3d.core.errors import InputImageError, MissingDependencyError, OutputPathError, UserError
from sd3d.core.io import atomic_dir, mark_output, stale_temporaries, write_json_atomic
from sd3d.pipelines.syncdreamer import check_output_folder

# The photo formats a batch picks up from a folder.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")

MARKER = "report.json"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclass(frozen=True)
class ImageEntry:
    """One input image: its file name, where to read it (path or URL), its modification time and
    ``folder``, the name of its result folder (default: the stem; the batch sets it so that images
    with the same stem, ``a.jpg`` and ``a.png``, never share one)."""

    name: str
    location: str
    mtime: float | None
    folder: str = ""

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @property
    def out_name(self) -> str:
        return self.folder or self.stem


def is_url(location: str | os.PathLike) -> bool:
    """``scheme://...`` other than ``file://`` (which is a local path)."""
    text = str(location)
    return bool(_URL.match(text)) and not text.startswith("file://")


def open_folder(location: str | os.PathLike, overwrite: bool = False) -> LocalFolder | RemoteFolder:
    """``overwrite``: a local output folder's policy (see :func:`sd3d.core.io.check_output_dir`)."""
    text = str(location)
    if is_url(text):
        return RemoteFolder(text)
    return LocalFolder(text.removeprefix("file://"), overwrite)


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


class LocalFolder:
    """A folder on this machine's file system (shared by every node when used on a cluster).

    As an output it follows sd3d's output-folder policy (:func:`sd3d.core.io.check_output_dir`):
    ``overwrite`` lets a non-empty folder sd3d did not write be used, none of its files replaced."""

    def __init__(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        self.root = Path(path)
        self.overwrite = overwrite

    def __repr__(self) -> str:
        return f"LocalFolder({str(self.root)!r})"

    def child(self, name: str) -> str:
        return str(self.root / name)

    def list_images(self) -> list[ImageEntry]:
        if not self.root.is_dir():
            raise UserError(f"input folder not found: {self.root}")
        return [
            ImageEntry(p.name, str(p), p.stat().st_mtime)
            for p in sorted(self.root.iterdir())
            if p.is_file() and _is_image(p.name)
        ]

    def prepare_output(self) -> None:
        """Refuse an unusable output folder before any work, then create it, marked as sd3d's."""

        check_output_folder(self.root, self.overwrite, ["batch.json"])
        self.root.mkdir(parents=True, exist_ok=True)
        mark_output(self.root, ["batch.json"], "batch")

    def check_result(self, name: str, planned: list[str]) -> None:
        """Refuse, before any work, a result folder that ``staging(name)`` would not be allowed to fill."""

        check_output_folder(self.root / name, self.overwrite, planned)

    def marker_mtime(self, name: str) -> float | None:
        """When ``name/report.json`` was written, or ``None`` when the result is missing or unfinished."""
        try:
            return (self.root / name / MARKER).stat().st_mtime
        except OSError:
            return None

    def read_json(self, name: str) -> Any | None:
        try:
            return json.loads((self.root / name).read_text())
        except (OSError, ValueError):
            return None

    def write_json(self, name: str, obj: Any) -> None:

        write_json_atomic(self.root / name, obj)

    @contextlib.contextmanager
    def local_copy(self, entry: ImageEntry) -> Iterator[Path]:
        yield Path(entry.location)

    @contextlib.contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A temporary folder that replaces ``name`` when the block succeeds (and only then)."""

        with atomic_dir(self.root / name, overwrite=self.overwrite, command="run", last=(MARKER,)) as tmp:
            yield tmp

    def clean_stale(self, name: str) -> None:
        """Remove what killed attempts at ``name`` left behind (their temporary folders).

        Only call it while no other attempt at ``name`` runs: the batch driver retries an image only
        after its previous attempt has failed or its process has died.
        """

        pattern = re.compile(rf"^\.{re.escape(name)}\.(?:[A-Za-z0-9_]+\.part|old-\d+)$")
        with contextlib.suppress(OSError):
            for p in self.root.iterdir():
                if pattern.match(p.name) and p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
        for p in stale_temporaries(self.root / name):
            shutil.rmtree(p, ignore_errors=True)


def _mtime(info: dict) -> float | None:
    """Modification time from an fsspec ``info()`` record (the key differs between file systems)."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


class RemoteFolder:
    """A folder behind an fsspec URL; credentials and endpoints come from the usual environment
    (for S3: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``~/.aws``)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._fs = None
        self._path = ""

    def __repr__(self) -> str:
        return f"RemoteFolder({self.url!r})"

    def __getstate__(self) -> dict:
        return {"url": self.url}  # the file system is rebuilt where it is used

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["url"])

    @property
    def fs(self):
        """The fsspec file system (created on first use, in the process that uses it)."""
        if self._fs is None:
            try:
                from fsspec.core import url_to_fs

                self._fs, self._path = url_to_fs(self.url)
            except ImportError as exc:
                scheme = self.url.split("://", 1)[0]
                raise MissingDependencyError(
                    f"{scheme}:// folders need fsspec and its {scheme} package: pip install 'sd3d[cloud]' ({exc})"
                ) from exc
        return self._fs

    def _key(self, *parts: str) -> str:
        """The file system's path of ``parts`` under the folder (``bucket/prefix/...`` for S3)."""
        _ = self.fs  # sets self._path
        return "/".join([self._path.rstrip("/"), *parts])

    def child(self, name: str) -> str:
        return f"{self.url}/{name}"

    def list_images(self) -> list[ImageEntry]:
        fs = self.fs
        try:
            listing = fs.ls(self._key(), detail=True)
        except FileNotFoundError:
            raise UserError(f"input folder not found: {self.url}") from None
        entries = []
        for info in listing:
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            if info.get("type") == "file" and _is_image(name):
                entries.append(ImageEntry(name, self.child(name), _mtime(info)))
        return sorted(entries, key=lambda e: e.name)

    def prepare_output(self) -> None:
        try:
            self.fs.makedirs(self._key(), exist_ok=True)
        except OSError as exc:
            raise OutputPathError(f"cannot use the output folder {self.url}: {exc}") from exc

    def check_result(self, name: str, planned: list[str]) -> None:
        """Not checked: object-store prefixes carry no output marker, and a result's prefix is
        replaced whole when the image is done (:meth:`_upload`)."""

    def marker_mtime(self, name: str) -> float | None:
        try:
            info = self.fs.info(self._key(name, MARKER))
        except FileNotFoundError:
            return None
        stamp = _mtime(info)
        return stamp if stamp is not None else 0.0

    def read_json(self, name: str) -> Any | None:
        try:
            return json.loads(self.fs.cat_file(self._key(name)))
        except (OSError, ValueError):
            return None

    def write_json(self, name: str, obj: Any) -> None:
        # One PUT: object stores replace an object atomically.
        self.fs.pipe_file(self._key(name), (json.dumps(obj, indent=1) + "\n").encode())

    @contextlib.contextmanager
    def local_copy(self, entry: ImageEntry) -> Iterator[Path]:
        """The image downloaded into a temporary folder under its own name (errors name the URL)."""
        with tempfile.TemporaryDirectory(prefix="sd3d-in-") as tmp:
            local = Path(tmp) / entry.name
            try:
                self.fs.get_file(self._key(entry.name), str(local))
            except FileNotFoundError:
                raise InputImageError(f"input image not found: {entry.location}") from None
            try:
                yield local
            except UserError as exc:
                raise type(exc)(str(exc).replace(str(local), entry.location)) from exc

    @contextlib.contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A local temporary folder uploaded to ``name`` when the block succeeds, marker last."""
        with tempfile.TemporaryDirectory(prefix="sd3d-out-") as tmp:
            folder = Path(tmp) / name
            folder.mkdir()
            yield folder
            self._upload(folder, name)

    def _upload(self, folder: Path, name: str) -> None:
        fs = self.fs
        target = self._key(name)
        fs.invalidate_cache()
        with contextlib.suppress(FileNotFoundError):
            fs.rm_file(self._key(name, MARKER))  # from here on the old result reads as unfinished
        with contextlib.suppress(FileNotFoundError):
            fs.rm(target, recursive=True)
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / MARKER)
        for path in [*files, folder / MARKER]:
            fs.put_file(str(path), self._key(name, *path.relative_to(folder).parts))
        fs.invalidate_cache()

    def clean_stale(self, name: str) -> None:
        """Nothing to do: an unfinished prefix (no marker) is overwritten by the next attempt."""
