"""``sd3d batch --engine ray`` on a local two-node Ray cluster (CPU only), with the tiny checkpoint.

One cluster serves the module (2 simulated nodes of 2 CPUs, small object stores). Its worker
processes run ``tests/support/ray_hooks.py``: the object-decoder double (views show an object), a
smaller draft reconstruction preset, and one-shot faults that SIGKILL a worker process in the
middle of a step. S3 is a moto server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from support.photos import object_photo

from sd3d.core.io import OUTPUT_MARKER, mark_output, output_marker
from sd3d.core.progress import Progress
from sd3d.models.configs import tiny_config
from sd3d.models.synthetic import make_synthetic_checkpoint

REPO = Path(__file__).resolve().parents[1]
RESULT_FILES = {"input.png", "views", "mesh.glb", "report.json"}
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# --elevation auto in the first test runs the CPU elevation step (and maybe a regeneration);
# the others give it, to stay quick.
ARGS = ("--steps", "2", "--quality", "draft", "--recon-steps", "10", "--preview", "none", "--faces", "400")
ARGS += ("--engine", "ray")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return make_synthetic_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.ckpt", tiny_config())


@pytest.fixture(scope="module")
def s3_server():
    """A local S3-compatible server (moto) on 127.0.0.1 for the module, or None without moto/s3fs."""
    try:
        import s3fs  # noqa: F401
        from moto.server import ThreadedMotoServer
    except ImportError:
        yield None
        return
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_endpoint(s3_server):
    if s3_server is None:
        pytest.skip("needs moto[server] and s3fs (pip install 'sd3d[cloud]' 'moto[server]')")
    return s3_server


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, s3_server):
    """Two Ray nodes on this machine; the test process is the driver. Yields the faults folder."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    faults = tmp_path_factory.mktemp("faults")
    store = 100 * 2**20
    nodes = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "object_store_memory": store, "include_dashboard": False},
    )
    nodes.add_node(num_cpus=2, object_store_memory=store)
    env = {
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
        "OMP_NUM_THREADS": "1",
        "SD3D_TEST_FAULTS": str(faults),
        **({**AWS_ENV, "AWS_ENDPOINT_URL": s3_server} if s3_server else {}),
    }
    ray.init(
        address=nodes.address,
        runtime_env={"worker_process_setup_hook": "support.ray_hooks.setup", "env_vars": env},
        log_to_driver=False,
    )
    yield faults
    ray.shutdown()
    nodes.shutdown()


def _batch(run_cli, source, out, weights, *extra: str):
    """``sd3d --quiet batch SOURCE -o OUT --engine ray`` with the quick settings."""
    return run_cli("--quiet", "batch", source, "-o", out, "--weights", weights, *ARGS, *extra)


def _items(record: dict) -> dict[str, dict]:
    return {item["image"]: item for item in record["items"]}


def _assert_complete(folder: Path, image: str) -> None:
    assert {p.name for p in folder.iterdir()} >= RESULT_FILES, folder
    assert len(list((folder / "views").glob("[0-9][0-9][0-9].png"))) == 16
    report = json.loads((folder / "report.json").read_text())
    assert Path(report["input"]).name == image
    # a local result is marked as sd3d's, listing exactly what the run wrote
    assert set(report["outputs"]) == {p.name for p in folder.iterdir()} - {OUTPUT_MARKER}
    assert set(output_marker(folder)["files"]) == set(report["outputs"])
    assert report["exports"]["glb"]["faces"] > 0


def test_two_nodes_bad_images_reported_and_rerun_does_nothing(run_cli, cluster, tiny_ckpt, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    # a.png and a.webp share a stem: each gets its own folder, named by the whole file name
    folders = {"a.png": "a.png", "a.webp": "a.webp", "b.png": "b", "c.png": "c"}
    good = [object_photo(photos / n, shift=4 * i) for i, n in enumerate(folders)]
    (photos / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (photos / "notes.jpg").write_text("not a photo")
    (photos / "README.txt").write_text("ignored: not an image suffix")
    out = tmp_path / "out"
    res = _batch(run_cli, photos, out, tiny_ckpt, "--workers", "2")
    assert res.code == 1, res
    first = json.loads((out / "batch.json").read_text())
    items = _items(first)
    assert first["engine"] == "ray" and len(first["items"]) == 6
    assert {n: i["status"] for n, i in items.items()} == {
        **{p.name: "done" for p in good},
        "corrupt.png": "failed",
        "notes.jpg": "failed",
    }
    assert "corrupt.png is truncated or corrupt" in items["corrupt.png"]["error"]
    assert "notes.jpg is not an image" in items["notes.jpg"]["error"]
    assert {items[n]["error_kind"] for n in ("corrupt.png", "notes.jpg")} == {"input"}
    # one complete folder per good image and nothing else (no temporary folders)
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "a.png", "a.webp", "b", "batch.json", "c"]
    assert output_marker(out)["files"] == ["batch.json"]
    for p in good:
        _assert_complete(out / folders[p.name], p.name)
        assert items[p.name]["out_dir"] == str(out / folders[p.name])
    report = json.loads((out / "a.png" / "report.json").read_text())
    assert report["elevation"]["source"] == "estimated" and "elevation" in report["stage_seconds"]
    assert "4 done, 0 up to date, 2 failed" in res.out

    stamps = {f: (out / f / "report.json").stat().st_mtime_ns for f in folders.values()}
    res = _batch(run_cli, photos, out, tiny_ckpt, "--workers", "2")
    assert res.code == 1, res
    again = _items(json.loads((out / "batch.json").read_text()))
    assert {n: again[n]["status"] for n in again} == {
        **{p.name: "skipped" for p in good},
        "corrupt.png": "failed",
        "notes.jpg": "failed",
    }
    # the bad images were not tried again: their records are carried over as they were
    assert again["corrupt.png"] == items["corrupt.png"] and again["notes.jpg"] == items["notes.jpg"]
    assert {f: (out / f / "report.json").stat().st_mtime_ns for f in folders.values()} == stamps
    assert "0 done, 4 up to date, 2 failed" in res.out


def test_a_result_folder_of_the_users_is_refused_before_any_work(tmp_path):
    """A folder sd3d did not write where an image's result would go fails that image at once
    (kind 'output', so the next run checks again), and none of its files is touched; with nothing
    left to do, Ray is not even started."""
    from sd3d.workflows.batch_ray import run_batch_ray
    from sd3d.workflows.run import PreviewSettings, RunSettings

    photos = tmp_path / "photos"
    photos.mkdir()
    object_photo(photos / "a.png")
    mine = tmp_path / "out" / "a"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("mine")
    mark_output(tmp_path / "out", ["batch.json"], "batch")  # an earlier batch's folder; "a" is the user's
    settings = RunSettings(elevation_deg=30, preview=PreviewSettings("none"))
    (item,) = run_batch_ray(photos, tmp_path / "out", settings, weights=tmp_path / "no.ckpt")
    assert (item.status, item.error_kind) == ("failed", "output")
    assert "already holds files sd3d did not write (notes.txt)" in item.error and "--overwrite" in item.error
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    assert (mine / "notes.txt").read_text() == "mine"


def test_killed_workers_are_retried_without_duplicates(run_cli, cluster, tiny_ckpt, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    good = [object_photo(photos / f"{n}.png", shift=5 * i) for i, n in enumerate("xy")]
    # The first GPU worker call to reach reconstruction and the first export task (after it wrote
    # the input and the views into its temporary folder) are SIGKILLed.
    steps = ("reconstruct", "export")
    for step in steps:
        (cluster / f"kill-{step}").write_text("")
    out = tmp_path / "out"
    try:
        res = _batch(run_cli, photos, out, tiny_ckpt, "--workers", "1", "--elevation", "30")
    finally:
        for step in steps:  # never leave a fault armed for the next test
            (cluster / f"kill-{step}").unlink(missing_ok=True)
    assert res.code == 0, res
    for step in ("reconstruct", "export"):
        assert (cluster / f"killed-{step}").is_file(), f"no worker was killed in {step}"
        assert not (cluster / f"kill-{step}").exists()
    items = json.loads((out / "batch.json").read_text())["items"]
    assert [(i["image"], i["status"]) for i in items] == [(p.name, "done") for p in good]
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "batch.json", "x", "y"]
    for p in good:
        _assert_complete(out / p.stem, p.name)


class _CtrlCAfterFirstImage(Progress):
    """Silent progress that raises KeyboardInterrupt in the driver when the first image is finished,
    as Ctrl-C at that moment would."""

    def __init__(self) -> None:
        super().__init__(enabled=False)

    @contextmanager
    def task(self, description: str, total: int | None):
        def advance(n: int = 1, info: str | None = None) -> None:
            if n > 0:
                raise KeyboardInterrupt

        yield advance


def test_ctrl_c_leaves_a_resumable_state(run_cli, cluster, tiny_ckpt, tmp_path):
    from recon.presets import ReconSettings
    from sd3d.pipelines.syncdreamer import GenerationSettings
    from sd3d.workflows.batch_ray import RayOptions, run_batch_ray
    from sd3d.workflows.run import PreviewSettings, RunSettings

    photos = tmp_path / "photos"
    photos.mkdir()
    good = [object_photo(photos / f"{n}.png", shift=6 * i) for i, n in enumerate("mn")]
    out = tmp_path / "out"
    settings = RunSettings(
        generation=GenerationSettings(steps=2),
        recon=ReconSettings(quality="draft", steps=10, faces=400),
        preview=PreviewSettings("none"),
        elevation_deg=30,
    )
    with pytest.raises(KeyboardInterrupt):
        run_batch_ray(
            photos, out, settings, RayOptions(workers=1), weights=tiny_ckpt, progress=_CtrlCAfterFirstImage()
        )
    items = _items(json.loads((out / "batch.json").read_text()))
    assert sorted(i["status"] for i in items.values()) == ["done", "interrupted"]
    finished = next(n for n, i in items.items() if i["status"] == "done")
    _assert_complete(out / Path(finished).stem, finished)

    res = _batch(run_cli, photos, out, tiny_ckpt, "--workers", "1", "--elevation", "30")
    assert res.code == 0 and "1 done, 1 up to date, 0 failed" in res.out, res
    assert sorted(p.name for p in out.iterdir()) == [
        OUTPUT_MARKER,
        "batch.json",
        "m",
        "n",
    ]  # no temporary folders
    for p in good:
        _assert_complete(out / p.stem, p.name)


def test_s3_input_and_output(run_cli, cluster, s3_endpoint, tiny_ckpt, tmp_path, monkeypatch):
    import s3fs

    for key, value in {**AWS_ENV, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(key, value)
    fs = s3fs.S3FileSystem()
    fs.mkdir("bucket")
    local = tmp_path / "photos"
    local.mkdir()
    object_photo(local / "p.png")
    object_photo(local / "q.png", shift=8)
    (local / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    for path in local.iterdir():
        fs.put_file(str(path), f"bucket/photos/{path.name}")
    # what an upload killed half-way leaves: files without the report.json marker
    fs.pipe_file("bucket/out/q/views/000.png", b"stale")
    fs.pipe_file("bucket/out/q/stale.txt", b"stale")
    args = ("s3://bucket/photos", "s3://bucket/out", tiny_ckpt, "--workers", "1", "--elevation", "30")
    res = _batch(run_cli, *args)
    assert res.code == 1, res
    fs.invalidate_cache()
    record = json.loads(fs.cat_file("bucket/out/batch.json"))
    items = _items(record)
    assert {n: i["status"] for n, i in items.items()} == {
        "p.png": "done",
        "q.png": "done",
        "corrupt.png": "failed",
    }
    assert items["corrupt.png"]["error"].startswith("s3://bucket/photos/corrupt.png is truncated or corrupt")
    assert items["p.png"]["out_dir"] == "s3://bucket/out/p"
    assert sorted(fs.ls("bucket/out")) == ["bucket/out/batch.json", "bucket/out/p", "bucket/out/q"]
    for stem in ("p", "q"):
        names = {Path(f).relative_to(f"bucket/out/{stem}").as_posix() for f in fs.find(f"bucket/out/{stem}")}
        report = json.loads(fs.cat_file(f"bucket/out/{stem}/report.json"))
        assert {n.split("/")[0] for n in names} == set(report["outputs"]) >= RESULT_FILES
        assert sum(n.startswith("views/0") and n.endswith(".png") for n in names) == 16
        assert report["input"] == f"s3://bucket/photos/{stem}.png"
    assert fs.cat_file("bucket/out/q/views/000.png") != b"stale"  # the stale files are gone

    stamps = {stem: fs.info(f"bucket/out/{stem}/report.json")["LastModified"] for stem in ("p", "q")}
    res = _batch(run_cli, *args)
    assert res.code == 1 and "0 done, 2 up to date, 1 failed" in res.out, res
    fs.invalidate_cache()
    assert {stem: fs.info(f"bucket/out/{stem}/report.json")["LastModified"] for stem in ("p", "q")} == stamps


def test_without_ray_one_line_says_how_to_install(run_cli, tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    object_photo(photos / "a.png")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    res = run_cli("batch", photos, "-o", tmp_path / "out", "--engine", "ray")
    assert res.code == 2 and res.err.count("\n") == 1, res
    assert "pip install 'sd3d[ray]'" in res.err
    assert not (tmp_path / "out").exists()


def test_engine_options_are_checked(run_cli, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    res = run_cli("batch", photos, "-o", tmp_path / "out", "--workers", "2")
    assert res.code == 2 and "--workers needs --engine ray" in res.err
    res = run_cli("batch", "s3://bucket/photos", "-o", tmp_path / "out")
    assert res.code == 2 and "URLs need --engine ray" in res.err
    res = run_cli("batch", photos, "-o", tmp_path / "out", "--engine", "spark")
    assert res.code == 2 and "--engine must be local or ray" in res.err


def test_import_and_help_do_not_import_ray():
    code = (
        "import sys, contextlib, io\n"
        "import sd3d, sd3d.workflows.run, sd3d.workflows.storage\n"
        "from cli.app import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['batch', '--help']) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'fsspec', 's3fs')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
