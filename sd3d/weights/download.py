"""Verified downloads: Hub-hosted files through huggingface_hub, others resumable with the standard library.

:func:`download` decides where a file goes. A file hosted on the Hugging Face Hub goes into the shared
Hugging Face cache via :mod:`sd3d.weights.hub` unless a weights folder was chosen explicitly
(``--weights-dir``, ``$SD3D_WEIGHTS``) or the file already sits in the weights folder that the search
order reaches first: then it is fetched from its Hub URL (on the ``HF_ENDPOINT`` in use) into that
folder, like any plain URL. ``--url`` (a mirror) always downloads into the weights folder.

Plain URLs: bytes stream into ``<file>.part``; a cut connection keeps it, and the next attempt (in the
same call, or a later ``sd3d weights download``) asks for the rest with an HTTP ``Range`` header. A
server that ignores ``Range`` (answers 200) is handled by starting over from byte 0. Size and sha256
are checked on the ``.part`` BEFORE it is renamed into place, so a model loader never sees a bad
file; a hash mismatch deletes the ``.part``. Network failures are one-line errors that say which file
to place where by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from sd3d.core.errors import WeightsError
from sd3d.core.progress import Progress, resolve
from sd3d.weights.cache import EXPLICIT_SOURCES, SOURCE_HF, locate, resolve_weights_dir, weights_folder
from sd3d.weights.registry import WeightsEntry, get_entry
from sd3d.weights.transfer import DownloadResult, check_writable, unreachable_error
from sd3d.weights.verify import write_stamp
from sd3d import __version__
from sd3d.weights import hub

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
# Errors while reading the response that mean "the stream broke": keep the .part and resume.
_STREAM_ERRORS = (http.client.HTTPException, OSError)  # OSError covers resets and timeouts


class _Cut(Exception):
    """The stream ended or broke before the expected number of bytes arrived."""


def part_path(target: Path) -> Path:
    return target.with_name(target.name + ".part")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _user_agent() -> str:

    return f"sd3d/{__version__} (python urllib)"


def _offline_error(entry: WeightsEntry, url: str, target: Path, reason: object) -> WeightsError:
    why = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
    return unreachable_error(entry, url, target, why)


def normalise_sha256(sha256: str | None) -> str | None:
    """``--sha256`` in lower case, or a one-line error when it is not 64 hex digits."""
    if sha256 is None:
        return None
    value = sha256.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise WeightsError(f"not a sha256 (64 hex digits): {sha256}")
    return value


def download(
    entry: WeightsEntry | str,
    weights_dir: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    sha256: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    hf_cache: str | os.PathLike | None = None,
    hf_endpoint: str | None = None,
    hf_offline: bool | None = None,
    **plain_options: float,
) -> DownloadResult:
    """Fetch ``entry`` (or find it already in place), verify it, and return where it is.

    ``url`` overrides the registry URL (a mirror; the file goes into the weights folder), ``sha256``
    the expected hash. ``hf_cache``, ``hf_endpoint`` and ``hf_offline`` override ``HF_HUB_CACHE`` /
    ``HF_HOME``, ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` for Hub-hosted files. ``plain_options``
    (``attempts``, ``timeout``, ``retry_wait``, ``chunk_size``) tune plain downloads (:func:`download_url`).
    """
    entry = get_entry(entry) if isinstance(entry, str) else entry
    sha256 = normalise_sha256(sha256)
    if url is None and entry.hub is not None:

        folder, source = weights_folder(weights_dir)
        target = folder / entry.filename
        if source not in EXPLICIT_SOURCES:
            found = locate(entry, weights_dir, hf_cache=hf_cache)
            if found is None or found.source == SOURCE_HF:
                return hub.download(
                    entry,
                    target,
                    sha256=sha256,
                    force=force,
                    cache=hf_cache,
                    endpoint_url=hf_endpoint,
                    offline_mode=hf_offline,
                    progress=progress,
                )
        url = hub.file_url(entry.hub, hf_endpoint)
        if hub.offline(hf_offline) and (force or not target.is_file()):
            raise unreachable_error(entry, url, target, "HF_HUB_OFFLINE is set")
    return download_url(
        entry, weights_dir, url=url, sha256=sha256, force=force, progress=progress, **plain_options
    )


def download_url(
    entry: WeightsEntry | str,
    weights_dir: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    sha256: str | None = None,
    force: bool = False,
    attempts: int = 3,
    timeout: float = 30.0,
    retry_wait: float = 2.0,
    chunk_size: int = 1 << 20,
    progress: Progress | None = None,
) -> DownloadResult:
    """Fetch ``entry`` from a plain URL into the weights folder and return where it is.

    ``url`` overrides the registry URL (a mirror), ``sha256`` the expected hash. ``attempts`` is how
    many times a broken stream is resumed within this call; connection failures (offline, DNS,
    refused, timeout before any response) fail at once. An already present file of the right size
    is kept as is unless ``force``.
    """
    entry = get_entry(entry) if isinstance(entry, str) else entry
    url = url or entry.url
    sha256 = normalise_sha256(sha256)
    expected_sha = sha256 or entry.sha256
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise WeightsError(f"unsupported URL (http/https only): {url}")
    folder = resolve_weights_dir(weights_dir)
    target = folder / entry.filename
    part = part_path(target)

    if target.is_file() and not force:
        size = target.stat().st_size
        if entry.size is None or size == entry.size:
            return DownloadResult(target, size, None, False, 0, 0)
        raise WeightsError(
            f"{target} exists but has {size:,} bytes (expected {entry.size:,}); delete it or use --force"
        )
    check_writable(folder)  # the folder itself is only created once bytes arrive

    resumed_from = _size(part)
    used = 0
    with contextlib.ExitStack() as stack:
        fetcher = _Fetcher(entry, url, target, part, timeout, chunk_size, resolve(progress), stack)
        while True:
            used += 1
            try:
                fetcher.attempt()
                break
            except _Cut as cut:
                if used >= attempts:
                    have = _size(part)
                    total = f" of {entry.size:,}" if entry.size else ""
                    raise WeightsError(
                        f"download of {entry.filename} broke off at {have:,}{total} bytes after {used} "
                        f"attempt(s) ({cut}); partial file kept at {part}; run the same command to resume"
                    ) from None
                time.sleep(retry_wait * used)

    size = _size(part)
    if entry.size is not None and size != entry.size:
        part.unlink(missing_ok=True)
        raise WeightsError(f"{url} sent {size:,} bytes, expected {entry.size:,}; the download was deleted")
    digest = fetcher.hexdigest()
    if expected_sha is not None and digest != expected_sha:
        part.unlink()
        note = (
            " (the registry hash is provisional; pass --sha256 to accept another)"
            if (sha256 is None and entry.sha256_provisional)
            else ""
        )
        raise WeightsError(
            f"sha256 mismatch for {entry.filename}: got {digest}, expected {expected_sha}; "
            f"the download was deleted{note}"
        )
    os.replace(part, target)
    write_stamp(target, digest, expected=sha256)
    return DownloadResult(target, size, digest, True, resumed_from, used)


class _Fetcher:
    """One download's state across attempts: the ``.part`` file and a running sha256 of it."""

    def __init__(
        self,
        entry: WeightsEntry,
        url: str,
        target: Path,
        part: Path,
        timeout: float,
        chunk_size: int,
        progress: Progress,
        stack: contextlib.ExitStack,
    ) -> None:
        self.entry, self.url, self.target, self.part = entry, url, target, part
        self.timeout, self.chunk_size = timeout, chunk_size
        self._progress, self._stack = progress, stack
        self._advance = None  # the progress bar opens once a server answers (not before an offline error)
        self._shown = 0  # bytes the progress bar counts
        self._hasher = hashlib.sha256()
        self._hashed = 0  # number of leading .part bytes the hasher has seen

    def _show(self, have: int) -> None:
        """Move the progress bar to ``have`` bytes of the .part, with a human-readable size."""
        if self._advance is None:
            task = self._progress.task(f"download {self.entry.filename}", total=self.entry.size)
            self._advance = self._stack.enter_context(task)
        total = f"/{self.entry.size / 1e6:,.0f}" if self.entry.size else ""
        self._advance(have - self._shown, info=f"{have / 1e6:,.0f}{total} MB")
        self._shown = have

    def hexdigest(self) -> str:
        self._catch_up(_size(self.part))
        return self._hasher.hexdigest()

    def _restart(self) -> None:
        self.part.unlink(missing_ok=True)
        self._hasher, self._hashed = hashlib.sha256(), 0

    def _catch_up(self, offset: int) -> None:
        """Make the hasher cover exactly the first ``offset`` bytes of the .part (after a resume)."""
        if self._hashed == offset:
            return
        self._hasher, self._hashed = hashlib.sha256(), 0
        if offset == 0:
            return
        with open(self.part, "rb") as f:
            while self._hashed < offset and (chunk := f.read(min(1 << 20, offset - self._hashed))):
                self._hasher.update(chunk)
                self._hashed += len(chunk)

    def attempt(self) -> None:
        """Fetch what is missing from the .part; raises ``_Cut`` when the stream breaks."""
        offset = _size(self.part)
        size = self.entry.size
        if size is not None and offset > size:
            self._restart()
            offset = 0
        if size is not None and offset == size:
            return
        headers = {"User-Agent": _user_agent(), "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(self.url, headers=headers)
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:  # asked past the end: the .part is stale, start over
                self._restart()
                raise _Cut("server refused the resume range") from None
            raise WeightsError(
                f"HTTP {exc.code} {exc.reason} from {self.url}; "
                f"fetch it by hand and place it at {self.target}"
            ) from None
        except urllib.error.URLError as exc:
            raise _offline_error(self.entry, self.url, self.target, exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:  # reset or timeout before the headers
            raise _offline_error(self.entry, self.url, self.target, exc) from None

        with response:
            start, total = self._start_and_total(response, offset)
            if size is not None and total is not None and total != size:
                raise WeightsError(
                    f"{self.url} offers {total:,} bytes but {self.entry.filename} has {size:,}; wrong URL?"
                )
            if start != offset:  # 200 (Range ignored) or an unexpected range: start from scratch
                self._restart()
            self._catch_up(start)
            self._show(start)
            self._stream(response, total)

    def _start_and_total(self, response: http.client.HTTPResponse, offset: int) -> tuple[int, int | None]:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match:
                start = int(match.group(1))
                total = int(match.group(3)) if match.group(3) != "*" else None
                return start, total if total is not None else self.entry.size
            return offset, (offset + length) if length is not None else self.entry.size
        return 0, length if length is not None else self.entry.size

    def _stream(self, response: http.client.HTTPResponse, total: int | None) -> None:
        have = self._hashed
        try:
            self.part.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.part, "ab")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise WeightsError(f"cannot write {self.part}: {exc.strerror or exc}") from exc
        with out:
            while True:
                try:
                    chunk = response.read(self.chunk_size)
                except _STREAM_ERRORS as exc:
                    raise _Cut(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as exc:  # disk full, quota: not something a retry fixes
                    raise WeightsError(f"cannot write {self.part}: {exc.strerror or exc}") from exc
                self._hasher.update(chunk)
                have += len(chunk)
                if total is not None and have > total:
                    out.close()
                    self.part.unlink(missing_ok=True)
                    raise WeightsError(f"{self.url} sent more than its announced {total:,} bytes; deleted")
                self._hashed = have
                self._show(have)
        if total is not None and have < total:
            raise _Cut(f"connection closed after {have:,} of {total:,} bytes")
