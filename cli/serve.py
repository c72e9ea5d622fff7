"""``sd3d serve``: the browser app (:mod:`sd3d.webapp`), on this machine only unless asked otherwise."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from cli.common import max_pixels_option

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(app: typer.Typer) -> None:
    app.command(
        "serve",
        help="Serve the web app (photo -> views -> mesh, and views -> mesh) in the browser. "
        "Needs the app extra: pip install 'sd3d\\[app]'.",
    )(serve)


def serve(
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Address to listen on; 0.0.0.0 serves the whole network (no login: anyone who reaches it can use it).",
    ),
    port: str = typer.Option("7860", "--port", metavar="INT", help="Port to listen on."),
    device: str = typer.Option("auto", "--device", metavar="auto|cpu|cuda[:N]", help="Compute device."),
    dtype: str = typer.Option("auto", "--dtype", metavar="auto|fp32|bf16|fp16", help="Generation precision."),
    weights: Path = typer.Option(None, "--weights", help="SyncDreamer checkpoint file."),
    weights_dir: Path = typer.Option(None, "--weights-dir", help="Weights folder."),
    max_pixels: str = max_pixels_option(),
) -> None:
    from cli.common import parse_max_pixels, parse_number
    from sd3d.core.device import resolve_device, resolve_dtype
    from sd3d.core.errors import MissingDependencyError, UserError

    n_port = parse_number(port, "--port", int)
    if not 1 <= n_port <= 65535:
        raise UserError(f"--port must be between 1 and 65535, got {n_port}")
    n_pixels = parse_max_pixels(max_pixels)
    resolve_dtype(dtype, resolve_device(device))  # bad values fail now, not on the first request
    try:
        from sd3d.webapp.layout import launch
    except ImportError as exc:
        if getattr(exc, "name", "") and str(exc.name).split(".")[0] in ("gradio", "gradio_client"):
            raise MissingDependencyError("the web app needs Gradio: pip install 'sd3d[app]'") from exc
        raise
    from sd3d.webapp.handlers import ServeOptions, WebApp

    if host not in LOOPBACK:
        typer.echo(
            f"warning: serving on {host}: anyone who can reach this machine on port {n_port} can use the app "
            "(and its GPU); there is no login",
            err=True,
        )
    app = WebApp(
        ServeOptions(
            device=device, dtype=dtype, weights=weights, weights_dir=weights_dir, max_pixels=n_pixels
        )
    )
    try:
        with _sigterm_as_ctrl_c():
            launch(app, host, n_port)
    finally:
        app.close()


@contextlib.contextmanager
def _sigterm_as_ctrl_c():
    """While serving, SIGTERM (a service manager, ``docker stop``, ``timeout``) stops the server as
    Ctrl-C does, so the sessions' files are removed on the way out."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
