"""``sd3d generate --model zero123``: the 16 target views from Zero123, independently (the SyncDreamer
paper's baseline) or with 3DiM stochastic conditioning, on CPU with a tiny synthetic checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

VIEWS = [f"{i:03d}.png" for i in range(16)]


def _gen(run_cli, cutout_photo, out, ckpt, *extra):
    return run_cli(
        "--quiet",
        "generate",
        cutout_photo,
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
def test_both_samplers_write_the_syncdreamer_layout(run_cli, cutout_photo, zero123_ckpt, tmp_path, sampler):
    out = tmp_path / "views"
    res = _gen(run_cli, cutout_photo, out, zero123_ckpt, "--sampler", sampler, "--seed", "4")
    assert res.code == 0, res
    for name in [*VIEWS, "grid.png", "cameras.json", "transforms.json", "input.png"]:
        assert (out / name).exists(), name
    assert Image.open(out / "007.png").size == (256, 256)
    cams = json.loads((out / "cameras.json").read_text())
    assert cams["input_elevation_deg"] == 20.0 and len(cams["views"]) == 16
    again = tmp_path / "again"
    assert _gen(run_cli, cutout_photo, again, zero123_ckpt, "--sampler", sampler, "--seed", "4").code == 0
    for name in VIEWS:
        assert np.array_equal(np.asarray(Image.open(out / name)), np.asarray(Image.open(again / name))), name
    other = tmp_path / "other"
    assert _gen(run_cli, cutout_photo, other, zero123_ckpt, "--sampler", sampler, "--seed", "5").code == 0
    assert any(
        not np.array_equal(np.asarray(Image.open(out / n)), np.asarray(Image.open(other / n))) for n in VIEWS
    )


def test_syncdreamer_only_samplers_are_refused_for_zero123(run_cli, cutout_photo, zero123_ckpt, tmp_path):
    out = tmp_path / "views"
    res = _gen(run_cli, cutout_photo, out, zero123_ckpt, "--sampler", "dpmpp")
    assert res.code == 2 and res.err.count("\n") == 1 and "Zero123" in res.err and not out.exists()
    res = run_cli("generate", cutout_photo, "-o", out, "--model", "nerf")
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
    run_cli, cutout_photo, zero123_ckpt, tmp_path, args, message
):
    out = tmp_path / "views"
    res = _gen(run_cli, cutout_photo, out, zero123_ckpt, *args)
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1 and message in res.err, res
    assert not out.exists()


def test_eta_and_views_per_call_reach_zero123(run_cli, cutout_photo, zero123_ckpt, tmp_path):
    out = tmp_path / "views"
    res = _gen(run_cli, cutout_photo, out, zero123_ckpt, "--eta", "0", "--batch-view-num", "4", "--seed", "4")
    assert res.code == 0, res
    info = json.loads((out / "cameras.json").read_text())
    text = json.dumps(info)
    assert '"eta": 0.0' in text and '"views_per_call": 4' in text, text[:2000]
