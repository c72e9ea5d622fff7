"""A user's files are never lost, bad input is refused before the work, every user-caused failure is
one ``error:`` line with exit 2, and an interrupted command (Ctrl-C or SIGTERM) leaves nothing.

Output folders (``generate``, ``render``, ``run``) carry a marker; a folder sd3d did not write is
refused (or, with ``--overwrite``, added to without replacing any of its files). Texture and
material files next to an ``.obj`` never replace a file sd3d did not write.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from support.photos import FAST

from sd3d.core.errors import OutputPathError, UserError, ViewsFolderError
from sd3d.core.io import OUTPUT_MARKER, atomic_dir, check_output_dir, output_marker, read_views, write_error
from sd3d.models.configs import tiny_config
from sd3d.models.synthetic import make_synthetic_checkpoint

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "spot"


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return make_synthetic_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.ckpt", tiny_config())


def _photo(path: Path) -> Path:
    rgba = np.zeros((96, 128, 4), np.uint8)
    rgba[20:80, 30:100] = (40, 160, 220, 255)
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _temporaries(folder: Path) -> list[str]:
    """Hidden temporary entries sd3d makes while writing (``.NAME.*.part``, ``.sd3d-*``)."""
    return sorted(
        p.name
        for p in folder.rglob(".*")
        if p.name != OUTPUT_MARKER and (".part" in p.name or p.name.startswith(".sd3d-"))
    )


def _one_error_line(res, *expect: str) -> str:
    assert res.code == 2, res
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res
    for text in expect:
        assert text in lines[0], res
    return lines[0]


def _box_mesh(path: Path) -> Path:
    import trimesh

    box = trimesh.creation.box((0.6, 0.4, 0.5))
    box.visual.vertex_colors = np.tile([200, 80, 40, 255], (len(box.vertices), 1)).astype(np.uint8)
    box.export(path)
    return path


# --------------------------------------------------------------------------------------------------
# output folders: a folder sd3d did not write is never emptied, a file it did not write never replaced
# --------------------------------------------------------------------------------------------------
def test_generate_into_the_photos_folder_is_refused_before_any_work(run_cli, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(photos / "x.png")
    (photos / "notes.txt").write_text("mine")
    before = _snapshot(photos)
    # No weights: had the output not been checked first, the error would be about the weights.
    res = run_cli("generate", photos / "x.png", "-o", photos, "--weights-dir", tmp_path / "empty")
    _one_error_line(res, f"output folder {photos} already holds files sd3d did not write", "--overwrite")
    assert _snapshot(photos) == before and _temporaries(tmp_path) == []
    res = run_cli("run", photos / "x.png", "-o", photos, "--weights-dir", tmp_path / "empty")
    _one_error_line(res, "already holds files sd3d did not write")
    assert _snapshot(photos) == before


def test_dot_output_is_refused_in_a_non_empty_current_folder(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _photo(tmp_path / "x.png")
    mesh = _box_mesh(tmp_path / "box.ply")
    before = _snapshot(tmp_path)
    res = run_cli("generate", "x.png", "-o", ".", "--weights-dir", "empty")
    _one_error_line(res, "output folder . already holds files sd3d did not write")
    res = run_cli("render", mesh, "-o", ".", "--size", "16")
    _one_error_line(res, "output folder . already holds files sd3d did not write")
    assert _snapshot(tmp_path) == before and _temporaries(tmp_path) == []


def test_own_folder_is_reused_stale_outputs_replaced_user_files_kept(tmp_path):
    out = tmp_path / "views"
    with atomic_dir(out, command="generate") as tmp:
        (tmp / "sample-0").mkdir()
        (tmp / "contact.png").write_bytes(b"first")
    assert output_marker(out)["files"] == ["contact.png", "sample-0"]
    (out / "notes.txt").write_text("the user's")
    with atomic_dir(out, command="generate") as tmp:  # a folder sd3d wrote needs no --overwrite
        (tmp / "000.png").write_bytes(b"second")
    assert sorted(p.name for p in out.iterdir()) == sorted(["000.png", OUTPUT_MARKER, "notes.txt"])
    assert (out / "notes.txt").read_text() == "the user's"
    assert output_marker(out)["files"] == ["000.png"] and output_marker(out)["command"] == "generate"
    assert _temporaries(tmp_path) == []


def test_overwrite_adds_to_a_foreign_folder_but_never_replaces_its_files(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "input.png").write_bytes(b"the user's photo")
    with pytest.raises(OutputPathError, match="already holds files sd3d did not write"):
        check_output_dir(folder)
    # the planned names are checked before any work ...
    with pytest.raises(OutputPathError, match=r"input.png exists and was not written by sd3d"):
        check_output_dir(folder, overwrite=True, planned=["000.png", "input.png"])
    # ... and again when the results move in
    clash = pytest.raises(OutputPathError, match=r"input.png exists and was not written by sd3d")
    with clash, atomic_dir(folder, overwrite=True) as tmp:
        (tmp / "000.png").write_bytes(b"view")
        (tmp / "input.png").write_bytes(b"prepared")
    assert sorted(p.name for p in folder.iterdir()) == ["input.png"]
    assert (folder / "input.png").read_bytes() == b"the user's photo"
    with atomic_dir(folder, overwrite=True, command="render") as tmp:
        (tmp / "000.png").write_bytes(b"view")
    assert (folder / "000.png").read_bytes() == b"view"
    assert (folder / "input.png").read_bytes() == b"the user's photo"
    assert output_marker(folder)["files"] == ["000.png"]


def test_failure_inside_an_own_folder_changes_nothing(tmp_path):
    out = tmp_path / "views"
    with atomic_dir(out) as tmp:
        (tmp / "000.png").write_bytes(b"first")
    before = _snapshot(out)
    with pytest.raises(KeyboardInterrupt), atomic_dir(out) as tmp:
        (tmp / "000.png").write_bytes(b"second")
        raise KeyboardInterrupt
    assert _snapshot(out) == before and _temporaries(tmp_path) == []


def test_a_failed_rename_while_moving_in_puts_everything_back(tmp_path, monkeypatch):
    out = tmp_path / "views"
    with atomic_dir(out) as tmp:
        (tmp / "000.png").write_bytes(b"first")
        (tmp / "grid.png").write_bytes(b"first grid")
    (out / "notes.txt").write_text("the user's")
    before = _snapshot(out)
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == out / "grid.png" and Path(src).parent.name.endswith(".part"):  # the new one
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match=os.strerror(errno.EIO)), atomic_dir(out) as tmp:
        (tmp / "000.png").write_bytes(b"second")
        (tmp / "grid.png").write_bytes(b"second grid")
    monkeypatch.setattr(os, "replace", real_replace)
    assert {k: v for k, v in _snapshot(out).items() if k != OUTPUT_MARKER} == {
        k: v for k, v in before.items() if k != OUTPUT_MARKER
    }
    assert set(output_marker(out)["files"]) >= {"000.png", "grid.png"} and _temporaries(tmp_path) == []


def test_render_refuses_a_foreign_folder_and_replaces_its_own(run_cli, tmp_path):
    mesh = _box_mesh(tmp_path / "box.ply")
    out = tmp_path / "turn"
    args = ("--size", "16", "--supersample", "1", "--azimuths", "0,90", "--device", "cpu")
    assert run_cli("--quiet", "render", mesh, "-o", out, *args).code == 0
    assert set(output_marker(out)["files"]) == {
        "000.png",
        "001.png",
        "grid.png",
        "cameras.json",
        "transforms.json",
    }
    res = run_cli(
        "--quiet", "render", mesh, "-o", out, "--size", "16", "--supersample", "1", "--azimuths", "45"
    )
    assert res.code == 0, res
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".png") == [
        "000.png",
        "grid.png",
    ]  # no stale 001
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "000.png").write_bytes(b"user")
    _one_error_line(run_cli("render", mesh, "-o", foreign, *args), "already holds files sd3d did not write")
    res = run_cli("render", mesh, "-o", foreign, *args, "--overwrite")
    _one_error_line(res, f"{foreign / '000.png'} exists and was not written by sd3d")
    assert (foreign / "000.png").read_bytes() == b"user" and _temporaries(tmp_path) == []


# --------------------------------------------------------------------------------------------------
# .obj sidecars: NAME.mtl and NAME_texture.png, never a user's file
# --------------------------------------------------------------------------------------------------
def _quad():
    v = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float64)
    f = np.array([[0, 1, 2], [0, 2, 3]], np.int64)
    uv = v[:, :2].astype(np.float32)
    tex = np.zeros((8, 8, 3), np.uint8)
    tex[..., 0] = 255
    return v, f, uv, tex


def test_obj_texture_never_replaces_the_photo_beside_it(tmp_path):
    from recon.export import check_output_path, write_mesh

    photo = _photo(tmp_path / "cow.png")
    before = photo.read_bytes()
    v, f, uv, tex = _quad()
    paths = write_mesh(tmp_path / "cow.obj", v, f, uvs=uv, texture=tex)
    assert sorted(p.name for p in paths) == ["cow.mtl", "cow.obj", "cow_texture.png"]
    assert photo.read_bytes() == before
    assert "map_Kd cow_texture.png" in (tmp_path / "cow.mtl").read_text()
    write_mesh(tmp_path / "cow.obj", v, f, uvs=uv, texture=tex)  # its own sidecars are replaced
    (tmp_path / "cow_texture.png").unlink()
    Image.new("RGB", (4, 4)).save(tmp_path / "cow_texture.png")  # now the user's
    with pytest.raises(OutputPathError, match="cow_texture.png exists and was not written by sd3d"):
        check_output_path(tmp_path / "cow.obj")
    (tmp_path / "cow_texture.png").unlink()
    (tmp_path / "cow.mtl").write_text("newmtl mine\n")
    with pytest.raises(OutputPathError, match="cow.mtl exists and was not written by sd3d"):
        write_mesh(tmp_path / "cow.obj", v, f, uvs=uv, texture=tex)
    assert (tmp_path / "cow.mtl").read_text() == "newmtl mine\n"


def test_reconstruct_refuses_a_texture_name_clash_before_reading_views(run_cli, tmp_path):
    views = tmp_path / "views"
    shutil.copytree(EXAMPLE, views, ignore=shutil.ignore_patterns("*.md", "LICENSE"))
    Image.new("RGB", (4, 4)).save(views / "000_texture.png")
    before = _snapshot(views)
    res = run_cli("reconstruct", tmp_path / "no-views", "-o", views / "000.obj")
    _one_error_line(res, "000_texture.png exists and was not written by sd3d")
    assert _snapshot(views) == before


# --------------------------------------------------------------------------------------------------
# refuse before the work
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (("--quality", "ultra"), "unknown quality 'ultra'"),
        (("--recon-steps", "0"), "--recon-steps must be >= 1"),
        (("--sampler", "euler"), "unknown sampler 'euler'"),
        (("--device", "tpu"), "device 'tpu'"),
        (("--faces", "1"), "--faces must be at least 4"),
        (("--crop-size", "999"), "--crop-size must be between"),
        (("--background", "magic"), "unknown --background 'magic'"),
        (("--dtype", "fp8"), "unknown dtype 'fp8'"),
    ],
)
@pytest.mark.parametrize("command", ["run", "batch"])
def test_run_and_batch_options_are_checked_before_anything(run_cli, tmp_path, command, args, expect):
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = _photo(photos / "x.png")
    source = photo if command == "run" else photos
    out = tmp_path / "out"
    # no weights: an option checked after the weights would report them instead
    res = run_cli(command, source, "-o", out, "--weights-dir", tmp_path / "empty", *args)
    _one_error_line(res, expect)
    assert not out.exists()


def test_python_api_fails_early_too(tmp_path):
    from recon.presets import ReconSettings
    from sd3d.workflows.run import RunSettings, run_photo

    with pytest.raises(UserError, match="unknown quality 'ultra'"):
        RunSettings(recon=ReconSettings(quality="ultra"))
    with pytest.raises(UserError, match="--faces must be at least 4"):
        RunSettings(recon=ReconSettings(faces=1))
    with pytest.raises(UserError, match="device 'tpu'"):  # before the (missing) photo is even read
        run_photo(tmp_path / "missing.png", tmp_path / "out", RunSettings(device="tpu"))
    assert list(tmp_path.iterdir()) == []


def test_reconstruct_checks_its_output_location_before_reading_views(run_cli, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    res = run_cli("reconstruct", tmp_path / "no-views", "-o", tmp_path / "file" / "mesh.glb")
    _one_error_line(res, "is not a writable folder")
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    res = run_cli("reconstruct", tmp_path / "no-views", "-o", locked / "mesh.glb")
    _one_error_line(res, f"cannot write {locked / 'mesh.glb'}: {locked} is not a writable folder")


# --------------------------------------------------------------------------------------------------
# one line for every user-caused failure
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES])
def test_write_errors_map_to_one_line(code):
    err = write_error(OSError(code, os.strerror(code)), "out/views")
    assert isinstance(err, OutputPathError) and str(err) == f"cannot write out/views: {os.strerror(code)}"


def test_other_os_errors_stay_bugs():
    assert write_error(OSError(errno.EINVAL, "bad"), "x") is None
    assert write_error(ValueError("x"), "x") is None


@pytest.fixture
def disk_full(monkeypatch):
    """Every image written to a file fails as on a full disk (in-memory saves still work)."""
    real_save = Image.Image.save

    def save(self, fp, *args, **kwargs):
        if isinstance(fp, (str, os.PathLike)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)


def test_full_disk_is_one_line_and_leaves_nothing(run_cli, tiny_ckpt, tmp_path, disk_full, object_views):
    photo = tmp_path / "in" / "photo.png"
    photo.parent.mkdir()
    np.save(tmp_path / "in" / "unused.npy", np.zeros(1))  # keep the folder non-trivial
    shutil.copy(REPO / "examples" / "spot" / "000.png", photo)  # read only: saving is what fails
    mesh = _box_mesh(tmp_path / "in" / "box.ply")
    work = tmp_path / "work"
    work.mkdir()
    full = os.strerror(errno.ENOSPC)
    res = run_cli("preprocess", photo, "-o", work / "input.png")
    _one_error_line(res, f"cannot write {work / 'input.png'}: {full}")
    res = run_cli("--quiet", "generate", photo, "-o", work / "views", "--weights", tiny_ckpt, "--steps", "2")
    _one_error_line(res, f"cannot write {work / 'views'}: {full}")
    res = run_cli("--quiet", "render", mesh, "-o", work / "turn", "--size", "16", "--supersample", "1")
    _one_error_line(res, f"cannot write {work / 'turn'}: {full}")
    # the run writes its folder last, so it trains first: the shortest training that runs (FAST)
    res = run_cli(
        "--quiet", "run", photo, "-o", work / "out", "--weights", tiny_ckpt, *FAST, "--elevation", "30"
    )
    _one_error_line(res, f"cannot write {work / 'out'}: {full}")
    assert list(work.iterdir()) == []


def test_really_full_disk_in_preprocess(tmp_path):
    """The same on a real 16 KiB tmpfs (needs a user namespace to mount it; skipped elsewhere)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    mnt = tmp_path / "small"
    mnt.mkdir()
    photo = REPO / "examples" / "spot" / "000.png"
    script = (
        f"mount -t tmpfs -o size=16k tmpfs {mnt} || exit 77; "
        f"{sys.executable} -m cli preprocess {photo} -o {mnt}/input.png; echo rc=$?; ls -A {mnt}"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env)
    if proc.returncode == 77 or "rc=" not in proc.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[:200]}")
    assert proc.stderr.strip() == f"error: cannot write {mnt}/input.png: {os.strerror(errno.ENOSPC)}"
    assert proc.stdout.strip().splitlines() == ["rc=2"]  # and nothing left on the tmpfs


def test_full_disk_while_ffmpeg_writes_the_preview(tmp_path, monkeypatch):
    import imageio_ffmpeg

    from sd3d.workflows import run as runner

    def broken_writer(*args, **kwargs):
        yield
        raise OSError("[Errno 32] Broken pipe")

    monkeypatch.setattr(imageio_ffmpeg, "write_frames", broken_writer)
    frames = [np.zeros((16, 16, 3), np.uint8)] * 2
    Usage = type("Usage", (), {"free": 0})
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage)
    with pytest.raises(OutputPathError, match="preview.mp4: No space left on device"):
        runner._write_mp4(tmp_path / "preview.mp4", frames, 24, 16)
    Usage.free = 10**12  # room left: then it is not the user's disk, and the error stays a bug
    with pytest.raises(OSError, match="Broken pipe"):
        runner._write_mp4(tmp_path / "preview.mp4", frames, 24, 16)


def _cameras(views: Path) -> dict:
    return json.loads((views / "cameras.json").read_text())


@pytest.mark.parametrize(
    ("break_it", "expect"),
    [
        (
            lambda rec: rec["views"][3].update(w2c=[[1, 0, 0], [0, 1, 0], [0, 0, 1]]),
            "w2c of 003.png must be 3x4",
        ),
        (lambda rec: rec["views"][5]["w2c"][1].__setitem__(2, float("nan")), "w2c of 005.png holds NaN"),
        (lambda rec: rec["views"][0].update(K=[[1, 0], [0, 1]]), "K of 000.png must be 3x3"),
        (
            lambda rec: rec["views"][7]["w2c"][0].__setitem__(0, 3.0),
            "w2c of 007.png does not hold a rotation",
        ),
        (lambda rec: rec["views"][2].update(w2c="identity"), "w2c of 002.png"),
        (lambda rec: rec["views"][9].pop("w2c"), "no 'w2c' entry"),
    ],
)
def test_broken_cameras_json_is_refused_when_read(run_cli, tmp_path, break_it, expect):
    views = tmp_path / "views"
    shutil.copytree(EXAMPLE, views, ignore=shutil.ignore_patterns("*.md", "LICENSE"))
    rec = _cameras(views)
    break_it(rec)
    (views / "cameras.json").write_text(json.dumps(rec))  # NaN is written as the literal NaN
    with pytest.raises(ViewsFolderError, match="cameras.json is not a valid cameras file"):
        read_views(views)
    res = run_cli("reconstruct", views, "-o", tmp_path / "mesh.glb", "--quality", "draft")
    _one_error_line(res, expect)
    assert not (tmp_path / "mesh.glb").exists()


def test_a_4x4_pose_with_a_homogeneous_row_is_accepted(tmp_path):
    views = tmp_path / "views"
    shutil.copytree(EXAMPLE, views, ignore=shutil.ignore_patterns("*.md", "LICENSE"))
    rec = _cameras(views)
    rec["views"][4]["w2c"] = [*rec["views"][4]["w2c"], [0, 0, 0, 1]]
    (views / "cameras.json").write_text(json.dumps(rec))
    np.testing.assert_array_equal(read_views(views).cameras[4].w2c, read_views(EXAMPLE).cameras[4].w2c)


def test_corrupt_background_model_is_one_line_with_the_fix(run_cli, tmp_path):
    from sd3d.background import rembg_u2netp

    if not rembg_u2netp.rembg_installed():  # not importorskip: importing rembg here would bypass the
        pytest.skip("rembg/onnxruntime not installed")  # backend's guard of torch's thread count
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "u2netp.onnx").write_bytes(b"\x08\x07not a protobuf" * 64)
    photo = tmp_path / "photo.jpg"
    _photo(photo.with_suffix(".png"))
    Image.open(photo.with_suffix(".png")).convert("RGB").save(photo)
    res = run_cli(
        "preprocess", photo, "-o", tmp_path / "in.png", "--background", "rembg", "--weights-dir", weights
    )
    _one_error_line(
        res,
        f"rembg model {weights / 'u2netp.onnx'} cannot be loaded",
        "scripts/fetch_u2netp.py --dest",
        "make install",
    )


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (("run", "--foo"), "No such option: --foo"),
        (("run",), "Missing argument"),
        (("render", "m.obj"), "Missing option '--output'"),
        (("reconstruct", "v", "-o", "m.glb", "--quality"), "Option '--quality' requires an argument"),
        (("nosuch",), "No such command 'nosuch'"),
    ],
)
def test_usage_errors_are_one_line_with_a_help_hint(run_cli, args, expect):
    line = _one_error_line(run_cli(*args), expect)
    command = "sd3d" if args[0] == "nosuch" else f"sd3d {args[0]}"
    assert line.endswith(f"(see '{command} --help')")


def test_a_bad_option_value_is_one_line_naming_the_option_and_its_range(run_cli):
    # option values are parsed by the options' own parsers: a UserError like any other, no usage screen
    _one_error_line(run_cli("render", "--size", "0", "m.obj", "-o", "x"), "--size must be between 8 and 4096")


# --------------------------------------------------------------------------------------------------
# SIGTERM cleans up like Ctrl-C
# --------------------------------------------------------------------------------------------------
def test_sigterm_during_uv_unwrapping_removes_the_exchange_folder(tmp_path, monkeypatch):
    import tempfile

    from cli.app import Terminated, _sigterm_as_interrupt
    from recon.texture import unwrap_uv

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    seen = []

    def child_starting(cmd, **kwargs):
        seen.extend(p.name for p in tmp_path.iterdir())
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this returns
        raise AssertionError("SIGTERM did not interrupt")

    monkeypatch.setattr(subprocess, "Popen", child_starting)
    v, f, _, _ = _quad()
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Terminated), _sigterm_as_interrupt():
        unwrap_uv(v, f, 64)
    assert seen and seen[0].startswith("sd3d-uv-")
    assert list(tmp_path.iterdir()) == [] and signal.getsignal(signal.SIGTERM) == previous


def test_sigterm_during_a_run_leaves_nothing(tiny_ckpt, tmp_path):
    import threading

    photo = _photo(tmp_path / "photo.png")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)}
    # the sd3d command with views that show an object, so the run gets past generation
    cmd = [sys.executable, str(REPO / "tests" / "support" / "object_decoder.py")]
    cmd += ["run", str(photo), "-o", str(tmp_path / "out")]
    cmd += ["--weights", str(tiny_ckpt), "--steps", "2", "--elevation", "30", "--quality", "draft"]
    cmd += ["--recon-steps", "100000", "--preview", "none"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 300
        # the stage printer says "done generate" when the reconstruction starts
        while not any(line.startswith("done generate") for line in list(lines)):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "the run never reached its reconstruction"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines)
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "terminated", err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png", "tmp"]
    assert list(scratch.iterdir()) == []
