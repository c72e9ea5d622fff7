"""``sd3d run`` / ``sd3d batch`` / ``make batch`` end to end on CPU with a tiny synthetic checkpoint.

The tiny model's views are not an object (synthetic weights), so these tests check the plumbing and
every output's content (mesh loads, video has frames, report filled), not the quality.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.photos import FAST
from support.photos import object_photo as _photo

from sd3d.core.io import OUTPUT_MARKER, output_marker
from sd3d.models.configs import tiny_config
from sd3d.models.synthetic import make_synthetic_checkpoint

# decoded views show an object on white (tests/support/object_decoder.py)
pytestmark = pytest.mark.usefixtures("object_views")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return make_synthetic_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.ckpt", tiny_config())


def _jpeg(path: Path) -> Path:
    """The same object as :func:`_photo`, on white, as a JPEG (no alpha: the background is found)."""
    rgba = np.asarray(Image.open(_photo(path.with_suffix(".tmp.png")))).astype(np.float32) / 255.0
    rgb = rgba[..., :3] * rgba[..., 3:] + (1.0 - rgba[..., 3:])
    Image.fromarray(np.rint(rgb * 255).astype(np.uint8)).save(path, quality=95)
    path.with_suffix(".tmp.png").unlink()
    return path


def test_run_writes_every_output(run_cli, tiny_ckpt, tmp_path):
    import imageio_ffmpeg
    import trimesh

    photo = _photo(tmp_path / "photo.png")
    out = tmp_path / "out"
    res = run_cli(
        "--quiet",
        "run",
        photo,
        "-o",
        out,
        "--weights",
        tiny_ckpt,
        *FAST,
        "--formats",
        "obj,ply",
        "--seed",
        "3",
    )
    assert res.code == 0, res
    names = {p.name for p in out.iterdir()}
    assert {"input.png", "views", "mesh.glb", "mesh.obj", "mesh.ply", "preview.mp4", "report.json"} <= names
    assert json.loads((out / "report.json").read_text())["exports"]["obj"]["textured"]
    assert {"mesh.mtl", "mesh_texture.png"} <= names and "mesh.png" not in names
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".out")], "temporary folder left behind"

    assert Image.open(out / "input.png").mode == "RGBA" and Image.open(out / "input.png").size == (256, 256)
    assert len(list((out / "views").glob("[0-9][0-9][0-9].png"))) == 16
    mesh = trimesh.load(out / "mesh.glb", force="mesh")
    assert len(mesh.faces) > 0 and np.isfinite(mesh.vertices).all()
    assert len(trimesh.load(out / "mesh.ply", force="mesh").faces) > 0
    reader = imageio_ffmpeg.read_frames(str(out / "preview.mp4"))
    meta = next(reader)
    frames = sum(1 for _ in reader)
    assert frames == 6 and tuple(meta["size"]) == (256, 256)

    report = json.loads((out / "report.json").read_text())
    assert report["seed"] == 3
    assert report["elevation"]["source"] == "estimated"
    assert -10.0 <= report["elevation"]["elevation_deg"] <= 40.0 and report["elevation"]["curve"]
    for stage in ("preprocess", "generate", "elevation", "reconstruct", "export", "preview"):
        assert report["stage_seconds"][stage] >= 0.0
    assert report["versions"]["torch"] and report["device"] == "cpu"
    assert report["peak_gpu_memory_bytes"] is None
    assert report["reconstruction"]["cuda_graphs"] == 0  # graphs are for CUDA devices only
    assert report["reconstruction"]["kernel_warmup"] is None  # the Triton hash grid is CUDA's
    phases = report["reconstruction"]["train_phases"]
    assert set(phases) == {"setup", "prefit", "loop", "finish"} and phases["loop"] > 0
    assert set(report["exports"]) == {"glb", "obj", "ply"}
    assert set(report["outputs"]) == names - {OUTPUT_MARKER}
    assert output_marker(out)["command"] == "run" and set(output_marker(out)["files"]) == names - {
        OUTPUT_MARKER
    }


def test_run_given_elevation_samples_and_gif(run_cli, tiny_ckpt, tmp_path, monkeypatch):
    """Also: the reconstruction's kernel warm-up is started once, after the model loads and before
    the generation, and the report carries what it did (here a stand-in: the real one is CUDA's)."""
    import sd3d.workflows.run as workflow
    from sd3d.core.triton_precompile import KernelWarmUp

    started = []

    def stand_in(settings, device):
        started.append(str(device))
        return KernelWarmUp(lambda: {"variants": 20, "compiled": 20, "failed": [], "workers": 2})

    monkeypatch.setattr(workflow, "start_recon_warmup", stand_in)
    photo = _photo(tmp_path / "photo.png")
    out = tmp_path / "out"
    res = run_cli(
        "--quiet",
        "run",
        photo,
        "-o",
        out,
        "--weights",
        tiny_ckpt,
        *FAST,
        "--elevation",
        "20",
        "--samples",
        "2",
        "--preview",
        "gif",
    )
    assert res.code == 0, res
    report = json.loads((out / "report.json").read_text())
    assert started == ["cpu"]
    warm = report["reconstruction"]["kernel_warmup"]
    assert warm["compiled"] == 20 and warm["workers"] == 2 and warm["seconds"] >= 0
    assert report["elevation"] == {"source": "given", "elevation_deg": 20.0}
    assert report["samples"]["count"] == 2 and len(report["samples"]["consistency_scores"]) == 2
    chosen = report["samples"]["chosen"]
    assert chosen == int(np.argmax(report["samples"]["consistency_scores"]))
    gif = Image.open(out / "preview.gif")
    assert gif.n_frames == 6

    # views/ is the kept sample itself (what `sd3d reconstruct` reads); the other one sits beside it
    other = 1 - chosen
    assert json.loads((out / "views" / "cameras.json").read_text())["sample"] == chosen
    assert (out / "views" / f"sample-{other}" / "015.png").exists()
    assert not (out / "views" / f"sample-{chosen}").exists()
    assert report["samples"]["folders"][chosen] == "views"
    assert report["samples"]["folders"][other] == f"views/sample-{other}"
    kept = np.asarray(Image.open(out / "views" / "003.png"))
    sheet = np.asarray(Image.open(out / "views" / "contact.png"))
    np.testing.assert_array_equal(sheet[chosen * 256 : (chosen + 1) * 256, 3 * 256 : 4 * 256], kept)
    mesh = tmp_path / "again.ply"
    res = run_cli("-q", "reconstruct", out / "views", "-o", mesh, "--quality", "draft", "--steps", "30")
    assert res.code == 0 and mesh.exists(), res
    pre = report["preprocess"]
    assert pre["background"] == "alpha" and pre["background_note"] == "auto: the image has an alpha channel"
    assert pre["warnings"] == []


def test_run_without_weights_fails_before_any_work(run_cli, tmp_path):
    photo = _photo(tmp_path / "photo.png")
    out = tmp_path / "out"
    res = run_cli("run", photo, "-o", out, "--weights-dir", tmp_path / "empty")
    assert res.code == 2
    assert res.err.count("\n") == 1 and "sd3d weights download syncdreamer" in res.err
    assert not out.exists()


def test_run_bad_input_leaves_nothing(run_cli, tiny_ckpt, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    out = tmp_path / "out"
    res = run_cli("run", bad, "-o", out, "--weights", tiny_ckpt, *FAST)
    assert res.code == 2 and res.err.count("\n") == 1 and not out.exists()
    res = run_cli("run", _photo(tmp_path / "p.png"), "-o", out, "--weights", tiny_ckpt, "--formats", "fbx")
    assert res.code == 2 and "fbx" in res.err and not out.exists()


def test_python_batch_resumes_and_records_failures(run_cli, tiny_ckpt, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "a.png")
    _jpeg(photos / "a.jpg")  # the same stem: each gets its own folder, named by the whole file name
    (photos / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    res = run_cli(
        "--quiet",
        "batch",
        photos,
        "-o",
        out,
        "--weights",
        tiny_ckpt,
        *FAST,
        "--preview",
        "none",
        "--elevation",
        "30",
    )
    assert res.code == 1, res
    status = {i["image"]: i["status"] for i in json.loads((out / "batch.json").read_text())["items"]}
    assert status == {"a.jpg": "done", "a.png": "done", "corrupt.png": "failed"}
    for name in ("a.jpg", "a.png"):
        assert Path(json.loads((out / name / "report.json").read_text())["input"]).name == name
        assert (out / name / "mesh.glb").exists()
    assert not (out / "a").exists() and not (out / "corrupt").exists()
    stamp = (out / "a.png" / "report.json").stat().st_mtime
    res = run_cli(
        "--quiet",
        "batch",
        photos,
        "-o",
        out,
        "--weights",
        tiny_ckpt,
        *FAST,
        "--preview",
        "none",
        "--elevation",
        "30",
    )
    status = {i["image"]: i["status"] for i in json.loads((out / "batch.json").read_text())["items"]}
    assert status == {"a.jpg": "skipped", "a.png": "skipped", "corrupt.png": "failed"}
    assert (out / "a.png" / "report.json").stat().st_mtime == stamp


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_batch_two_succeed_one_corrupt(tiny_ckpt, tmp_path):
    repo = Path(__file__).resolve().parents[1]
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "a.png")
    _jpeg(photos / "a.jpg")
    (photos / "corrupt.png").write_bytes(b"")
    out = tmp_path / "out"
    sd3d = f"{sys.executable} {repo / 'tests' / 'support' / 'object_decoder.py'}"
    args = f"--weights {tiny_ckpt} {' '.join(FAST)} --preview none --elevation 30"
    cmd = [
        "make",
        "-s",
        "-C",
        str(repo),
        "batch",
        f"IN={photos}",
        f"OUT={out}",
        "JOBS=2",
        f"SD3D={sd3d}",
        f"ARGS={args}",
        f"PYTHON={sys.executable}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert first.returncode != 0, first.stdout + first.stderr
    assert "batch summary: 2 ok, 1 failed, 0 not run, of 3 images" in first.stdout
    assert "overriding recipe" not in first.stderr
    for name in ("a.jpg", "a.png"):  # one folder each, made from that very image
        assert Path(json.loads((out / name / "report.json").read_text())["input"]).name == name
    assert not (out / "a").exists()
    assert (out / "logs" / "corrupt.failed").exists() and (out / "logs" / "corrupt.log").read_text().strip()
    stamps = {n: (out / n / "report.json").stat().st_mtime for n in ("a.jpg", "a.png")}
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode != 0 and "[batch] " + str(photos / "a.png") not in second.stdout
    assert {n: (out / n / "report.json").stat().st_mtime for n in ("a.jpg", "a.png")} == stamps
    assert "batch summary: 2 ok, 1 failed, 0 not run, of 3 images" in second.stdout


def test_batch_output_names_keep_distinct_inputs_apart():
    from sd3d.workflows.run import batch_output_names

    names = [
        "A.webp",
        "a.jpg",
        "a.png",
        "b.png",
        "c.png",
        "c.png.jpg",
        "d.png",
        "d.png.jpg",
        "d.jpg",
        "logs.png",
    ]
    assert batch_output_names([Path("in") / n for n in names]) == [
        "A.webp",
        "a.jpg",
        "a.png",
        "b",
        "c",
        "c.png",
        "d.png",
        "d.png~2",
        "d.jpg",
        "logs.png",
    ]


def test_batch_goes_on_after_any_error_and_stops_with_a_summary_when_all_are_doomed(
    run_cli, tiny_ckpt, tmp_path, monkeypatch
):
    from sd3d.core.errors import WeightsError
    from sd3d.workflows import run as runner

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a", "b", "c", "d", "e"):
        _photo(photos / f"{name}.png")

    def fake_run(image, target, settings, **kwargs):
        if image.name == "b.png":
            raise RuntimeError("an unexpected bug")
        if image.name == "d.png":
            raise WeightsError("rembg model weights/u2netp.onnx cannot be loaded")
        target.mkdir(parents=True)
        (target / "report.json").write_text("{}")

    monkeypatch.setattr(runner, "run_photo", fake_run)
    out = tmp_path / "out"
    res = run_cli("--quiet", "batch", photos, "-o", out, "--weights", tiny_ckpt, "--elevation", "30")
    assert res.code == 2, res
    assert res.err.strip().splitlines()[-1] == (
        "error: rembg model weights/u2netp.onnx cannot be loaded (batch stopped)"
    )
    assert "2 done, 0 up to date, 2 failed, 1 not run" in res.out  # the summary is printed
    items = {i["image"]: i for i in json.loads((out / "batch.json").read_text())["items"]}
    assert {k: v["status"] for k, v in items.items()} == {
        "a.png": "done",
        "b.png": "failed",
        "c.png": "done",
        "d.png": "failed",
        "e.png": "not run",
    }
    assert items["b.png"]["error"] == "RuntimeError: an unexpected bug"
    assert "Traceback" in items["b.png"]["detail"] and items["d.png"]["detail"] is None


def test_batch_whose_model_cannot_load_stops_at_once_with_a_summary(run_cli, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "a.png")
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(b"not a checkpoint" * 100)
    out = tmp_path / "out"
    res = run_cli("--quiet", "batch", photos, "-o", out, "--weights", broken)
    assert res.code == 2 and res.err.strip().splitlines()[-1].startswith("error: "), res
    assert "0 done, 0 up to date, 0 failed, 1 not run" in res.out
    items = json.loads((out / "batch.json").read_text())["items"]
    assert [(i["image"], i["status"]) for i in items] == [("a.png", "not run")]
    assert not (out / "a").exists()
