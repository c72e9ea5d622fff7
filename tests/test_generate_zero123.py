"""``sd3d generate --model zero123``: the 16 target views from Zero123, independently (the SyncDreamer
paper's baseline) or with 3DiM stochastic conditioning, on CPU with a tiny synthetic checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sd3d.models.zero123 import tiny_config, write_synthetic_checkpoint

VIEWS = [f"{i:03d}.png" for i in range(16)]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return write_synthetic_checkpoint(tmp_path_factory.mktemp("w") / "tiny-zero123.ckpt", tiny_config())


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    rgba = np.zeros((96, 128, 4), np.uint8)
    rgba[20:80, 30:100] = (40, 160, 220, 255)
    rgba[40:60, 50:70, :3] = (250, 30, 30)
    path = tmp_path_factory.mktemp("in") / "object.png"
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def _gen(run_cli, photo, out, ckpt, *extra):
    return run_cli(
        "--quiet",
        "generate",
        photo,
        "-o",
        out,
        "--model",
        "zero123",
        "--weights",
        ckpt,
        "--steps",
        "2",
        "--elevation",
        "20",
        *extra,
    )


@pytest.mark.parametrize("sampler", ["independent", "stochastic-conditioning"])
def test_both_samplers_write_the_syncdreamer_layout(run_cli, photo, tiny_ckpt, tmp_path, sampler):
    out = tmp_path / "views"
    res = _gen(run_cli, photo, out, tiny_ckpt, "--sampler", sampler, "--seed", "4")
    assert res.code == 0, res
    for name in [*VIEWS, "grid.png", "cameras.json", "transforms.json", "input.png"]:
        assert (out / name).exists(), name
    assert Image.open(out / "007.png").size == (256, 256)
    cams = json.loads((out / "cameras.json").read_text())
    assert cams["input_elevation_deg"] == 20.0 and len(cams["views"]) == 16
    again = tmp_path / "again"
    assert _gen(run_cli, photo, again, tiny_ckpt, "--sampler", sampler, "--seed", "4").code == 0
    for name in VIEWS:
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(Image.open(again / name))), name
    other = tmp_path / "other"
    assert _gen(run_cli, photo, other, tiny_ckpt, "--sampler", sampler, "--seed", "5").code == 0
    assert any(
        not np.array_equal(np.asarray(Image.open(out / n)), np.asarray(Image.open(other / n))) for n in VIEWS
    )


def test_syncdreamer_only_samplers_are_refused_for_zero123(run_cli, photo, tiny_ckpt, tmp_path):
    out = tmp_path / "views"
    res = _gen(run_cli, photo, out, tiny_ckpt, "--sampler", "dpmpp")
    assert res.code == 2 and res.err.count("\n") == 1 and "Zero123" in res.err and not out.exists()
    res = run_cli("generate", photo, "-o", out, "--model", "nerf")
    assert res.code == 2 and "--model" in res.err and not out.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--crop-size", "180"], "--crop-size"),
        (["--compile"], "--compile"),
        (["--batch-view-num", "0"], "--batch-view-num"),
        (["--eta", "2"], "eta"),
    ],
)
def test_syncdreamer_only_or_bad_options_are_refused_not_ignored(
    run_cli, photo, tiny_ckpt, tmp_path, args, message
):
    out = tmp_path / "views"
    res = _gen(run_cli, photo, out, tiny_ckpt, *args)
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1 and message in res.err, res
    assert not out.exists()


def test_eta_and_views_per_call_reach_zero123(run_cli, photo, tiny_ckpt, tmp_path):
    out = tmp_path / "views"
    res = _gen(run_cli, photo, out, tiny_ckpt, "--eta", "0", "--batch-view-num", "4", "--seed", "4")
    assert res.code == 0, res
    info = json.loads((out / "cameras.json").read_text())
    text = json.dumps(info)
    assert '"eta": 0.0' in text and '"views_per_call": 4' in text, text[:2000]
