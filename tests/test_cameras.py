"""Cameras: the 16 targets against the official pickle, the viewpoint embedding, transforms.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sd3d.core import cameras as cam
from sd3d.core import io as sio


def test_target_cameras_match_official_pickle(reference_dir):
    ref = json.loads((reference_dir / "camera-16.json").read_text())
    K, poses = cam.stack_cameras(cam.target_cameras())
    assert np.abs(poses - np.asarray(ref["poses"]["value"])).max() <= 1e-5
    assert np.abs(K - np.asarray(ref["K"]["value"])).max() <= 1e-5
    centers = np.stack([c.center for c in cam.target_cameras()])
    assert np.abs(centers - np.asarray(ref["camera_centers_world"]["value"])).max() <= 1e-5


def test_azimuth_buffer_and_viewpoint_embedding_exact(reference_dir):
    vec = json.loads((reference_dir / "syncdreamer-reference-vectors.json").read_text())
    np.testing.assert_array_equal(
        cam.model_azimuth_buffer(), np.asarray(vec["model_azimuth_buffer"], np.float32)
    )
    for elev, table in vec["viewpoint_embedding_by_input_elevation_deg"].items():
        emb = cam.viewpoint_embedding(float(elev))
        assert emb.dtype == np.float32
        np.testing.assert_array_equal(emb, np.asarray(table, np.float32), err_msg=f"elevation {elev}")


def test_view0_and_view4_positions():
    cams = cam.target_cameras()
    np.testing.assert_allclose(cams[0].center, [1.5 * np.cos(np.pi / 6), 0, 0.75], atol=1e-12)
    np.testing.assert_allclose(cams[4].center, [0, 1.5 * np.cos(np.pi / 6), 0.75], atol=1e-12)
    # the origin projects to the principal point and lies 1.5 in front of every camera
    for c in cams:
        uv, z = c.project(np.zeros((1, 3)))
        np.testing.assert_allclose(uv[0], [128, 128], atol=1e-9)
        assert z[0] == pytest.approx(1.5)


def test_orbit_camera_is_rigid_and_looks_at_origin():
    c = cam.orbit_camera(-10.0, 123.0, 2.0, size=512)
    R = c.R
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0)
    np.testing.assert_allclose(np.linalg.norm(c.center), 2.0)
    assert c.K[0, 2] == 256 and c.K[0, 0] == pytest.approx(560.0)
    # +Z world is "up" on screen: a point above the origin projects to a smaller row
    uv, _ = c.project(np.array([[0.0, 0.0, 0.2]]))
    assert uv[0, 1] < 256


def test_opengl_c2w_inverts_pose():
    for c in cam.target_cameras():
        c2w = c.c2w_opengl()
        w2c = np.eye(4)
        w2c[:3] = c.w2c
        flip = np.diag([1.0, -1.0, -1.0, 1.0])
        np.testing.assert_allclose(w2c @ c2w @ flip, np.eye(4), atol=1e-12)


def test_transforms_json_roundtrip(tmp_path, run_cli):
    views = tmp_path / "views"
    ims = [np.full((32, 32, 3), 255 - i, np.uint8) for i in range(16)]
    with sio.atomic_dir(views) as tmp:
        sio.write_views_into(tmp, ims, cam.target_cameras(size=32))
    (views / "transforms.json").unlink()
    res = run_cli("cameras", views)
    assert res.code == 0, res
    tr = json.loads((views / "transforms.json").read_text())
    assert tr["w"] == 32 and tr["fl_x"] == pytest.approx(35.0) and len(tr["frames"]) == 16
    assert tr["frames"][3]["file_path"] == "003.png"
    c2w = np.asarray(tr["frames"][0]["transform_matrix"])
    np.testing.assert_allclose(c2w[:3, 3], cam.target_cameras()[0].center, atol=1e-12)
    vs = sio.read_views(views)
    assert vs.num_views == 16 and vs.images.shape == (16, 32, 32, 3)
    np.testing.assert_allclose(vs.cameras[5].w2c, cam.target_cameras(32)[5].w2c)


def test_read_views_rejects_missing_view(tmp_path, run_cli):
    views = tmp_path / "views"
    ims = [np.zeros((32, 32, 3), np.uint8)] * 16
    with sio.atomic_dir(views) as tmp:
        sio.write_views_into(tmp, ims, cam.target_cameras(size=32))
    (views / "007.png").unlink()
    res = run_cli("cameras", views)
    assert res.code == 2 and "missing" in res.err and res.err.count("\n") == 1
