"""A throw-away HTTP server on 127.0.0.1 for download tests: one request handler, one script object.

The handler reads its script (what to serve, how to misbehave, where to log requests) from
``self.server.script``. The server runs in a daemon thread and shuts itself down after 60 s even if
a test forgets to.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextlib.contextmanager
def local_server(handler: type[BaseHTTPRequestHandler], script: object) -> Iterator[ThreadingHTTPServer]:
    """Serve ``handler`` on a free port of 127.0.0.1 with ``script`` attached; yields the server."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    httpd.script = script  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    watchdog = threading.Timer(60.0, httpd.shutdown)
    watchdog.daemon = True
    watchdog.start()
    try:
        yield httpd
    finally:
        watchdog.cancel()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def closed_port_url() -> str:
    """``http://127.0.0.1:PORT`` for a port nothing listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
