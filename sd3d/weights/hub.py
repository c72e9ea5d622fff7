"""Files hosted on the Hugging Face Hub: found in and downloaded into the shared Hugging Face cache.

Users of diffusion models already keep weights in that cache, point ``HF_ENDPOINT`` at a mirror and
set ``HF_HUB_OFFLINE=1`` on machines without network, so a Hub file goes through ``huggingface_hub``
(``hf_hub_download``, ``try_to_load_from_cache``) and all of that works the standard way; a cached
file is used in place, never copied. huggingface_hub reads those variables when it is imported; we
read its ``constants`` at call time, and every function also takes them as arguments.

Verification stays sd3d's: size and sha256 are checked before a file is used. A file in the Hugging
Face cache that fails the check is *left there* and always refused (with a one-line error naming
it): the cache is shared with other tools, and a file the Hub serves under another hash may be
exactly what they expect, so sd3d does not delete from it; ``--force`` fetches it again (replacing
the cached copy) and ``--sha256`` accepts another hash. Because that cache belongs to
huggingface_hub, sd3d keeps its verification stamps for those files in its own folder
(``~/.cache/sd3d/verified/``) rather than next to them.

Nothing here runs unless asked: :func:`download` only from ``sd3d weights download``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from sd3d.core.errors import WeightsError
from sd3d.core.progress import Progress, resolve
from sd3d.weights.transfer import DownloadResult, check_writable, unreachable_error
from sd3d.weights.registry import HubFile, WeightsEntry
from sd3d.weights.verify import recorded_check, verify_file, write_stamp

# How long the first metadata request may wait for an answer before we call the Hub unreachable.
PROBE_TIMEOUT_S = 10.0


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The Hugging Face hub cache (``HF_HUB_CACHE``, else ``$HF_HOME/hub``, as huggingface_hub sees it)."""
    if override is not None:
        return Path(override).expanduser().absolute()
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser().absolute()


def endpoint(override: str | None = None) -> str:
    """The Hub endpoint downloads go to (``HF_ENDPOINT``, e.g. a mirror; default https://huggingface.co)."""
    if override:
        return override.rstrip("/")
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


def offline(override: bool | None = None) -> bool:
    """Whether Hub traffic is switched off (``HF_HUB_OFFLINE=1``)."""
    if override is not None:
        return override
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def file_url(hub: HubFile, endpoint_url: str | None = None) -> str:
    """The file's ``resolve`` URL on ``endpoint_url`` (default: the configured endpoint)."""
    from huggingface_hub import hf_hub_url

    return hf_hub_url(
        hub.repo_id,
        hub.filename,
        subfolder=hub.subfolder or None,
        repo_type=hub.repo_type,
        revision=hub.revision,
        endpoint=endpoint(endpoint_url),
    )


def cached_file(hub: HubFile, cache: str | os.PathLike | None = None) -> Path | None:
    """The file in the Hugging Face cache (its snapshot path) if that revision of it is cached, else None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        hub.repo_id,
        hub.path_in_repo,
        cache_dir=cache_dir(cache),
        revision=hub.revision,
        repo_type=hub.repo_type,
    )
    return Path(found) if isinstance(found, str) else None  # the other answers: not cached / known absent


def stamp_for(path: Path) -> Path:
    """Where sd3d records its sha256 check of a file in the Hugging Face cache (outside that cache).

    Keyed by the blob the snapshot path points to, so every snapshot sharing a blob shares the record.
    """
    blob = os.path.realpath(path)
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return Path.home() / ".cache" / "sd3d" / "verified" / f"{key}-{path.name}.verified"


def mismatch_error(entry: WeightsEntry, path: Path, got: str, expected: str, fresh: bool) -> WeightsError:
    """The one line for a Hub file whose bytes are not the expected ones (left in the cache, refused)."""
    how = "downloaded" if fresh else "found"
    note = (
        " (the registry hash is provisional; pass --sha256 to accept another)"
        if entry.sha256_provisional
        else ""
    )
    return WeightsError(
        f"sha256 mismatch for {entry.filename} {how} in the Hugging Face cache ({path}): got {got}, "
        f"expected {expected}; sd3d will not use it (left in the shared cache; "
        f"`sd3d weights download {entry.name} --force` fetches it again){note}"
    )


def check_cached(
    entry: WeightsEntry,
    path: Path,
    *,
    sha256: str | None = None,
    fresh: bool = False,
    progress: Progress | None = None,
) -> str | None:
    """Make sure a file in the Hugging Face cache is the expected one, hashing it unless already stamped.

    Returns its sha256 (``None`` when the registry has none and ``sha256`` is not given); raises a
    WeightsError naming the file when size or hash differ.
    """
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        raise WeightsError(
            f"{entry.filename} in the Hugging Face cache ({path}) has {size:,} bytes, expected "
            f"{entry.size:,}; sd3d will not use it "
            f"(`sd3d weights download {entry.name} --force` fetches it again)"
        )
    stamp = stamp_for(path)
    check = recorded_check(entry, path, stamp=stamp)
    if check is not None:  # checked before (size and mtime unchanged): no need to hash gigabytes again
        got, judged = check
        expected = sha256 or judged
        if expected is not None and got != expected:
            raise mismatch_error(entry, path, got, expected, fresh)
        if sha256 is not None and judged != sha256:  # remember the accepted hash, so loading accepts it too
            write_stamp(path, got, stamp=stamp, expected=sha256)
        return got
    expected = sha256 or entry.sha256
    if expected is None:
        return None
    result = verify_file(entry, path, progress, stamp=stamp, sha256=sha256)
    if not result.ok:
        raise mismatch_error(entry, path, result.sha256, expected, fresh)
    return result.sha256


@contextlib.contextmanager
def _library_progress_bars(enabled: bool) -> Iterator[None]:
    """huggingface_hub draws its own tqdm bars; switch them off for the call when sd3d is quiet."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if enabled or are_progress_bars_disabled():
        yield
        return
    disable_progress_bars()
    try:
        yield
    finally:
        enable_progress_bars()


def _reason(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _probe(entry: WeightsEntry, url: str, place_at: Path) -> None:
    """One metadata request (HEAD) without the library's retries, so that no network fails at once.

    hf_hub_download would retry an unreachable Hub with back-off for half a minute before giving up;
    this also lets a wrong size (another revision, a bad mirror) stop us before any bytes are fetched.
    """
    from huggingface_hub import get_hf_file_metadata
    from huggingface_hub.utils import HfHubHTTPError

    try:
        meta = get_hf_file_metadata(url, timeout=PROBE_TIMEOUT_S)
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        raise WeightsError(f"HTTP {status} from {url}; fetch it by hand and place it at {place_at}") from exc
    # the transport's own errors (connection refused, DNS, timeout) differ between library versions
    except Exception as exc:
        raise unreachable_error(entry, url, place_at, _reason(exc)) from exc
    if entry.size is not None and meta.size is not None and meta.size != entry.size:
        raise WeightsError(
            f"{url} offers {meta.size:,} bytes but {entry.filename} has {entry.size:,}; "
            "wrong revision or mirror?"
        )


def download(
    entry: WeightsEntry,
    place_at: Path,
    *,
    sha256: str | None = None,
    force: bool = False,
    cache: str | os.PathLike | None = None,
    endpoint_url: str | None = None,
    offline_mode: bool | None = None,
    progress: Progress | None = None,
) -> DownloadResult:
    """Fetch a Hub-hosted ``entry`` into the Hugging Face cache (or find it there) and verify it.

    ``place_at`` is only named in errors: where to put the file by hand when it cannot be fetched.
    ``cache``, ``endpoint_url`` and ``offline_mode`` override ``HF_HUB_CACHE``/``HF_HOME``,
    ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE``. An already cached file is verified and returned without
    any network traffic (its sha256 decides, not the revision), unless ``force``.
    """
    hub = entry.hub
    if hub is None:
        raise WeightsError(f"{entry.name} is not hosted on the Hugging Face Hub")
    folder = cache_dir(cache)
    url = file_url(hub, endpoint_url)
    progress = resolve(progress)
    if not force:
        found = cached_file(hub, folder)
        if found is not None:
            digest = check_cached(entry, found, sha256=sha256, progress=progress)
            return DownloadResult(found, found.stat().st_size, digest, False, 0, 0)
    if offline(offline_mode):
        why = "HF_HUB_OFFLINE is set" + (
            "" if force else f" and it is not in the Hugging Face cache {folder}"
        )
        raise unreachable_error(entry, url, place_at, why)
    check_writable(folder)
    _probe(entry, url, place_at)

    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HfHubHTTPError

    host = urllib.parse.urlsplit(url).netloc
    try:
        with _library_progress_bars(progress.enabled):
            path = Path(
                hf_hub_download(
                    hub.repo_id,
                    hub.filename,
                    subfolder=hub.subfolder or None,
                    repo_type=hub.repo_type,
                    revision=hub.revision,
                    cache_dir=folder,
                    endpoint=endpoint(endpoint_url),
                    force_download=force,
                )
            )
    except HfHubHTTPError as exc:
        raise WeightsError(f"download of {entry.filename} from {host} failed ({_reason(exc)})") from exc
    # a stream still broken after the library's own resumes, a full disk, a network lost since the probe
    except Exception as exc:
        raise WeightsError(
            f"download of {entry.filename} from {host} failed ({_reason(exc)}); run the same command to "
            f"try again, or fetch {url} by hand and place it at {place_at}"
        ) from exc
    digest = check_cached(entry, path, sha256=sha256, fresh=True, progress=progress)
    return DownloadResult(path, path.stat().st_size, digest, True, 0, 1)
