"""``sd3d generate`` end to end on the CPU with a tiny synthetic-weights checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sd3d.core.io import OUTPUT_MARKER
from sd3d.models.configs import tiny_config
from sd3d.models.synthetic import make_synthetic_checkpoint

VIEW_FILES = [f"{i:03d}.png" for i in range(16)]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return make_synthetic_checkpoint(tmp_path_factory.mktemp("weights") / "tiny.ckpt", tiny_config())


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A 300x240 RGBA photo: an orange disc with a blue square on a transparent background."""
    yy, xx = np.mgrid[:240, :300]
    rgba = np.zeros((240, 300, 4), np.uint8)
    disc = (yy - 120) ** 2 + (xx - 150) ** 2 < 90**2
    rgba[disc] = (230, 120, 30, 255)
    rgba[100:140, 130:170] = (40, 60, 200, 255)
    path = tmp_path_factory.mktemp("input") / "photo.png"
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def _generate(run_cli, photo, out, ckpt, *extra):
    return run_cli("--quiet", "generate", photo, "-o", out, "--weights", ckpt, "--steps", "2", *extra)


def _pixels(folder):
    return np.stack([np.asarray(Image.open(folder / f)) for f in VIEW_FILES])


def test_generate_writes_a_views_folder_and_is_deterministic(run_cli, photo, tiny_ckpt, tmp_path):
    out = tmp_path / "views"
    res = _generate(run_cli, photo, out, tiny_ckpt, "--seed", "7", "--elevation", "20")
    assert res.code == 0, res
    assert "wrote 16 views" in res.out
    names = {p.name for p in out.iterdir()}
    assert names == {*VIEW_FILES, "grid.png", "cameras.json", "transforms.json", "input.png", OUTPUT_MARKER}
    for f in VIEW_FILES:
        with Image.open(out / f) as im:
            assert (im.size, im.mode) == ((256, 256), "RGB")
    with Image.open(out / "input.png") as im:
        assert (im.size, im.mode) == ((256, 256), "RGBA")
    with Image.open(out / "grid.png") as im:
        assert im.size == (4 * 256, 4 * 256)
    record = json.loads((out / "cameras.json").read_text())
    assert record["input_elevation_deg"] == 20.0 and record["seed"] == 7
    settings = record["generator"]["settings"]
    assert (settings["steps"], settings["cfg"], settings["sampler"], settings["batch_view_num"]) == (
        2,
        2.0,
        "ddim",
        16,
    )
    assert [v["file"] for v in record["views"]] == VIEW_FILES
    assert len(json.loads((out / "transforms.json").read_text())["frames"]) == 16

    from sd3d.core.io import read_views

    views = read_views(out)  # the reconstruction stage can read it back
    assert views.images.shape == (16, 256, 256, 3) and views.input_elevation_deg == 20.0

    again = tmp_path / "again"
    assert _generate(run_cli, photo, again, tiny_ckpt, "--seed", "7", "--elevation", "20").code == 0
    np.testing.assert_array_equal(_pixels(again), _pixels(out))

    other = tmp_path / "other"
    assert _generate(run_cli, photo, other, tiny_ckpt, "--seed", "8", "--elevation", "20").code == 0
    assert np.abs(_pixels(other).astype(int) - _pixels(out)).mean() > 1.0


def test_several_samples_and_another_sampler(run_cli, photo, tiny_ckpt, tmp_path):
    out = tmp_path / "multi"
    res = _generate(
        run_cli, photo, out, tiny_ckpt, "--samples", "2", "--sampler", "dpmpp", "--batch-view-num", "5"
    )
    assert res.code == 0, res
    assert {p.name for p in out.iterdir()} == {
        "sample-0",
        "sample-1",
        "contact.png",
        "input.png",
        OUTPUT_MARKER,
    }
    with Image.open(out / "contact.png") as im:
        assert im.size == (16 * 256, 2 * 256)
    a, b = _pixels(out / "sample-0"), _pixels(out / "sample-1")
    assert np.abs(a.astype(int) - b).mean() > 1.0  # independent samples
    assert json.loads((out / "sample-1" / "cameras.json").read_text())["sample"] == 1


def test_missing_weights_is_one_line_with_the_download_command(run_cli, photo, tmp_path):
    out = tmp_path / "views"
    res = run_cli("generate", photo, "-o", out, "--weights-dir", tmp_path / "empty")
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and "syncdreamer-pretrain.ckpt" in lines[0]
    assert "sd3d weights download syncdreamer" in lines[0]
    assert not out.exists()
    res = run_cli("generate", photo, "-o", out, "--weights", tmp_path / "nope.ckpt")
    assert res.code == 2 and "nope.ckpt" in res.err and "sd3d weights download syncdreamer" in res.err
    assert not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "abc"], "--steps must be an integer"),
        (["--steps", "3"], "--steps 3 is not usable"),
        (["--steps", "105"], "use 100 or 112, or --ddim-discretize quad (any step count)"),
        (["--cfg", "nan"], "--cfg must be a finite number"),
        (["--elevation", "95"], "--elevation must be between -90 and 90"),
        (["--samples", "0"], "--samples must be between 1 and 64"),
        (["--batch-view-num", "17"], "--batch-view-num must be between 1 and 16"),
        (["--sampler", "euler"], "unknown sampler"),
        (["--ddim-discretize", "cubic"], "unknown DDIM discretization 'cubic'"),
        (["--sampler", "dpmpp", "--ddim-discretize", "quad"], "is a DDIM option"),
        (["--model", "zero123", "--ddim-discretize", "quad"], "SyncDreamer's DDIM option"),
        (["--dtype", "fp8"], "unknown dtype"),
        (["--device", "tpu"], "device"),
        (["--crop-size", "999"], "--crop-size"),
        (["--background", "magic"], "--background"),
    ],
)
def test_bad_options_are_one_line_errors(run_cli, photo, tiny_ckpt, tmp_path, args, message):
    out = tmp_path / "views"
    res = _generate(run_cli, photo, out, tiny_ckpt, *args)
    assert res.code == 2, res
    assert message in res.err and len(res.err.strip().splitlines()) == 1
    assert not out.exists()


def test_bad_input_and_output_paths(run_cli, photo, tiny_ckpt, tmp_path):
    out = tmp_path / "views"
    res = _generate(run_cli, tmp_path / "missing.png", out, tiny_ckpt)
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    assert _generate(run_cli, not_image, out, tiny_ckpt).code == 2
    assert not out.exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    res = _generate(run_cli, photo, a_file, tiny_ckpt)
    assert res.code == 2 and "not a folder" in res.err
