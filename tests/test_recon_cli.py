"""``sd3d reconstruct``: bad input is one line + exit 2 with nothing written; seeds are deterministic."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "spot"


@pytest.fixture
def views(tmp_path: Path) -> Path:
    dst = tmp_path / "views"
    shutil.copytree(EXAMPLE, dst, ignore=shutil.ignore_patterns("*.md", "LICENSE"))
    return dst


def _check_rejected(run_cli, views: Path, out: Path, *extra: str, expect: str) -> None:
    res = run_cli("reconstruct", views, "-o", out, "--quality", "draft", "--device", "cpu", *extra)
    assert res.code == 2, res
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expect in lines[0], res
    assert "Traceback" not in res.err
    leftovers = [
        p.name
        for p in out.parent.iterdir()
        if p.name.startswith(out.stem) or p.name.startswith(f".{out.stem}")
    ]
    assert leftovers == [], leftovers


def test_missing_view(run_cli, views, tmp_path):
    (views / "003.png").unlink()
    _check_rejected(run_cli, views, tmp_path / "model.glb", expect="missing 1 view(s): 003.png")


def test_extra_view(run_cli, views, tmp_path):
    shutil.copy(views / "000.png", views / "016.png")
    _check_rejected(run_cli, views, tmp_path / "model.glb", expect="extra view(s): 016.png")


def test_mis_sized_view(run_cli, views, tmp_path):
    Image.open(views / "005.png").resize((128, 128)).save(views / "005.png")
    _check_rejected(run_cli, views, tmp_path / "model.glb", expect="different sizes")


def test_unreadable_view(run_cli, views, tmp_path):
    (views / "007.png").write_bytes(b"not a png at all")
    _check_rejected(run_cli, views, tmp_path / "model.glb", expect="cannot read view")


def test_empty_mask(run_cli, views, tmp_path):
    Image.new("RGBA", (256, 256), (255, 255, 255, 0)).save(views / "002.png")
    _check_rejected(run_cli, views, tmp_path / "model.glb", expect="002.png has an empty foreground mask")


def test_empty_mask_without_alpha(run_cli, views, tmp_path):
    for i in range(16):  # RGB on white: masks come from the background
        p = views / f"{i:03d}.png"
        rgba = np.asarray(Image.open(p).convert("RGBA")).astype(np.float32) / 255
        rgb = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])
        Image.fromarray(np.rint(rgb * 255).astype(np.uint8)).save(p)
    Image.new("RGB", (256, 256), (255, 255, 255)).save(views / "011.png")
    _check_rejected(
        run_cli, views, tmp_path / "model.glb", expect="011.png has an empty foreground mask (white)"
    )


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (("--quality", "ultra"), "unknown quality 'ultra'"),
        (("--steps", "0"), "--steps must be at least 1"),
        (("--faces", "many"), "--faces must be an integer"),
        (("--seed", "-3"), "--seed must be between 0 and"),
        (("--device", "tpu"), "device"),
    ],
)
def test_bad_options(run_cli, views, tmp_path, args, expect):
    _check_rejected(run_cli, views, tmp_path / "model.glb", *args, expect=expect)


def test_bad_output_format(run_cli, views, tmp_path):
    _check_rejected(run_cli, views, tmp_path / "model.fbx", expect="unsupported mesh format '.fbx'")


def test_views_not_found(run_cli, tmp_path):
    _check_rejected(run_cli, tmp_path / "nope", tmp_path / "model.glb", expect="views not found")


def test_same_seed_same_mesh_on_cpu():
    """Tiny training runs: the same seed gives the identical mesh, another seed a different one."""
    from recon.mesh import extract_mesh
    from recon.presets import get_preset
    from recon.train import train
    from sd3d.core.io import read_views

    views = read_views(EXAMPLE)
    preset = replace(
        get_preset("draft"), steps=4, init_steps=10, rays_per_batch=128, occupancy_res=32, occupancy_every=2
    )
    cpu = torch.device("cpu")

    def mesh(seed):
        out = train(views, preset, cpu, seed=seed)
        return extract_mesh(out.field, out.grid, 40, cpu)

    a, b, c = mesh(0), mesh(0), mesh(1)
    assert a.num_faces > 100
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.faces, b.faces)
    assert a.vertices.shape != c.vertices.shape or not np.array_equal(a.vertices, c.vertices)
