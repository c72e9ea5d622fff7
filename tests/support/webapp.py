"""The web app launched in-process on 127.0.0.1 for the API and browser tests."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass

from sd3d.webapp.handlers import WebApp


@dataclass(frozen=True)
class Served:
    app: WebApp
    demo: object  # the running gr.Blocks
    url: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(app: WebApp) -> Iterator[Served]:
    """Launch ``app`` on a free local port (not blocking); close the server and the app after."""
    from sd3d.webapp.layout import launch

    port = free_port()
    demo = launch(app, "127.0.0.1", port, block=False, quiet=True)
    try:
        yield Served(app, demo, f"http://127.0.0.1:{port}/")
    finally:
        demo.close()
        app.close()
