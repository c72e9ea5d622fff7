"""``sd3d eval nvs``: per-view PSNR/SSIM against ground truth, on white, as the official eval_nvs."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image


def _copy_views(src, dst):
    dst.mkdir()
    for i in range(16):
        shutil.copy(src / f"{i:03d}.png", dst / f"{i:03d}.png")
    return dst


def test_identical_views_score_perfectly(run_cli, shared_dir, tmp_path):
    gt = shared_dir / "data" / "objects" / "duck" / "views"
    res = run_cli("eval", "nvs", gt, gt, "--json")
    assert res.code == 0, res
    out = json.loads(res.out)
    assert math.isinf(out["mean_psnr"]) and out["mean_ssim"] == pytest.approx(1.0, abs=1e-12)
    assert out["mean_lpips"] is None and "LPIPS" in out["lpips_note"]


def test_psnr_matches_its_definition_on_white(run_cli, shared_dir, tmp_path):
    gt = shared_dir / "data" / "objects" / "spot" / "views"
    pred = tmp_path / "pred"
    pred.mkdir()
    rng = np.random.default_rng(0)
    expected = []
    for i in range(16):
        rgba = np.asarray(Image.open(gt / f"{i:03d}.png")).astype(np.float64) / 255.0
        on_white = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
        noisy = np.clip(np.rint((on_white + rng.normal(0, 0.02 * (1 + i / 8), on_white.shape)) * 255), 0, 255)
        Image.fromarray(noisy.astype(np.uint8), "RGB").save(pred / f"{i:03d}.png")
        gt_u8 = np.asarray(Image.open(gt / f"{i:03d}.png")).astype(np.float32) / 255.0
        gt_white = gt_u8[..., :3] * gt_u8[..., 3:] + (1 - gt_u8[..., 3:])
        mse = np.mean((noisy / 255.0 - gt_white) ** 2)
        expected.append(10 * np.log10(1 / mse))
    res = run_cli("eval", "nvs", pred, gt, "--json")
    assert res.code == 0, res
    out = json.loads(res.out)
    got = [v["psnr"] for v in out["per_view"]]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got[0] > got[15]  # more noise, lower PSNR
    assert 0.0 < out["mean_ssim"] < 1.0
    table = run_cli("eval", "nvs", pred, gt)
    assert table.code == 0 and "mean" in table.out


def test_mismatched_folders_are_one_line_errors(run_cli, shared_dir, tmp_path):
    gt = shared_dir / "data" / "objects" / "spot" / "views"
    partial = _copy_views(gt, tmp_path / "partial")
    (partial / "004.png").unlink()
    res = run_cli("eval", "nvs", partial, gt)
    assert res.code == 2 and res.err.count("\n") == 1 and "missing" in res.err
    small = tmp_path / "small"
    small.mkdir()
    for i in range(16):
        Image.new("RGB", (128, 128), "white").save(small / f"{i:03d}.png")
    res = run_cli("eval", "nvs", small, gt)
    assert res.code == 2 and res.err.count("\n") == 1 and "size" in res.err
