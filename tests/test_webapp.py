"""``sd3d serve``: the web app's API driven with ``gradio_client`` against the app launched in-process
on 127.0.0.1, its handlers, and the command's start-up checks.

The photo tab runs the tiny synthetic checkpoint with the object-decoder double (as the ``sd3d run``
tests do), so it checks plumbing and every output's content, not quality.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the web app needs the app extra: pip install 'sd3d[app]'")
gradio_client = pytest.importorskip("gradio_client")

from support import object_decoder  # noqa: E402
from support.webapp import served  # noqa: E402

from recon.presets import ReconSettings  # noqa: E402
from sd3d import DEFAULT_SEED  # noqa: E402
from sd3d.core.io import VIEW_FILES  # noqa: E402
from sd3d.models.configs import tiny_config  # noqa: E402
from sd3d.models.synthetic import make_synthetic_checkpoint  # noqa: E402
from sd3d.webapp.handlers import (  # noqa: E402
    RUN_OPTIONS,
    ReportingProgress,
    ServeOptions,
    WebApp,
    example_files,
    photo_settings,
    reconstruct_command,
    run_command,
    views_settings,
)
from sd3d.workflows.run import RunSettings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# Fast reconstruction on CPU: the draft preset, few steps, a small mesh to unwrap.
VIEWS_FAST = {
    "quality": "draft",
    "steps": 20,
    "seed": DEFAULT_SEED,
    "faces": 3000,
}  # the seed at its default: left out of the command


def _client(url: str, tmp_path: Path):
    return gradio_client.Client(
        url, verbose=False, analytics_enabled=False, download_files=str(tmp_path / "downloads")
    )


@pytest.fixture(scope="module")
def no_weights(tmp_path_factory):
    """The app as on a machine without the SyncDreamer weights."""
    empty = tmp_path_factory.mktemp("no-weights")
    with served(WebApp(ServeOptions(device="cpu", weights_dir=empty))) as s:
        yield s


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The app with a tiny synthetic SyncDreamer checkpoint."""
    ckpt = make_synthetic_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.ckpt", tiny_config())
    with served(WebApp(ServeOptions(device="cpu", weights=ckpt))) as s:
        yield s


@pytest.fixture
def object_views():
    object_decoder.install()
    yield
    object_decoder.uninstall()


def _api_defaults(client, endpoint: str) -> dict:
    info = client.view_api(return_format="dict", print_info=False)["named_endpoints"][endpoint]
    return {p["parameter_name"]: p["parameter_default"] for p in info["parameters"]}


# --------------------------------------------------------------------------------------------------
# views tab
# --------------------------------------------------------------------------------------------------
def test_views_example_gives_a_glb(no_weights, tmp_path):
    import trimesh

    client = _client(no_weights.url, tmp_path)
    glb, downloads, summary, command = client.predict(
        views=[gradio_client.handle_file(str(p)) for p in example_files()],
        formats=["obj"],
        **VIEWS_FAST,
        api_name="/reconstruct_views",
    )
    mesh = trimesh.load(glb, force="mesh")
    assert len(mesh.faces) > 0 and np.isfinite(mesh.vertices).all()
    assert len(mesh.faces) <= VIEWS_FAST["faces"]
    assert [Path(d).name for d in downloads] == ["mesh.glb", "mesh-obj.zip"]
    with zipfile.ZipFile(downloads[1]) as zf:
        names = set(zf.namelist())
    assert {"mesh.obj", "mesh.mtl"} <= names and any(n.endswith(".png") for n in names)
    assert "textured" in summary and "draft (20 steps)" in summary
    assert command.splitlines() == [
        "sd3d reconstruct views/ -o mesh.glb --quality draft --steps 20 --faces 3000 --device cpu",
        "sd3d reconstruct views/ -o mesh.obj --quality draft --steps 20 --faces 3000 --device cpu",
    ]
    # the session's files exist until the session ends
    session_dir = no_weights.app.session_dir(client.session_hash)
    assert any(session_dir.glob("mesh-*/mesh.glb"))
    no_weights.app.end_session(client.session_hash)
    assert not session_dir.exists()


def test_views_corrupt_upload_is_one_clear_line(no_weights, tmp_path):
    files = [tmp_path / f for f in VIEW_FILES]
    for i, f in enumerate(files):
        Image.fromarray(np.full((64, 64, 3), 255 - i, np.uint8)).save(f)
    files[3].write_bytes(b"this is not a png")
    client = _client(no_weights.url, tmp_path)
    with pytest.raises(gradio_client.exceptions.AppError) as err:
        client.predict(
            views=[gradio_client.handle_file(str(f)) for f in files],
            **VIEWS_FAST,
            api_name="/reconstruct_views",
        )
    message = str(err.value)
    assert message == "003.png is not an image (format not recognised)", message


def test_page_defaults_are_the_library_defaults(no_weights, tmp_path):
    """Every control starts at the library's default, so an untouched page runs what the CLI runs."""
    client = _client(no_weights.url, tmp_path)
    options = no_weights.app.options
    photo = _api_defaults(client, "/generate")
    photo.pop("photo")
    assert photo_settings(**photo, options=options) == RunSettings(device="cpu").check()
    views = _api_defaults(client, "/reconstruct_views")
    views.pop("views")
    assert views_settings(**views) == (ReconSettings(), DEFAULT_SEED)


# (endpoint, values, the message's start): each refused by the settings dataclass named. /generate
# takes the values as sent, without Gradio's own checks of choices and ranges.
IMPOSSIBLE = [
    ("/reconstruct_photo", {"recon_steps": -5}, "--recon-steps must be >= 1, got -5"),  # ReconSettings
    ("/generate", {"formats": ["fbx"]}, "unknown mesh format 'fbx': choose from glb, obj, ply"),
    ("/generate", {"quality": "ultra"}, "unknown quality 'ultra': use auto, draft, standard, high"),
    ("/reconstruct_photo", {"preview_frames": 0}, "preview frames and fps must be >= 1"),  # PreviewSettings
    ("/reconstruct_photo", {"crop_size": 300}, "--crop-size must be between 1 and 256, or -1"),  # RunSettings
    ("/generate", {"cfg": -1}, "--cfg must be a finite number >= 0, got -1.0"),  # GenerationSettings
    ("/reconstruct_views", {"faces": 2}, "--faces must be at least 4, got 2"),  # ReconSettings
    ("/reconstruct_views", {"steps": -3}, "--steps must be at least 1, got -3"),  # the tab's own option
    ("/reconstruct_views", {"seed": -1}, "--seed must be at least 0, got -1"),  # no dataclass holds it
]


@pytest.mark.parametrize(("endpoint", "values", "expect"), IMPOSSIBLE)
def test_impossible_settings_are_the_libraries_one_line_errors(
    no_weights, tmp_path, endpoint, values, expect
):
    """The settings dataclasses judge the values (before any work) and their message reaches the page."""
    client = _client(no_weights.url, tmp_path)
    upload = {"/reconstruct_views": {"views": None}, "/generate": {"photo": None}}.get(endpoint, {})
    with pytest.raises(gradio_client.exceptions.AppError) as err:
        client.predict(**upload, **values, api_name=endpoint)
    assert str(err.value).startswith(expect) and "\n" not in str(err.value), err.value


def test_views_formats_are_normalised_with_the_glb_first():
    recon, seed = views_settings(
        quality=" Draft ", steps=0, seed="7", faces=None, formats=["PLY", "obj", "obj"]
    )
    assert recon == ReconSettings("draft", None, None, ("glb", "obj", "ply")) and seed == 7
    command = reconstruct_command(recon, seed, ServeOptions(device="cpu"), "strip.png")
    assert command.splitlines() == [
        f"sd3d reconstruct strip.png -o mesh.{fmt} --quality draft --seed 7 --device cpu"
        for fmt in ("glb", "obj", "ply")
    ]


def test_generate_without_weights_says_how_to_get_them(no_weights, cutout_photo, tmp_path):
    assert "sd3d weights download syncdreamer" in no_weights.app.weights_problem()
    client = _client(no_weights.url, tmp_path)
    with pytest.raises(gradio_client.exceptions.AppError) as err:
        client.predict(
            photo=gradio_client.handle_file(str(cutout_photo)),
            recon_steps=None,
            faces=None,
            api_name="/generate",
        )
    assert "get it with: sd3d weights download syncdreamer" in str(err.value)
    assert not any(no_weights.app.session_dir(client.session_hash).glob("views-*"))


def test_gpu_events_share_one_queue_slot(no_weights):
    fns = {fn.api_name: fn for fn in no_weights.demo.fns.values() if fn.api_name}
    heavy = [fns[name] for name in ("generate", "reconstruct_photo", "reconstruct_views")]
    assert len({fn.concurrency_id for fn in heavy}) == 1
    assert all(fn.concurrency_limit == 1 for fn in heavy)


# --------------------------------------------------------------------------------------------------
# photo tab
# --------------------------------------------------------------------------------------------------
def test_photo_cut_out_and_corrupt_upload(tiny, cutout_photo, tmp_path):
    client = _client(tiny.url, tmp_path)
    image, info = client.predict(
        photo=gradio_client.handle_file(str(cutout_photo)),
        crop_size=150,
        background="auto",
        api_name="/cut_out",
    )
    with Image.open(image) as im:
        assert im.mode == "RGBA" and im.size == (256, 256)
        alpha = np.asarray(im.getchannel("A")) > 0
    ys, xs = np.nonzero(alpha)
    assert max(xs.max() - xs.min(), ys.max() - ys.min()) + 1 in (149, 150)  # the object scaled to 150 px
    assert info.startswith("background: alpha") and "crop size 150" in info

    bad = tmp_path / "holiday.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(gradio_client.exceptions.AppError) as err:
        client.predict(photo=gradio_client.handle_file(str(bad)), api_name="/cut_out")
    message = str(err.value)
    assert message.startswith("holiday.png is truncated or corrupt") and "\n" not in message, message


def test_photo_generate_then_reconstruct(tiny, cutout_photo, object_views, tmp_path):
    import imageio_ffmpeg
    import trimesh

    client = _client(tiny.url, tmp_path)
    with pytest.raises(gradio_client.exceptions.AppError, match="generate the views first"):
        client.predict(api_name="/reconstruct_photo", recon_steps=None, faces=None)
    controls = dict(
        elevation="auto",
        steps=2,
        seed=3,
        quality="draft",
        recon_steps=30,
        faces=2000,
        formats=["ply"],
        preview_frames=6,
    )
    gallery, grid, curve, elevation_info, command = client.predict(
        photo=gradio_client.handle_file(str(cutout_photo)), **controls, api_name="/generate"
    )
    assert len(gallery) == 16 and gallery[4]["caption"] == "004 · azimuth 90°"
    with Image.open(gallery[0]["image"]) as im:
        assert im.size == (256, 256)
    with Image.open(grid) as im:
        assert im.size == (4 * 256, 4 * 256)
    assert elevation_info.startswith("elevation ") and "estimated" in elevation_info
    expected = (
        "sd3d run object.png -o out/ --steps 2 --seed 3 --quality draft --recon-steps 30 --faces 2000 "
        f"--formats ply --preview-frames 6 --device cpu --weights {tiny.app.options.weights}"
    )
    assert command == expected

    glb, video, downloads, summary, command = client.predict(**controls, api_name="/reconstruct_photo")
    assert command == expected
    mesh = trimesh.load(glb, force="mesh")
    assert len(mesh.faces) > 0 and np.isfinite(mesh.vertices).all()
    reader = imageio_ffmpeg.read_frames(video)
    next(reader)
    assert sum(1 for _ in reader) == 6
    by_name = {Path(d).name: Path(d) for d in downloads}
    assert set(by_name) == {"mesh.glb", "mesh.ply", "views.zip", "report.json", "preview.mp4"}
    assert len(trimesh.load(by_name["mesh.ply"], force="mesh").faces) > 0
    with zipfile.ZipFile(by_name["views.zip"]) as zf:
        assert {f"views/{f}" for f in VIEW_FILES} | {"views/grid.png", "views/cameras.json"} <= set(
            zf.namelist()
        )

    report = json.loads(by_name["report.json"].read_text())
    assert report["input"] == "object.png" and report["seed"] == 3
    assert report["settings"]["generation"]["steps"] == 2 and report["settings"]["recon"]["steps"] == 30
    assert report["elevation"]["source"] == "estimated"
    assert {"background_note", "warnings"} <= set(report["preprocess"])  # the CLI's report, field for field
    for stage in ("preprocess", "load_model", "generate", "elevation", "reconstruct", "export", "preview"):
        assert report["stage_seconds"][stage] >= 0.0
    # the curve the page plotted is the report's
    assert curve["visible"] is True and curve["value"]["columns"] == ["elevation_deg", "score"]
    plotted = [tuple(row) for row in curve["value"]["data"]]
    recorded = [
        (p["elevation_deg"], p["score"]) for p in report["elevation"]["curve"] if np.isfinite(p["score"])
    ]
    assert len(plotted) == len(recorded) >= 9
    np.testing.assert_allclose(
        np.array(plotted), np.array(recorded), rtol=0, atol=1e-9
    )  # JSON keeps 10 decimals
    assert summary.startswith(f"{report['exports']['glb']['faces']} faces")


# --------------------------------------------------------------------------------------------------
# handlers and mapping (no server)
# --------------------------------------------------------------------------------------------------
def test_every_control_is_a_run_option_with_the_same_default():
    import typer

    from cli.app import app
    from cli.run import STAGE_OPTIONS, _settings

    run = typer.main.get_command(app).commands["run"]
    stage_names = {p.name for p in STAGE_OPTIONS}
    flags = {opt for param in run.params if param.name in stage_names for opt in param.opts}
    assert set(RUN_OPTIONS.values()) <= flags
    cli_defaults = _settings(**{p.name: p.default for p in STAGE_OPTIONS})  # the options' own defaults
    assert cli_defaults == RunSettings().check()
    assert run_command(RunSettings().check(), "photo.png", ServeOptions()) == "sd3d run photo.png -o out/"


def test_views_controls_are_reconstruct_options_with_the_same_defaults():
    import inspect

    from cli.reconstruct import reconstruct

    cli = {name: p.default for name, p in inspect.signature(reconstruct).parameters.items()}
    defaults = ReconSettings()
    assert cli["quality"] == defaults.quality
    assert cli["steps"] is None and defaults.steps is None
    assert int(cli["seed"]) == DEFAULT_SEED
    assert cli["faces"] is None and defaults.faces is None
    assert (
        reconstruct_command(defaults, DEFAULT_SEED, ServeOptions()) == "sd3d reconstruct views/ -o mesh.glb"
    )


def test_upload_of_views_in_any_names_or_as_a_strip(tmp_path):
    app = WebApp(ServeOptions(work_dir=tmp_path / "work"))
    try:
        session = app.session("s")
        named = []
        for i in range(16):
            f = tmp_path / f"shot-{chr(ord('a') + i)}.jpg"
            Image.fromarray(np.full((32, 32, 3), 10 * i, np.uint8)).save(f, quality=100)
            named.append(f)
        folder = app._views_source(session, list(reversed(named)))
        assert sorted(p.name for p in folder.iterdir()) == VIEW_FILES
        assert np.asarray(Image.open(folder / "005.png"))[0, 0, 0] in range(48, 53)  # shot-f (jpeg-rounded)

        strip = tmp_path / "strip.png"
        Image.fromarray(np.zeros((32, 32 * 16, 4), np.uint8)).save(strip)
        assert app._views_source(session, [str(strip)]).name == "strip.png"

        from sd3d.core.errors import ViewsFolderError

        with pytest.raises(ViewsFolderError, match="got 15 image"):
            app._views_source(session, named[:15])
        with pytest.raises(ViewsFolderError, match="notes.txt is neither"):
            app._views_source(session, [*named, tmp_path / "notes.txt"])
        with pytest.raises(ViewsFolderError, match="must be named 000.png"):
            app._views_source(session, [*named, tmp_path / "cameras.json"])
    finally:
        app.close()
    assert (tmp_path / "work").is_dir() and not any((tmp_path / "work").iterdir())


def test_idle_sessions_are_dropped_with_their_files(tmp_path):
    app = WebApp(ServeOptions(work_dir=tmp_path, session_idle_s=0.0))
    first = app.session("first").dir
    assert first.is_dir()
    second = app.session("second").dir  # the first has been idle for longer than 0 s
    assert not first.exists() and second.is_dir()
    own = WebApp()
    own.session("x")
    own.close()
    assert not own.work_dir.exists()


def test_reporting_progress_reports_each_step():
    seen = []
    progress = ReportingProgress(lambda fraction, desc: seen.append((fraction, desc)))
    for _ in progress.track(range(4), "sampling"):
        pass
    assert [f for f, _ in seen] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert seen[-1][1] == "sampling 4/4"


# --------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (("--port", "70000"), "--port must be between 1 and 65535"),
        (("--port", "web"), "--port must be an integer"),
        (("--device", "tpu"), "unknown device 'tpu'"),
        (("--max-pixels", "0"), "--max-pixels must be positive"),
    ],
)
def test_serve_refuses_bad_options(run_cli, args, expect):
    res = run_cli("serve", *args)
    assert res.code == 2 and res.err.count("\n") == 1 and expect in res.err, res


def test_serve_warns_on_a_network_bind_and_refuses_a_busy_port(run_cli):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        res = run_cli("serve", "--host", "0.0.0.0", "--port", str(port))
    lines = res.err.strip().splitlines()
    assert res.code == 2 and len(lines) == 2, res
    assert lines[0].startswith("warning: serving on 0.0.0.0: anyone who can reach this machine")
    assert (
        lines[1] == f"error: cannot listen on 0.0.0.0:{port}: the port is in use (choose another with --port)"
    )


def test_serve_without_gradio_names_the_extra():
    code = "import sys; sys.modules['gradio'] = None; from cli.app import main; sys.exit(main(['serve']))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 2
    assert out.stderr == "error: the web app needs Gradio: pip install 'sd3d[app]'\n"


def test_help_does_not_import_the_app():
    code = (
        "import sys; from cli.app import main; main(['--help']); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('gradio', 'gradio_client') "
        "or m.startswith('sd3d.webapp')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60, check=True
    )
    assert "serve" in out.stdout and out.stdout.strip().splitlines()[-1] == "[]"
