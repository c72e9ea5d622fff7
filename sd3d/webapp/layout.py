"""The page (``gr.Blocks``) over :class:`~sd3d.webapp.handlers.WebApp`, and the server launcher.

Two tabs. *Photo*: upload -> cut-out preview -> generate the 16 views (elevation estimated, with its
score curve, or given) -> reconstruct -> 3D viewer, turntable, downloads. *Views*: 16 views (or the
official strip image) -> reconstruct -> 3D viewer, downloads; it needs no weights and offers the
shipped example. Every control is labelled with its CLI option and starts at the library's default;
the page shows the equivalent command line.

One GPU job runs at a time: the generate and reconstruct events share one concurrency group of size
1, and Gradio's queue shows each waiting page its position. Library errors (bad upload, missing
weights, impossible option) become a ``gr.Error`` with their one line; anything unexpected is logged
with its traceback on the server and reported on the page in one line.

Gradio is imported here only (never by ``sd3d --help``). The page works offline: telemetry and the
version check are off and the theme's fonts are served by Gradio itself.
"""

import inspect
import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read by gradio at import and launch

import gradio as gr  # noqa: E402

from sd3d.background import BACKEND_NAMES  # noqa: E402
from sd3d.core.cameras import TRAINED_ELEVATION_RANGE_DEG  # noqa: E402
from sd3d.core.errors import UserError  # noqa: E402
from sd3d.pipelines.syncdreamer import SAMPLERS, GenerationSettings  # noqa: E402
from sd3d.webapp.handlers import (  # noqa: E402
    ELEVATION_AUTO,
    EXTRA_FORMATS,
    VIEW_SUFFIXES,
    WebApp,
    example_files,
    example_views_dir,
    photo_settings,
    recon_defaults,
    recon_options,
    reconstruct_command,
    run_command,
)
from sd3d.workflows.run import PREVIEW_FORMATS, RunSettings  # noqa: E402

log = logging.getLogger("sd3d.webapp")

GPU_GROUP = "gpu"  # generation and reconstruction: one at a time, whoever asks
ELEVATION_MANUAL = "manual"
MAX_UPLOAD = "200mb"  # per file; the pixel limit (`--max-pixels`) is checked on top when decoding
QUALITIES = ("auto", "draft", "standard", "high")
MAX_SAMPLES_SHOWN = 8  # the samples slider's range (the library accepts up to 64)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _handler(names: Sequence[str], fn: Callable, *, progress: bool = False, shown: bool = True) -> Callable:
    """Wrap ``fn(values, request[, report])`` as the event function Gradio wants.

    Gradio passes the inputs positionally and finds ``gr.Request`` / ``gr.Progress`` by the
    function's signature, so the wrapper gets one named positional parameter per input (these
    names are also the API's parameter names), then ``request`` and, when ``progress``, a
    ``gr.Progress`` whose updates arrive as ``report(fraction, description)``. With ``shown``,
    library errors become a ``gr.Error`` with their one line, and unexpected ones are logged with
    their traceback and reported in one line."""

    def call(*args):
        if progress:
            *values, request, bar = args
            extra = (lambda fraction, desc: bar(fraction, desc=desc),)
        else:
            *values, request = args
            extra = ()
        if not shown:
            return fn(dict(zip(names, values, strict=True)), request, *extra)
        try:
            return fn(dict(zip(names, values, strict=True)), request, *extra)
        except gr.Error:
            raise
        except UserError as exc:
            raise gr.Error(_one_line(exc), duration=None, print_exception=False) from None
        except Exception as exc:  # noqa: BLE001 - the page gets one line, the log the traceback
            log.exception("unexpected error in %s", fn.__name__)
            raise gr.Error(
                f"unexpected error ({type(exc).__name__}: {_one_line(exc)[:300]}); the server log has the details",
                duration=None,
                print_exception=False,
            ) from None

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter(n, kind) for n in names]
    params.append(inspect.Parameter("request", kind, annotation=gr.Request))
    if progress:
        params.append(inspect.Parameter("progress", kind, default=gr.Progress()))
    call.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    call.__annotations__ = {"request": gr.Request}
    call.__name__ = call.__qualname__ = fn.__name__
    return call


def _upload(payload: Any) -> tuple[str | None, str]:
    """(server path, original name) of an image upload passed without Gradio's preprocessing (so
    that our reader, with its limits and messages, is the one that decodes it)."""
    if payload is None:
        return None, ""
    if isinstance(payload, str):
        return payload, Path(payload).name
    if isinstance(payload, dict):
        path = payload.get("path")
        return path, payload.get("orig_name") or (Path(path).name if path else "")
    path = getattr(payload, "path", None)
    return path, getattr(payload, "orig_name", None) or ""


def _curve(record: dict) -> Any:
    """The elevation score curve as a LinePlot update (hidden when the elevation was given)."""
    import pandas as pd

    points = [p for p in record.get("curve", []) if math.isfinite(p["score"])]
    if not points:
        return gr.LinePlot(value=None, visible=False)
    return gr.LinePlot(value=pd.DataFrame(points), visible=True)


def _unset(default: int | None) -> int:
    """The number field's value for an option whose default is "none given" (the handlers read 0 so)."""
    return 0 if default is None else default


def _quality(value: str) -> gr.Radio:
    return gr.Radio(
        list(QUALITIES), value=value, label="--quality", info="auto: standard on a GPU, draft on CPU"
    )


def _command(value: str, elem_id: str) -> gr.Code:
    return gr.Code(
        value,
        language="shell",
        label="The same from the command line",
        interactive=False,
        lines=1,
        elem_id=elem_id,
    )


def build_demo(app: WebApp) -> gr.Blocks:
    """The page, wired to ``app``'s handlers (launch it with :func:`launch`)."""
    run_defaults = RunSettings()
    views_defaults = recon_defaults()
    example = example_views_dir()

    with gr.Blocks(title="sd3d", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown(
            "# sd3d\nOne photo → 16 multiview-consistent views (SyncDreamer) → textured 3D mesh. "
            "Every control is a command-line option; the page shows the matching `sd3d` command."
        )
        with gr.Tab("Photo → mesh", id="photo"):
            weights_note = gr.Markdown(visible=False, elem_id="weights-note")
            with gr.Row():
                with gr.Column():
                    photo = gr.Image(
                        label="Photo",
                        type="filepath",
                        image_mode=None,
                        sources=["upload", "clipboard"],
                        height=300,
                        elem_id="photo",
                    )
                    with gr.Row():
                        crop_size = gr.Number(
                            value=run_defaults.crop_size,
                            precision=0,
                            label="--crop-size",
                            info="object size in the 256 px input (-1: no crop); Enter to apply",
                        )
                        background = gr.Dropdown(
                            list(BACKEND_NAMES),
                            value=run_defaults.background,
                            label="--background",
                            info="how the object is cut out",
                        )
                    cutout = gr.Image(
                        label="Cut-out: what the model sees",
                        interactive=False,
                        image_mode="RGBA",
                        format="png",
                        height=256,
                    )
                    cutout_info = gr.Markdown()
                with gr.Column():
                    elevation = gr.Radio(
                        [ELEVATION_AUTO, ELEVATION_MANUAL],
                        value=ELEVATION_AUTO if run_defaults.elevation_deg is None else ELEVATION_MANUAL,
                        label="--elevation",
                        info="auto: estimated from the views (score curve below); manual: the slider",
                    )
                    elevation_deg = gr.Slider(
                        *TRAINED_ELEVATION_RANGE_DEG,
                        value=GenerationSettings().elevation_deg,
                        step=0.5,
                        label="elevation of the photo's camera (degrees)",
                        interactive=run_defaults.elevation_deg is not None,
                    )
                    steps = gr.Slider(1, 200, value=run_defaults.generation.steps, step=1, label="--steps")
                    cfg = gr.Slider(0.0, 10.0, value=run_defaults.generation.cfg, step=0.1, label="--cfg")
                    with gr.Row():
                        seed = gr.Number(value=run_defaults.generation.seed, precision=0, label="--seed")
                        samples = gr.Slider(
                            1,
                            MAX_SAMPLES_SHOWN,
                            value=run_defaults.generation.samples,
                            step=1,
                            label="--samples",
                            info="generate N sets, keep the most consistent",
                        )
                    with gr.Accordion("Sampler", open=False):
                        sampler = gr.Dropdown(
                            list(SAMPLERS), value=run_defaults.generation.sampler, label="--sampler"
                        )
                        eta = gr.Number(value=run_defaults.generation.eta, label="--eta")
                    generate_btn = gr.Button("Generate the 16 views", variant="primary", elem_id="generate")
            with gr.Row():
                gallery = gr.Gallery(
                    label="The 16 views", columns=8, height=300, format="png", elem_id="views-gallery"
                )
            with gr.Row():
                grid = gr.Image(label="grid.png", interactive=False, format="png")
                with gr.Column():
                    curve = gr.LinePlot(
                        x="elevation_deg",
                        y="score",
                        title="Elevation estimate: silhouette score",
                        visible=False,
                    )
                    elevation_info = gr.Markdown()
            gr.Markdown("### Reconstruction")
            with gr.Row():
                quality = _quality(run_defaults.recon.quality)
                recon_steps = gr.Number(
                    value=_unset(run_defaults.recon.steps),
                    precision=0,
                    label="--recon-steps",
                    info="0: the preset's",
                )
                faces = gr.Number(
                    value=_unset(run_defaults.recon.faces), precision=0, label="--faces", info="0: all"
                )
            with gr.Row():
                formats = gr.CheckboxGroup(
                    list(EXTRA_FORMATS),
                    value=[f for f in run_defaults.recon.formats if f != "glb"],
                    label="--formats",
                    info="besides the GLB",
                )
                preview = gr.Radio(
                    list(PREVIEW_FORMATS), value=run_defaults.preview.format, label="--preview"
                )
                preview_frames = gr.Number(
                    value=run_defaults.preview.frames, precision=0, label="--preview-frames"
                )
            reconstruct_btn = gr.Button("Reconstruct the mesh", variant="primary", elem_id="reconstruct")
            with gr.Row():
                photo_model = gr.Model3D(label="Textured mesh", height=420, elem_id="photo-model")
                photo_video = gr.Video(label="Turntable", autoplay=True, loop=True, height=420)
            photo_files = gr.File(label="Downloads", file_count="multiple", interactive=False)
            photo_summary = gr.Markdown()
            photo_command = _command(run_command(run_defaults, "photo.png", app.options), "photo-command")

        with gr.Tab("Views → mesh", id="views"):
            gr.Markdown(
                "Upload the 16 views (`000.png … 015.png`, optionally with `cameras.json`; RGBA or RGB on "
                "white) or the official 16-view strip image. Needs no model weights."
            )
            with gr.Row():
                with gr.Column():
                    view_files = gr.File(
                        label="Views",
                        file_count="multiple",
                        height=280,
                        file_types=[*VIEW_SUFFIXES, ".json"],
                        elem_id="view-files",
                    )
                    example_btn = gr.Button(
                        "Example: spot (16 renders of a cow, CC0) → mesh",
                        visible=example is not None,
                        elem_id="views-example",
                    )
                with gr.Column():
                    v_quality = _quality(views_defaults.quality)
                    with gr.Row():
                        v_steps = gr.Number(
                            value=_unset(views_defaults.steps),
                            precision=0,
                            label="--steps",
                            info="training steps; 0: the preset's",
                            elem_id="views-steps",
                        )
                        v_seed = gr.Number(value=views_defaults.seed, precision=0, label="--seed")
                        v_faces = gr.Number(
                            value=_unset(views_defaults.faces),
                            precision=0,
                            label="--faces",
                            info="0: all",
                            elem_id="views-faces",
                        )
                    v_formats = gr.CheckboxGroup(
                        list(EXTRA_FORMATS), value=[], label="extra formats", info="besides the GLB"
                    )
                    views_btn = gr.Button(
                        "Reconstruct the mesh", variant="primary", elem_id="views-reconstruct"
                    )
            with gr.Row():
                views_model = gr.Model3D(label="Textured mesh", height=420, elem_id="views-model")
                with gr.Column():
                    views_files = gr.File(
                        label="Downloads", file_count="multiple", interactive=False, elem_id="views-downloads"
                    )
                    views_summary = gr.Markdown(elem_id="views-summary")
                    views_command = _command(
                        reconstruct_command(views_defaults, app.options), "views-command"
                    )

        # ---- photo tab events ---------------------------------------------------------------------
        controls = {
            "elevation": elevation,
            "elevation_deg": elevation_deg,
            "crop_size": crop_size,
            "background": background,
            "steps": steps,
            "cfg": cfg,
            "eta": eta,
            "seed": seed,
            "samples": samples,
            "sampler": sampler,
            "quality": quality,
            "recon_steps": recon_steps,
            "faces": faces,
            "formats": formats,
            "preview": preview,
            "preview_frames": preview_frames,
        }

        def settings_of(values: dict[str, Any]) -> RunSettings:
            return photo_settings(**{k: values[k] for k in controls}, options=app.options)

        def weights_banner():
            problem = app.weights_problem()
            if problem is None:
                return gr.Markdown(visible=False)
            return gr.Markdown(
                "**Generation needs the SyncDreamer weights (5.6 GB), which are not installed.** "
                "Get them with `sd3d weights download syncdreamer` and reload this page "
                f"(details: {problem}). The *Views → mesh* tab works without them.",
                visible=True,
            )

        demo.load(weights_banner, outputs=weights_note, queue=False, api_visibility="private")

        def do_cut_out(values, request):
            path, name = _upload(values["photo"])
            if path is None:
                return None, ""
            result = app.cut_out(request.session_hash, path, values["crop_size"], values["background"], name)
            return str(result.image), result.info

        gr.on(
            [photo.change, background.change, crop_size.submit],
            _handler(["photo", "crop_size", "background"], do_cut_out),
            inputs=[photo, crop_size, background],
            outputs=[cutout, cutout_info],
            preprocess=False,
            api_name="cut_out",
        )

        def toggle_elevation(mode: str):
            return gr.Slider(interactive=mode == ELEVATION_MANUAL)

        elevation.change(
            toggle_elevation, inputs=elevation, outputs=elevation_deg, queue=False, api_visibility="private"
        )

        def show_command(values, _request):
            _, name = _upload(values["photo"])
            try:
                return run_command(settings_of(values), name or "photo.png", app.options)
            except UserError as exc:
                return f"# {exc}"

        gr.on(
            [c.change for c in controls.values()],
            _handler(["photo", *controls], show_command, shown=False),
            inputs=[photo, *controls.values()],
            outputs=photo_command,
            queue=False,
            preprocess=False,
            api_visibility="private",
        )

        def do_generate(values, request, progress):
            path, name = _upload(values["photo"])
            result = app.generate(request.session_hash, path, settings_of(values), name, report=progress)
            return (
                [(str(p), caption) for p, caption in result.views],
                str(result.grid),
                _curve(result.elevation),
                result.summary,
                result.command,
            )

        generate_btn.click(
            _handler(["photo", *controls], do_generate, progress=True),
            inputs=[photo, *controls.values()],
            outputs=[gallery, grid, curve, elevation_info, photo_command],
            preprocess=False,
            concurrency_id=GPU_GROUP,
            concurrency_limit=1,
            api_name="generate",
        )

        def do_reconstruct_photo(values, request, progress):
            result = app.reconstruct_photo(request.session_hash, settings_of(values), report=progress)
            return (
                str(result.glb),
                str(result.preview) if result.preview else None,
                [str(p) for p in result.downloads],
                result.summary,
                result.command,
            )

        reconstruct_btn.click(
            _handler(list(controls), do_reconstruct_photo, progress=True),
            inputs=list(controls.values()),
            outputs=[photo_model, photo_video, photo_files, photo_summary, photo_command],
            concurrency_id=GPU_GROUP,
            concurrency_limit=1,
            api_name="reconstruct_photo",
        )

        # ---- views tab events ---------------------------------------------------------------------
        views_controls = {
            "quality": v_quality,
            "steps": v_steps,
            "seed": v_seed,
            "faces": v_faces,
            "formats": v_formats,
        }

        def views_options(values: dict[str, Any]):
            return recon_options(**{k: values[k] for k in views_controls}, options=app.options)

        def show_views_command(values, _request):
            try:
                return reconstruct_command(views_options(values), app.options)
            except UserError as exc:
                return f"# {exc}"

        gr.on(
            [c.change for c in views_controls.values()],
            _handler(list(views_controls), show_views_command, shown=False),
            inputs=list(views_controls.values()),
            outputs=views_command,
            queue=False,
            api_visibility="private",
        )

        def do_reconstruct_views(values, request, progress):
            result = app.reconstruct_views(
                request.session_hash, values["views"], views_options(values), report=progress
            )
            return str(result.glb), [str(p) for p in result.downloads], result.summary, result.command

        views_event = dict(
            fn=_handler(["views", *views_controls], do_reconstruct_views, progress=True),
            inputs=[view_files, *views_controls.values()],
            outputs=[views_model, views_files, views_summary, views_command],
            concurrency_id=GPU_GROUP,
            concurrency_limit=1,
        )
        views_btn.click(**views_event, api_name="reconstruct_views")

        def load_example(_values, _request):
            return [str(p) for p in example_files()]

        example_btn.click(_handler([], load_example), outputs=view_files, api_name="example_views").then(
            **views_event, api_visibility="private"
        )

        def end_session(request: gr.Request):
            app.end_session(request.session_hash)

        demo.unload(end_session)
    return demo


def launch(
    app: WebApp,
    host: str = "127.0.0.1",
    port: int = 7860,
    *,
    block: bool = True,
    quiet: bool = False,
) -> gr.Blocks:
    """Build the page, start the queue (one GPU job at a time) and serve it on ``host:port``.

    ``block=False`` returns once the server runs (tests); close it with ``demo.close()``."""
    demo = build_demo(app)
    demo.queue(default_concurrency_limit=1)
    allowed = [str(app.work_dir)]
    example = example_views_dir()
    if example is not None:
        allowed.append(str(example))
    try:
        demo.launch(
            server_name=host,
            server_port=port,
            prevent_thread_lock=not block,
            share=False,
            inbrowser=False,
            quiet=quiet,
            show_error=False,
            allowed_paths=allowed,
            max_file_size=MAX_UPLOAD,
            ssr_mode=False,
            pwa=False,
            mcp_server=False,
            enable_monitoring=False,
        )
    except OSError as exc:
        if "empty port" in str(exc) or "address already in use" in str(exc).lower():
            raise UserError(
                f"cannot listen on {host}:{port}: the port is in use (choose another with --port)"
            ) from None
        raise
    return demo
