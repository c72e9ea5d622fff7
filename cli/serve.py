"""``sd3d serve``: the browser app (:mod:`sd3d.webapp`), on this machine only unless asked otherwise."""

import contextlib
from typing import Annotated

import typer

from cli.common import Device, Dtype, MaxPixels, Weights, WeightsDir, number_option, retold

LOOPBACK = ("127.0.0.1", "localhost", "::1")
PORTS = (1, 65535)

GenerationDtype = retold(Dtype, "Generation precision (auto: bf16 on CUDA, fp32 on CPU).")
SyncDreamerWeights = retold(Weights, "SyncDreamer checkpoint file.")


def register(app: typer.Typer) -> None:
    app.command(
        "serve",
        help="Serve the web app (photo -> views -> mesh, and views -> mesh) in the browser. "
        "Needs the app extra: pip install 'sd3d\\[app]'.",
    )(serve)


def serve(
    host: Annotated[
        str,
        typer.Option(
            "--host",
            help="Address to listen on; 0.0.0.0 serves the whole network (no login: anyone who reaches it "
            "can use it).",
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        number_option(
            "--port", kind=int, at_least=PORTS[0], at_most=PORTS[1], metavar="INT", help="Port to listen on."
        ),
    ] = 7860,
    device: Device = "auto",
    dtype: GenerationDtype = "auto",
    weights: SyncDreamerWeights = None,
    weights_dir: WeightsDir = None,
    max_pixels: MaxPixels = None,
) -> None:
    from sd3d.core.device import resolve_device, resolve_dtype
    from sd3d.core.errors import MissingDependencyError

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
            f"warning: serving on {host}: anyone who can reach this machine on port {port} can use the app "
            "(and its GPU); there is no login",
            err=True,
        )
    app = WebApp(
        ServeOptions(
            device=device, dtype=dtype, weights=weights, weights_dir=weights_dir, max_pixels=max_pixels
        )
    )
    try:
        with _sigterm_as_ctrl_c():
            launch(app, host, port)
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
