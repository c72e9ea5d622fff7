"""``sd3d novel-view`` with a tiny synthetic checkpoint; user errors are one line, exit 2, no output."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


def _args(cutout_photo, out, ckpt, *extra):
    return [
        "novel-view",
        cutout_photo,
        "-o",
        out,
        "--weights",
        ckpt,
        "--steps",
        "2",
        "--device",
        "cpu",
        *extra,
    ]


def test_one_view(run_cli, cutout_photo, zero123_ckpt, tmp_path):
    out = tmp_path / "views" / "view.png"
    res = run_cli("-q", *_args(cutout_photo, out, zero123_ckpt, "--d-elevation", "10", "--d-azimuth", "-90"))
    assert res.code == 0, res
    with Image.open(out) as im:
        assert im.size == (256, 256) and im.mode == "RGB"
    assert f"wrote {out}" in res.out
    assert "pose T = [-0.1745, -1, 6.123e-17, 0]" in res.out  # up 10 deg = polar -10 deg; left 90 deg


def test_samples_are_numbered_and_reproducible(run_cli, cutout_photo, zero123_ckpt, tmp_path):
    res = run_cli(
        "-q", *_args(cutout_photo, tmp_path / "v.png", zero123_ckpt, "--samples", "2", "--d-azimuth", "45")
    )
    assert res.code == 0, res
    first = [np.asarray(Image.open(tmp_path / f"v-{i}.png")) for i in range(2)]
    assert not (tmp_path / "v.png").exists()
    assert not np.array_equal(first[0], first[1])
    res = run_cli(
        "-q", *_args(cutout_photo, tmp_path / "w.png", zero123_ckpt, "--samples", "2", "--d-azimuth", "45")
    )
    assert res.code == 0, res
    assert all(np.array_equal(first[i], np.asarray(Image.open(tmp_path / f"w-{i}.png"))) for i in range(2))


def test_missing_weights_is_one_line(run_cli, cutout_photo, tmp_path):
    out = tmp_path / "view.png"
    empty = tmp_path / "no-weights"
    empty.mkdir()
    res = run_cli("novel-view", cutout_photo, "-o", out, "--weights-dir", empty, "--device", "cpu")
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and "missing zero123-xl.ckpt" in lines[0]
    assert "sd3d weights download zero123-xl" in lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == [empty]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "3"], "--steps 3 is not possible"),
        (["--samples", "0"], "--samples"),
        (["--cfg", "abc"], "--cfg must be a number"),
        (["--d-elevation", "nan"], "--d-elevation must be a finite number"),
        (["--seed", "-1"], "--seed"),
        (["--background", "magic"], "unknown --background"),
        (["--device", "tpu"], "device"),
    ],
)
def test_bad_options_are_one_line(run_cli, cutout_photo, zero123_ckpt, tmp_path, extra, message):
    out = tmp_path / "view.png"
    res = run_cli(*_args(cutout_photo, out, zero123_ckpt), *extra)
    assert res.code == 2, res
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.err
    assert not out.exists()


def test_bad_files_are_one_line(run_cli, cutout_photo, zero123_ckpt, tmp_path):
    from sd3d.models.configs import tiny_config as syncdreamer_tiny
    from sd3d.models.synthetic import make_synthetic_checkpoint

    cases = [
        (_args(tmp_path / "nope.png", tmp_path / "a.png", zero123_ckpt), "input image not found"),
        (_args(cutout_photo, tmp_path / "a.txt", zero123_ckpt), "must end in one of"),
        (_args(cutout_photo, tmp_path / "a.png", tmp_path / "missing.ckpt"), "checkpoint not found"),
    ]
    sync = make_synthetic_checkpoint(tmp_path / "syncdreamer.ckpt", syncdreamer_tiny())
    cases.append((_args(cutout_photo, tmp_path / "a.png", sync), "not a Zero123 checkpoint"))
    for args, message in cases:
        res = run_cli(*args)
        assert res.code == 2, res
        lines = res.err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], res.err
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "a.txt").exists()
