"""A fake Hugging Face Hub on 127.0.0.1 that serves one file, just as ``hf_hub_download`` asks for it.

huggingface_hub first sends ``HEAD {endpoint}/{spaces/}{repo}/resolve/{revision}/{path}`` and reads
``X-Repo-Commit`` (the commit the revision points to), ``ETag`` (the blob's name in the cache: the
sha256 for LFS files) and the size (``X-Linked-Size`` or ``Content-Length``); then it GETs the same
URL, and after a broken stream GETs again with ``Range: bytes=N-``. This server answers exactly that;
anything else (such as the library's own ``/api/...`` look-ups) is a 404. Every request is logged
(method, path, Range header) so tests can check what went over the wire. It can cut the connection
after N body bytes (scripted per GET) and serve other bytes than the ones a test expects.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.support.local_http import local_server

_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}


@dataclass
class HubScript:
    """What the fake Hub serves and how; ``requests`` is filled in as requests arrive."""

    content: bytes
    repo_id: str
    path_in_repo: str
    repo_type: str = "model"
    revision: str = "main"
    cuts: list[int | None] = field(default_factory=list)  # per GET: body bytes sent before closing
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range)

    @property
    def url_path(self) -> str:
        return f"/{_PREFIXES[self.repo_type]}{self.repo_id}/resolve/{self.revision}/{self.path_in_repo}"

    @property
    def etag(self) -> str:
        """What the Hub sends for an LFS file: its sha256 (the blob's name in the cache)."""
        return hashlib.sha256(self.content).hexdigest()

    @property
    def commit(self) -> str:
        """A commit hash that changes with the content, as a new upload makes a new commit."""
        return hashlib.sha1(self.content).hexdigest()

    def gets(self) -> list[str | None]:
        """The Range header of each GET of the file, in order (``None``: the whole file)."""
        return [rng for method, path, rng in self.requests if method == "GET" and path == self.url_path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    @property
    def script(self) -> HubScript:
        return self.server.script  # type: ignore[attr-defined]

    def _known(self) -> bool:
        self.script.requests.append((self.command, self.path, self.headers.get("Range")))
        if self.path == self.script.url_path:
            return True
        self.send_response(404)
        self.send_header("X-Error-Code", "EntryNotFound")
        self.send_header("X-Repo-Commit", self.script.commit)
        self.send_header("Content-Length", "0")
        self.end_headers()
        return False

    def _file_headers(self, length: int) -> None:
        self.send_header("X-Repo-Commit", self.script.commit)
        self.send_header("ETag", f'"{self.script.etag}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))

    def do_HEAD(self) -> None:
        if not self._known():
            return
        self.send_response(200)
        self._file_headers(len(self.script.content))
        self.end_headers()

    def do_GET(self) -> None:
        if not self._known():
            return
        data, start = self.script.content, 0
        header = self.headers.get("Range")
        if header:
            start = int(re.fullmatch(r"bytes=(\d+)-", header).group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self._file_headers(len(body))
        self.send_header("Connection", "close")
        self.end_headers()
        cut = self.script.cuts.pop(0) if self.script.cuts else None
        self.wfile.write(body if cut is None else body[:cut])
        self.wfile.flush()
        self.close_connection = True


@contextlib.contextmanager
def serve(script: HubScript) -> Iterator[str]:
    """Run the fake Hub for ``script``; yields its endpoint (``http://127.0.0.1:PORT``)."""
    with local_server(_Handler, script) as httpd:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
