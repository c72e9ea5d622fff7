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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read by gradio at import and launch

import gradio as gr  # noqa: E402

from recon.presets import QUALITIES, ReconSettings  # noqa: E402
from sd3d.background import BACKEND_NAMES  # noqa: E402
from sd3d.core import defaults as core_defaults  # noqa: E402
from sd3d.core.cameras import TRAINED_ELEVATION_RANGE_DEG  # noqa: E402
from sd3d.core.errors import UserError  # noqa: E402
from sd3d.pipelines.syncdreamer import SAMPLERS  # noqa: E402
from sd3d.webapp.handlers import (  # noqa: E402
    ELEVATION_AUTO,
    EXTRA_FORMATS,
    VIEW_SUFFIXES,
    Reconstructed,
    WebApp,
    example_files,
    example_views_dir,
    extra_formats,
    photo_settings,
    reconstruct_command,
    run_command,
    views_settings,
)
from sd3d.workflows.run import PREVIEW_FORMATS, RunSettings  # noqa: E402

log = logging.getLogger("sd3d.webapp")

GPU_GROUP = "gpu"  # generation and reconstruction: one at a time, whoever asks
ELEVATION_MANUAL = "manual"
MAX_UPLOAD = "200mb"  # per file; the pixel limit (`--max-pixels`) is checked on top when decoding
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


def _extra_formats(recon: ReconSettings, label: str) -> gr.CheckboxGroup:
    return gr.CheckboxGroup(
        list(EXTRA_FORMATS), value=extra_formats(recon), label=label, info="besides the GLB"
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


# --------------------------------------------------------------------------------------------------
# the parts of the page that events connect
# --------------------------------------------------------------------------------------------------
Component = gr.components.Component
GPU_EVENT = {"concurrency_id": GPU_GROUP, "concurrency_limit": 1}  # for every event that runs a model


def _keywords(settings_fn: Callable) -> list[str]:
    """A settings function's keywords (but the server's ``options``): the names and the order of
    its tab's controls, and so of the API's parameters."""
    return [name for name in inspect.signature(settings_fn).parameters if name != "options"]


@dataclass(frozen=True)
class _Step:
    """Controls of one step, keyed by their settings function's keyword, and the button that runs it."""

    controls: dict[str, Component]
    button: gr.Button


@dataclass(frozen=True)
class _PhotoInput:
    """The upload, the preprocessing controls and the cut-out they give."""

    photo: gr.Image
    controls: dict[str, Component]  # crop_size, background
    cutout: gr.Image
    cutout_info: gr.Markdown


@dataclass(frozen=True)
class _GeneratedViews:
    """Where the 16 views and the elevation estimate show."""

    gallery: gr.Gallery
    grid: gr.Image
    curve: gr.LinePlot
    elevation_info: gr.Markdown

    def outputs(self) -> list[Component]:
        return [self.gallery, self.grid, self.curve, self.elevation_info]


@dataclass(frozen=True)
class _MeshOutput:
    """Where a reconstruction shows; ``video`` (the turntable) on the photo tab only."""

    model: gr.Model3D
    video: gr.Video | None
    files: gr.File
    summary: gr.Markdown
    command: gr.Code

    def outputs(self) -> list[Component]:
        return [c for c in (self.model, self.video, self.files, self.summary, self.command) if c is not None]

    def show(self, result: Reconstructed) -> tuple:
        """``result`` as the values of :meth:`outputs`."""
        video = () if self.video is None else (str(result.preview) if result.preview else None,)
        return (str(result.glb), *video, [str(p) for p in result.downloads], result.summary, result.command)


@dataclass(frozen=True)
class PhotoTab:
    """The photo tab's parts; the page fills ``weights_note`` when it loads."""

    weights_note: gr.Markdown
    input: _PhotoInput
    controls: dict[str, Component]  # photo_settings' keywords -> their controls, in its order
    generate: gr.Button
    views: _GeneratedViews
    reconstruct: gr.Button
    mesh: _MeshOutput

    def settings(self, values: dict[str, Any], app: WebApp) -> RunSettings:
        return photo_settings(**{k: values[k] for k in self.controls}, options=app.options)


@dataclass(frozen=True)
class ViewsTab:
    """The views tab's parts."""

    files: gr.File
    example: gr.Button
    step: _Step  # views_settings' keywords -> their controls, and the reconstruct button
    mesh: _MeshOutput


# --------------------------------------------------------------------------------------------------
# photo tab
# --------------------------------------------------------------------------------------------------
def _photo_input(defaults: RunSettings) -> _PhotoInput:
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
            value=defaults.crop_size,
            precision=0,
            label="--crop-size",
            info="object size in the 256 px input (-1: no crop); Enter to apply",
        )
        background = gr.Dropdown(
            list(BACKEND_NAMES),
            value=defaults.background,
            label="--background",
            info="how the object is cut out",
        )
    cutout = gr.Image(
        label="Cut-out: what the model sees", interactive=False, image_mode="RGBA", format="png", height=256
    )
    cutout_info = gr.Markdown()
    return _PhotoInput(photo, {"crop_size": crop_size, "background": background}, cutout, cutout_info)


def _generation_step(defaults: RunSettings) -> _Step:
    generation = defaults.generation
    elevation = gr.Radio(
        [ELEVATION_AUTO, ELEVATION_MANUAL],
        value=ELEVATION_AUTO if defaults.elevation_deg is None else ELEVATION_MANUAL,
        label="--elevation",
        info="auto: estimated from the views (score curve below); manual: the slider",
    )
    elevation_deg = gr.Slider(
        *TRAINED_ELEVATION_RANGE_DEG,
        value=core_defaults.INPUT_ELEVATION_DEG,
        step=0.5,
        label="elevation of the photo's camera (degrees)",
        interactive=defaults.elevation_deg is not None,
    )
    steps = gr.Slider(1, 200, value=generation.steps, step=1, label="--steps")
    cfg = gr.Slider(0.0, 10.0, value=generation.cfg, step=0.1, label="--cfg")
    with gr.Row():
        seed = gr.Number(value=generation.seed, precision=0, label="--seed")
        samples = gr.Slider(
            1,
            MAX_SAMPLES_SHOWN,
            value=generation.samples,
            step=1,
            label="--samples",
            info="generate N sets, keep the most consistent",
        )
    with gr.Accordion("Sampler", open=False):
        sampler = gr.Dropdown(list(SAMPLERS), value=generation.sampler, label="--sampler")
        eta = gr.Number(value=generation.eta, label="--eta")
    button = gr.Button("Generate the 16 views", variant="primary", elem_id="generate")
    controls = {"elevation": elevation, "elevation_deg": elevation_deg, "steps": steps, "cfg": cfg}
    return _Step(controls | {"seed": seed, "samples": samples, "sampler": sampler, "eta": eta}, button)


def _generated_views() -> _GeneratedViews:
    with gr.Row():
        gallery = gr.Gallery(
            label="The 16 views", columns=8, height=300, format="png", elem_id="views-gallery"
        )
    with gr.Row():
        grid = gr.Image(label="grid.png", interactive=False, format="png")
        with gr.Column():
            curve = gr.LinePlot(
                x="elevation_deg", y="score", title="Elevation estimate: silhouette score", visible=False
            )
            elevation_info = gr.Markdown()
    return _GeneratedViews(gallery, grid, curve, elevation_info)


def _reconstruction_step(defaults: RunSettings) -> _Step:
    with gr.Row():
        quality = _quality(defaults.recon.quality)
        recon_steps = gr.Number(
            value=_unset(defaults.recon.steps), precision=0, label="--recon-steps", info="0: the preset's"
        )
        faces = gr.Number(value=_unset(defaults.recon.faces), precision=0, label="--faces", info="0: all")
    with gr.Row():
        formats = _extra_formats(defaults.recon, label="--formats")
        preview = gr.Radio(list(PREVIEW_FORMATS), value=defaults.preview.format, label="--preview")
        preview_frames = gr.Number(value=defaults.preview.frames, precision=0, label="--preview-frames")
    button = gr.Button("Reconstruct the mesh", variant="primary", elem_id="reconstruct")
    controls = {"quality": quality, "recon_steps": recon_steps, "faces": faces, "formats": formats}
    return _Step(controls | {"preview": preview, "preview_frames": preview_frames}, button)


def _photo_tab(app: WebApp) -> PhotoTab:
    """The *Photo* tab: upload -> cut-out -> 16 views -> mesh, wired to ``app``."""
    defaults = RunSettings()
    with gr.Tab("Photo → mesh", id="photo"):
        weights_note = gr.Markdown(visible=False, elem_id="weights-note")
        with gr.Row():
            with gr.Column():
                source = _photo_input(defaults)
            with gr.Column():
                generation = _generation_step(defaults)
        views = _generated_views()
        gr.Markdown("### Reconstruction")
        reconstruction = _reconstruction_step(defaults)
        with gr.Row():
            model = gr.Model3D(label="Textured mesh", height=420, elem_id="photo-model")
            video = gr.Video(label="Turntable", autoplay=True, loop=True, height=420)
        files = gr.File(label="Downloads", file_count="multiple", interactive=False)
        summary = gr.Markdown()
        command = _command(run_command(defaults, "photo.png", app.options), "photo-command")
    controls = source.controls | generation.controls | reconstruction.controls
    tab = PhotoTab(
        weights_note,
        source,
        {name: controls[name] for name in _keywords(photo_settings)},
        generation.button,
        views,
        reconstruction.button,
        _MeshOutput(model, video, files, summary, command),
    )
    _wire_cut_out(app, source)
    elevation = generation.controls["elevation"]
    elevation.change(
        _toggle_elevation,
        inputs=elevation,
        outputs=generation.controls["elevation_deg"],
        queue=False,
        api_name="toggle_elevation",
        api_visibility="private",
    )

    def photo_command(values: dict[str, Any]) -> str:
        return run_command(tab.settings(values, app), _upload(values["photo"])[1] or "photo.png", app.options)

    inputs = {"photo": source.photo, **tab.controls}
    _wire_command(
        inputs, tab.controls.values(), photo_command, command, api_name="show_command", preprocess=False
    )
    _wire_photo_steps(app, tab)
    return tab


def _toggle_elevation(mode: str) -> gr.Slider:
    return gr.Slider(interactive=mode == ELEVATION_MANUAL)


def _wire_cut_out(app: WebApp, source: _PhotoInput) -> None:
    def do_cut_out(values, request):
        path, name = _upload(values["photo"])
        if path is None:
            return None, ""
        result = app.cut_out(request.session_hash, path, values["crop_size"], values["background"], name)
        return str(result.image), result.info

    crop_size, background = source.controls["crop_size"], source.controls["background"]
    gr.on(
        [source.photo.change, background.change, crop_size.submit],
        _handler(["photo", "crop_size", "background"], do_cut_out),
        inputs=[source.photo, crop_size, background],
        outputs=[source.cutout, source.cutout_info],
        preprocess=False,
        api_name="cut_out",
    )


def _wire_photo_steps(app: WebApp, tab: PhotoTab) -> None:
    """Generate (photo and every control) and reconstruct (the controls; the views are the session's)."""

    def do_generate(values, request, progress):
        path, name = _upload(values["photo"])
        result = app.generate(request.session_hash, path, tab.settings(values, app), name, report=progress)
        views = [(str(p), caption) for p, caption in result.views]
        return views, str(result.grid), _curve(result.elevation), result.summary, result.command

    tab.generate.click(
        _handler(["photo", *tab.controls], do_generate, progress=True),
        inputs=[tab.input.photo, *tab.controls.values()],
        outputs=[*tab.views.outputs(), tab.mesh.command],
        preprocess=False,
        api_name="generate",
        **GPU_EVENT,
    )

    def do_reconstruct_photo(values, request, progress):
        settings = tab.settings(values, app)
        return tab.mesh.show(app.reconstruct_photo(request.session_hash, settings, report=progress))

    tab.reconstruct.click(
        _handler(list(tab.controls), do_reconstruct_photo, progress=True),
        inputs=list(tab.controls.values()),
        outputs=tab.mesh.outputs(),
        api_name="reconstruct_photo",
        **GPU_EVENT,
    )


# --------------------------------------------------------------------------------------------------
# views tab
# --------------------------------------------------------------------------------------------------
def _views_step(defaults: ReconSettings) -> _Step:
    quality = _quality(defaults.quality)
    with gr.Row():
        steps = gr.Number(
            value=_unset(defaults.steps),
            precision=0,
            label="--steps",
            info="training steps; 0: the preset's",
            elem_id="views-steps",
        )
        seed = gr.Number(value=core_defaults.SEED, precision=0, label="--seed")
        faces = gr.Number(
            value=_unset(defaults.faces), precision=0, label="--faces", info="0: all", elem_id="views-faces"
        )
    formats = _extra_formats(defaults, label="extra formats")
    button = gr.Button("Reconstruct the mesh", variant="primary", elem_id="views-reconstruct")
    return _Step(
        {"quality": quality, "steps": steps, "seed": seed, "faces": faces, "formats": formats}, button
    )


def _views_tab(app: WebApp) -> ViewsTab:
    """The *Views* tab: 16 views (or the strip image) -> mesh, wired to ``app``; needs no weights."""
    defaults = ReconSettings()
    example = example_views_dir()
    with gr.Tab("Views → mesh", id="views"):
        gr.Markdown(
            "Upload the 16 views (`000.png … 015.png`, optionally with `cameras.json`; RGBA or RGB on "
            "white) or the official 16-view strip image. Needs no model weights."
        )
        with gr.Row():
            with gr.Column():
                files = gr.File(
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
                step = _views_step(defaults)
        with gr.Row():
            model = gr.Model3D(label="Textured mesh", height=420, elem_id="views-model")
            with gr.Column():
                downloads = gr.File(
                    label="Downloads", file_count="multiple", interactive=False, elem_id="views-downloads"
                )
                summary = gr.Markdown(elem_id="views-summary")
                command = _command(
                    reconstruct_command(defaults, core_defaults.SEED, app.options), "views-command"
                )
    tab = ViewsTab(files, example_btn, step, _MeshOutput(model, None, downloads, summary, command))
    _wire_views(app, tab)
    return tab


def _wire_views(app: WebApp, tab: ViewsTab) -> None:
    controls = {name: tab.step.controls[name] for name in _keywords(views_settings)}
    _wire_command(
        controls,
        controls.values(),
        lambda values: reconstruct_command(*views_settings(**values), app.options),
        tab.mesh.command,
        api_name="show_views_command",
    )

    def do_reconstruct_views(values, request, progress):
        recon, seed = views_settings(**{k: values[k] for k in controls})
        result = app.reconstruct_views(request.session_hash, values["views"], recon, seed, report=progress)
        return tab.mesh.show(result)

    views_event = dict(
        fn=_handler(["views", *controls], do_reconstruct_views, progress=True),
        inputs=[tab.files, *controls.values()],
        outputs=tab.mesh.outputs(),
        **GPU_EVENT,
    )
    tab.step.button.click(**views_event, api_name="reconstruct_views")

    def load_example(_values, _request):
        return [str(p) for p in example_files()]

    tab.example.click(_handler([], load_example), outputs=tab.files, api_name="example_views").then(
        **views_event, api_visibility="private"
    )


# --------------------------------------------------------------------------------------------------
# the page
# --------------------------------------------------------------------------------------------------
def _wire_command(
    inputs: dict[str, Component],
    triggers: Iterable[Component],
    command_of: Callable[[dict[str, Any]], str],
    output: gr.Code,
    **event: Any,
) -> None:
    """Keep ``output`` showing the command line of the current values of ``inputs`` (refreshed when a
    trigger changes); a value the settings refuse shows as a shell comment with the reason."""

    def show_command(values, _request):
        try:
            return command_of(values)
        except UserError as exc:
            return f"# {exc}"

    gr.on(
        [c.change for c in triggers],
        _handler(list(inputs), show_command, shown=False),
        inputs=list(inputs.values()),
        outputs=output,
        queue=False,
        api_visibility="private",
        **event,
    )


def _weights_note(problem: str | None) -> gr.Markdown:
    """The photo tab's banner: hidden when generation can run, else how to get the weights."""
    if problem is None:
        return gr.Markdown(visible=False)
    return gr.Markdown(
        "**Generation needs the SyncDreamer weights (5.6 GB), which are not installed.** "
        "Get them with `sd3d weights download syncdreamer` and reload this page "
        f"(details: {problem}). The *Views → mesh* tab works without them.",
        visible=True,
    )


def build_demo(app: WebApp) -> gr.Blocks:
    """The page, wired to ``app``'s handlers (launch it with :func:`launch`)."""
    with gr.Blocks(title="sd3d", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        gr.Markdown(
            "# sd3d\nOne photo → 16 multiview-consistent views (SyncDreamer) → textured 3D mesh. "
            "Every control is a command-line option; the page shows the matching `sd3d` command."
        )
        photo = _photo_tab(app)
        _views_tab(app)

        def weights_banner():
            return _weights_note(app.weights_problem())

        def end_session(request: gr.Request):
            app.end_session(request.session_hash)

        demo.load(weights_banner, outputs=photo.weights_note, queue=False, api_visibility="private")
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
