"""``sd3d eval consistency`` (3DiM): fit on 12 views, score the 4 held-out ones. The score must measure
consistency, not image quality: the same good images made inconsistent (two views swapped) score lower.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from recon.consistency import consistency_score, default_held_out
from sd3d.core.io import read_views

STEPS = 200  # draft preset, shortened: enough to separate consistent from swapped views on CPU


@pytest.fixture(scope="module")
def spot(shared_dir):
    return read_views(shared_dir / "data" / "objects" / "spot" / "views")


def _swap(views, i, j):
    order = list(range(views.num_views))
    order[i], order[j] = j, i
    return replace(views, images=views.images[order], alphas=views.alphas[order])


def test_default_held_out_is_every_fourth_view():
    assert default_held_out(16) == (3, 7, 11, 15)


def test_ground_truth_scores_higher_than_swapped_views(spot):
    gt = consistency_score(spot, steps=STEPS, seed=0, device="cpu")
    swapped = consistency_score(_swap(spot, 5, 9), steps=STEPS, seed=0, device="cpu")
    assert gt.held_out == swapped.held_out == (3, 7, 11, 15)
    assert np.isfinite(gt.psnr).all() and gt.mean_psnr > 17.0
    # two consistent-looking but wrongly placed training views must cost clearly more than noise
    assert gt.mean_psnr > swapped.mean_psnr + 1.0, (gt.mean_psnr, swapped.mean_psnr)
    assert gt.mean_ssim > swapped.mean_ssim


def test_cli_rejects_bad_held_out_views(run_cli, shared_dir):
    views = shared_dir / "data" / "objects" / "spot" / "views"
    res = run_cli("eval", "consistency", views, "--held-out", "3,16")
    assert res.code == 2 and res.err.count("\n") == 1 and "held-out" in res.err
    res = run_cli("eval", "consistency", views, "--held-out", "a,b")
    assert res.code == 2 and res.err.count("\n") == 1
    res = run_cli("eval", "consistency", views, "--held-out", ",".join(str(i) for i in range(13)))
    assert res.code == 2 and "at least 4" in res.err


def test_cli_json_output(run_cli, shared_dir):
    views = shared_dir / "data" / "objects" / "banana" / "views"
    res = run_cli(
        "--quiet",
        "eval",
        "consistency",
        views,
        "--json",
        "--steps",
        "40",
        "--device",
        "cpu",
        "--held-out",
        "0,8",
    )
    assert res.code == 0, res
    out = json.loads(res.out)
    assert out["held_out"] == [0, 8] and len(out["per_view"]) == 2 and out["mean_psnr"] > 0
