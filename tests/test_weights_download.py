"""Downloads against a local HTTP server on 127.0.0.1: full, resumed, Range ignored, bad hash, offline.

The server (tests/support/local_http.py) serves one in-memory file, can cut the connection after N
bytes (scripted per request) or ignore ``Range``, and records every ``Range`` header it got.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest

from sd3d.core.errors import WeightsError
from sd3d.core.progress import Progress
from sd3d.weights import registry
from sd3d.weights.download import download
from sd3d.weights.registry import WeightsEntry
from sd3d.weights.verify import file_status
from tests.support.local_http import closed_port_url, local_server

CONTENT = np.random.default_rng(7).bytes(600_000)
SHA = hashlib.sha256(CONTENT).hexdigest()


@dataclass
class ServerScript:
    content: bytes = CONTENT
    honour_range: bool = True
    cuts: list[int | None] = field(default_factory=list)  # per request: bytes to send before closing
    status: int | None = None  # answer every request with this error status
    ranges: list[str | None] = field(default_factory=list)  # Range header of each request


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        script: ServerScript = self.server.script  # type: ignore[attr-defined]
        header = self.headers.get("Range")
        script.ranges.append(header)
        if script.status is not None:
            self.send_error(script.status)
            return
        data, start = script.content, 0
        if header and script.honour_range:
            start = int(re.fullmatch(r"bytes=(\d+)-", header).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        cut = script.cuts.pop(0) if script.cuts else None
        self.wfile.write(body if cut is None else body[:cut])
        self.wfile.flush()
        self.close_connection = True


@pytest.fixture
def server():
    with local_server(_Handler, ServerScript()) as httpd:
        yield httpd


def _url(httpd) -> str:
    return f"http://127.0.0.1:{httpd.server_address[1]}/weights/tiny.ckpt"


def _entry(url: str, sha256: str | None = SHA, size: int | None = len(CONTENT)) -> WeightsEntry:
    return WeightsEntry(
        name="tiny",
        filename="tiny.ckpt",
        size=size,
        sha256=sha256,
        url=url,
        licence="test",
        needed_by="tests",
    )


def _closed_port_url() -> str:
    return f"{closed_port_url()}/x.ckpt"


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------------------------------
# library
# --------------------------------------------------------------------------------------------------
def test_full_download_is_verified_and_stamped(server, tmp_path: Path) -> None:
    entry = _entry(_url(server))
    result = download(entry, tmp_path, chunk_size=65536)
    assert result.path == tmp_path / "tiny.ckpt" and result.downloaded and result.sha256 == SHA
    assert result.path.read_bytes() == CONTENT
    assert _files(tmp_path) == ["tiny.ckpt", "tiny.ckpt.verified"]
    assert file_status(entry, result.path).verified == "yes"
    assert server.script.ranges == [None]
    again = download(entry, tmp_path)  # present with the right size: nothing fetched
    assert not again.downloaded and server.script.ranges == [None]


def test_resume_in_a_later_call_after_a_cut_connection(server, tmp_path: Path) -> None:
    entry = _entry(_url(server))
    server.script.cuts = [200_000]
    with pytest.raises(WeightsError) as err:
        download(entry, tmp_path, attempts=1, chunk_size=65536)
    assert "partial file kept" in str(err.value) and "\n" not in str(err.value)
    assert _files(tmp_path) == ["tiny.ckpt.part"]
    assert (tmp_path / "tiny.ckpt.part").read_bytes() == CONTENT[:200_000]
    assert file_status(entry, tmp_path / "tiny.ckpt").partial_bytes == 200_000

    result = download(entry, tmp_path, attempts=1, chunk_size=65536)
    assert server.script.ranges == [None, "bytes=200000-"]
    assert result.resumed_from == 200_000 and result.path.read_bytes() == CONTENT
    assert _files(tmp_path) == ["tiny.ckpt", "tiny.ckpt.verified"]


def test_retries_resume_within_one_call(server, tmp_path: Path) -> None:
    server.script.cuts = [100_000, 150_000]
    result = download(_entry(_url(server)), tmp_path, attempts=3, retry_wait=0, chunk_size=65536)
    assert server.script.ranges == [None, "bytes=100000-", "bytes=250000-"]
    assert result.attempts == 3 and result.path.read_bytes() == CONTENT


def test_server_ignoring_range_restarts_from_zero(server, tmp_path: Path) -> None:
    server.script.honour_range = False
    (tmp_path / "tiny.ckpt.part").write_bytes(b"\xff" * 300_000)  # stale bytes that must not survive
    result = download(_entry(_url(server)), tmp_path, chunk_size=65536, progress=Progress(transient=True))
    assert server.script.ranges == ["bytes=300000-"]
    assert result.path.read_bytes() == CONTENT and result.sha256 == SHA


def test_part_longer_than_the_file_and_416_restart(server, tmp_path: Path) -> None:
    part = tmp_path / "tiny.ckpt.part"
    part.write_bytes(b"\0" * (len(CONTENT) + 5))  # longer than the file: dropped without asking
    assert download(_entry(_url(server)), tmp_path).path.read_bytes() == CONTENT
    assert server.script.ranges == [None]
    # unknown size: a stale .part past the server's end gets 416 and a fresh start
    (tmp_path / "tiny.ckpt").unlink()
    part.write_bytes(b"\0" * (len(CONTENT) + 5))
    result = download(_entry(_url(server), size=None), tmp_path, retry_wait=0)
    assert server.script.ranges[1:] == [f"bytes={len(CONTENT) + 5}-", None]
    assert result.path.read_bytes() == CONTENT


def test_hash_mismatch_leaves_no_file(server, tmp_path: Path) -> None:
    entry = _entry(_url(server), sha256="0" * 64)
    with pytest.raises(WeightsError) as err:
        download(entry, tmp_path)
    message = str(err.value)
    assert message.startswith("sha256 mismatch for tiny.ckpt") and SHA in message and "\n" not in message
    assert _files(tmp_path) == []


def test_wrong_size_offer_and_http_error(server, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="offers 600,000 bytes but tiny.ckpt has 600,001"):
        download(_entry(_url(server), size=len(CONTENT) + 1), tmp_path)
    server.script.status = 404
    with pytest.raises(WeightsError, match=r"^HTTP 404 .* place it at .*tiny\.ckpt$"):
        download(_entry(_url(server)), tmp_path)
    assert _files(tmp_path) == []


def test_offline_error_says_what_to_place_where(tmp_path: Path) -> None:
    url = _closed_port_url()
    with pytest.raises(WeightsError) as err:
        download(_entry(url), tmp_path / "w")
    message = str(err.value)
    assert "\n" not in message and url in message and str(tmp_path / "w" / "tiny.ckpt") in message
    assert "Connection refused" in message
    assert not (tmp_path / "w").exists()  # not even the weights folder was created


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_registered(server, monkeypatch: pytest.MonkeyPatch) -> WeightsEntry:
    entry = _entry(_url(server))
    monkeypatch.setattr(registry, "REGISTRY", MappingProxyType({**registry.REGISTRY, "tiny": entry}))
    return entry


def test_cli_download_list_verify_path(tiny_registered, tmp_path: Path, run_cli) -> None:
    wd = str(tmp_path)
    listed = run_cli("weights", "list", "--weights-dir", wd)
    assert listed.code == 0 and re.search(r"tiny\s.*tiny\.ckpt.*\bno\b", listed.out), listed

    got = run_cli("-q", "weights", "download", "tiny", "--weights-dir", wd)
    assert got.code == 0 and got.out.strip().splitlines()[-1] == str(tmp_path / "tiny.ckpt"), got
    assert run_cli("weights", "path", "tiny", "--weights-dir", wd).out.strip() == str(tmp_path / "tiny.ckpt")
    listed = run_cli("weights", "list", "--weights-dir", wd)
    assert re.search(r"tiny\s.*tiny\.ckpt.*\byes\b.*\byes\b", listed.out), listed

    checked = run_cli("-q", "weights", "verify", "tiny", "--weights-dir", wd)
    assert checked.code == 0 and checked.out.strip().splitlines()[-1].startswith("ok  tiny"), checked

    # same size, one flipped byte: verify fails with one line and exit 2; list shows the mismatch
    data = bytearray(CONTENT)
    data[123] ^= 1
    (tmp_path / "tiny.ckpt").write_bytes(bytes(data))
    bad = run_cli("-q", "weights", "verify", "--weights-dir", wd)
    assert bad.code == 2 and bad.err.count("\n") == 1 and "tiny.ckpt sha256" in bad.err, bad
    assert re.search(r"tiny\s.*MISMATCH", run_cli("weights", "list", "--weights-dir", wd).out)


@pytest.mark.parametrize(
    "args",
    [
        ("weights", "download", "syncdreamer", "--url", "CLOSED"),
        ("weights", "download", "nope"),
        ("weights", "download", "syncdreamer", "--url", "ftp://example.org/x"),
        ("weights", "download", "syncdreamer", "--sha256", "xyz"),
        ("weights", "verify", "syncdreamer"),
        ("weights", "path", "nope"),
    ],
    ids=["offline", "unknown", "bad-url", "bad-sha", "verify-missing", "path-unknown"],
)
def test_cli_errors_are_one_line_exit_2(args, tmp_path: Path, run_cli) -> None:
    args = tuple(_closed_port_url() if a == "CLOSED" else a for a in args)
    result = run_cli("-q", *args, "--weights-dir", str(tmp_path / "w"))
    assert result.code == 2, result
    assert result.err.startswith("error: ") and result.err.count("\n") == 1, result
    assert not (tmp_path / "w").exists()
