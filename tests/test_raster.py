"""Mesh rasteriser: exact cases on synthetic scenes, then the shared ground-truth renders."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from recon import metrics, raster
from sd3d.core.cameras import Camera, intrinsics, orbit_camera

OBJECTS = ("spot", "bob", "duck", "banana")
SOURCES = {
    "spot": "spot_triangulated.obj",
    "bob": "bob_tri.obj",
    "duck": "Duck.glb",
    "banana": "textured_simple_reoriented.obj",
}


def _front_camera(size: int = 32) -> Camera:
    """Camera at (0, 0, -2) looking along +z (identity rotation), focal = size."""
    K = np.array([[size, 0.0, size / 2], [0.0, size, size / 2], [0.0, 0.0, 1.0]])
    return Camera(K=K, w2c=np.concatenate([np.eye(3), [[0.0], [0.0], [2.0]]], 1), width=size, height=size)


def _grid_mesh(n: int, half: float, z: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    xs = np.linspace(-half, half, n + 1)
    gx, gy = np.meshgrid(xs, xs, indexing="ij")
    v = np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, z)], 1)
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    return v, np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)])


def test_samples_on_shared_edges_and_vertices_are_covered_exactly_once():
    """A plane cut into triangles whose vertices and edges pass exactly through pixel centres."""
    cam = _front_camera(32)
    # pixel centre i + 0.5 sees x = (i - 15.5) / 16 on the plane: vertices on centres 12 ... 19
    v, f = _grid_mesh(7, half=3.5 / 16, z=0.0)
    vt = torch.as_tensor(v, dtype=torch.float32)
    whole = raster.rasterize(vt, torch.as_tensor(f), cam.K, cam.w2c, 32, 32)
    assert bool((whole.face[13:19, 13:19] >= 0).all())
    # face by face: every interior sample is claimed by exactly one face (no crack, no double hit)
    hits = sum(
        (raster.rasterize(vt, torch.as_tensor(f[k : k + 1]), cam.K, cam.w2c, 32, 32).face >= 0).int()
        for k in range(len(f))
    )
    assert bool((hits[13:19, 13:19] == 1).all())
    assert int(hits.max()) == 1


def test_coverage_only_covers_the_samples_the_depth_test_covers():
    """The silhouette fast path skips the z-buffer; it must cover exactly the same samples, here on
    a closed, self-occluding mesh from several viewpoints (front and back faces overlap)."""
    obj = trimesh.util.concatenate(
        [trimesh.creation.icosphere(2, radius=0.3), trimesh.creation.box(extents=(0.2, 0.6, 0.2))]
    )
    v = torch.as_tensor(obj.vertices, dtype=torch.float32)
    f = torch.as_tensor(obj.faces)
    for elevation in (-20.0, 10.0, 45.0):
        cam = orbit_camera(elevation, 30.0, 1.5, 48)
        full = raster.rasterize(v, f, cam.K, cam.w2c, 48, 48)
        fast = raster.rasterize(v, f, cam.K, cam.w2c, 48, 48, coverage_only=True)
        assert 200 < int((full.face >= 0).sum()) < 48 * 48
        assert torch.equal(fast.face >= 0, full.face >= 0)
        assert bool(torch.isinf(fast.depth).all())  # nothing pretends to be a depth


def test_depth_and_attributes_are_perspective_correct():
    cam = _front_camera(64)
    # a tilted plane z = 0.3 x, seen from z = -2 (camera z = world z + 2)
    v = np.array([[-0.6, -0.6, -0.18], [0.6, -0.6, 0.18], [0.6, 0.6, 0.18], [-0.6, 0.6, -0.18]])
    f = np.array([[0, 1, 2], [0, 2, 3]])
    frags = raster.rasterize(torch.as_tensor(v), torch.as_tensor(f), cam.K, cam.w2c, 64, 64)
    j, i = np.nonzero(frags.face.numpy() >= 0)
    # ray through pixel centre: X = t * ((i + .5 - 32) / 64, (j + .5 - 32) / 64, 1) - (0, 0, 2) on z = 0.3 x
    rx, ry = (i + 0.5 - 32) / 64, (j + 0.5 - 32) / 64
    t = 2.0 / (1.0 - 0.3 * rx)
    np.testing.assert_allclose(frags.depth.numpy()[j, i], t, rtol=1e-10)
    # interpolating the vertices with the barycentrics gives back the hit point
    hit = (v[f[frags.face.numpy()[j, i]]] * frags.bary.numpy()[j, i][..., None]).sum(1)
    np.testing.assert_allclose(hit[:, 0], t * rx, atol=1e-9)
    np.testing.assert_allclose(hit[:, 1], t * ry, atol=1e-9)


def test_coverage_alpha_counts_subsamples():
    cam = _front_camera(16)
    # a square whose right edge is at x = 0.25 + 1/3 px (world 0.25 -> pixel 12; focal 16, depth 2)
    edge_px = 12 + 1 / 3 + 1e-6
    x_edge = (edge_px - 8) / 16 * 2
    v = np.array([[-0.9, -0.9, 0.0], [x_edge, -0.9, 0.0], [x_edge, 0.9, 0.0], [-0.9, 0.9, 0.0]])
    mesh = raster.RenderMesh(
        vertices=v, faces=np.array([[0, 1, 2], [0, 2, 3]]), face_color=np.full((2, 3), 0.5)
    )
    r = raster.render_mesh(mesh, [cam], supersample=3)
    row = r.rgba[0, 8, :, 3]
    # pixel 11 fully covered, pixel 12 covered by its first sample column (12 + 1/6) only
    assert row[11] == 1.0 and row[12] == pytest.approx(1 / 3) and row[13] == 0.0
    # straight alpha: the partly covered pixel has the full surface colour, empty pixels are white
    assert np.allclose(r.rgba[0, 8, 12, :3], r.rgba[0, 8, 5, :3])
    assert np.all(r.rgba[0, 8, 14, :3] == 1.0)
    assert math.isinf(r.depth[0, 8, 14]) and r.depth[0, 8, 5] == pytest.approx(2.0)


def test_lambertian_shading_of_a_plane():
    light = raster.Lighting(ambient=0.2, directions=((0.0, 0.0, 1.0),), weights=(0.6,))
    cam = orbit_camera(60.0, 0.0, 1.5, 32)  # views the plane z = 0 from above
    v, f = _grid_mesh(2, 0.5)
    mesh = raster.RenderMesh(vertices=v, faces=f, face_color=np.full((len(f), 3), 0.7))
    rgb = raster.render_mesh(mesh, [cam], supersample=1, lighting=light).rgba[0, 16, 16, :3]
    lin = ((0.7 + 0.055) / 1.055) ** 2.4 * (0.2 + 0.6 * 1.0)
    np.testing.assert_allclose(rgb, 1.055 * lin ** (1 / 2.4) - 0.055, rtol=1e-5)
    # two-sided: from below, the normal is flipped towards the camera and gets only the ambient term
    below = orbit_camera(-60.0, 0.0, 1.5, 32)
    rgb_below = raster.render_mesh(mesh, [below], supersample=1, lighting=light).rgba[0, 16, 16, :3]
    lin_below = ((0.7 + 0.055) / 1.055) ** 2.4 * 0.2
    np.testing.assert_allclose(rgb_below, 1.055 * lin_below ** (1 / 2.4) - 0.055, rtol=1e-5)


def test_normalisation_and_gltf_frame(tmp_path):
    box = trimesh.creation.box(extents=(2.0, 1.0, 4.0))
    box.apply_translation([3.0, -1.0, 0.5])
    box.export(tmp_path / "box.ply")
    m = raster.load_mesh(tmp_path / "box.ply")
    np.testing.assert_allclose(m.vertices.min(0), [-0.25, -0.125, -0.5])
    np.testing.assert_allclose(m.vertices.max(0), [0.25, 0.125, 0.5])
    # a +Y-up glTF of the same box comes back +Z up: (x, y, z) -> (x, -z, y)
    y_up = box.copy()
    y_up.vertices = box.vertices @ np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]).T
    y_up.export(tmp_path / "box.glb")
    g = raster.load_mesh(tmp_path / "box.glb", normalize=False)
    np.testing.assert_allclose(np.sort(g.vertices, axis=0), np.sort(box.vertices, axis=0), atol=1e-6)


def test_bad_mesh_is_a_one_line_error_and_writes_nothing(tmp_path, run_cli):
    bad = tmp_path / "broken.glb"
    bad.write_bytes(b"not a mesh at all")
    res = run_cli("render", bad, "-o", tmp_path / "out")
    assert res.code == 2 and res.err.startswith("error: ") and len(res.err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    res = run_cli("render", tmp_path / "missing.obj", "-o", tmp_path / "out")
    assert res.code == 2 and "not found" in res.err
    res = run_cli("render", bad, "-o", tmp_path / "out", "--azimuths", "0,x")
    assert res.code == 2 and "--azimuths" in res.err


@pytest.mark.parametrize("name", OBJECTS)
def test_cli_render_of_the_source_mesh_reproduces_the_gt_views(shared_dir, tmp_path, run_cli, name):
    """``sd3d render`` of the source mesh, normalised like the data (up axis + yaw from cameras.json,
    then the unit-cube normalisation), against the GT renders: alpha, colour, depth, frame."""
    from sd3d.core.io import read_views

    folder = shared_dir / "data" / "objects" / name
    gt_record = json.loads((folder / "views" / "cameras.json").read_text())
    norm = gt_record["normalization"]
    out = tmp_path / "views"
    args = ["-q", "render", folder / "source" / SOURCES[name], "-o", out, "--depth"]
    args += ["--up", norm["up_axis"], "--yaw", str(norm["yaw_deg"])]
    if name == "spot":  # the OBJ has no MTL; the GT used this texture
        args += ["--texture", folder / "source" / "spot_texture.png"]
    res = run_cli(*args)
    assert res.code == 0, res
    record = json.loads((out / "cameras.json").read_text())
    np.testing.assert_allclose(record["normalization"]["raw_to_world"], norm["raw_to_world"], atol=1e-8)
    ours, gt = read_views(out), read_views(folder / "views")
    ious = [metrics.silhouette_iou(ours.alphas[i], gt.alphas[i]) for i in range(16)]
    assert np.mean(ious) >= 0.99 and min(ious) >= 0.99, ious
    psnrs = [metrics.psnr(ours.images[i], gt.images[i]) for i in range(16)]
    assert np.mean(psnrs) > 35.0, psnrs  # same lights and texture lookup: measured 36.9 to 58.6 dB
    for i in (0, 5):
        d_ours = raster.decode_depth(np.asarray(Image.open(out / f"{i:03d}-depth.png")))
        d_gt = raster.decode_depth(np.asarray(Image.open(folder / "views" / f"{i:03d}-depth.png")))
        assert np.array_equal(np.isfinite(d_ours), np.isfinite(d_gt))
        both = np.isfinite(d_gt)
        assert np.abs(d_ours[both] - d_gt[both]).max() < 1e-4  # one uint16 step is 2.7e-5


def test_normalized_gt_mesh_renders_with_no_normalize(shared_dir, tmp_path, run_cli):
    """The other route: mesh_normalized.ply (already in the render frame) with --no-normalize."""
    from sd3d.core.io import read_views

    folder = shared_dir / "data" / "objects" / "bob"
    out = tmp_path / "views"
    res = run_cli(
        "-q", "render", folder / "mesh_normalized.ply", "-o", out, "--no-normalize", "--size", "128"
    )
    assert res.code == 0, res
    gt = read_views(folder / "views")
    gt_small = gt.alphas.reshape(16, 128, 2, 128, 2).mean(axis=(2, 4))  # 2x2 box = coverage at 128 px
    ours = read_views(out)
    ious = [metrics.silhouette_iou(ours.alphas[i], gt_small[i]) for i in range(16)]
    assert min(ious) >= 0.99, ious


def test_cli_eval_mesh_reads_gltf_in_our_frame(shared_dir, tmp_path, run_cli):
    gt_path = shared_dir / "data" / "objects" / "duck" / "mesh_normalized.ply"
    gt = trimesh.load(gt_path)
    y_up = trimesh.Trimesh(gt.vertices @ np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]).T, gt.faces)
    y_up.export(tmp_path / "pred.glb")
    res = run_cli(
        "eval", "mesh", tmp_path / "pred.glb", gt_path, "--json", "--samples", "20000", "--grid", "64"
    )
    assert res.code == 0, res
    out = json.loads(res.out)
    assert out["chamfer"] < 1e-6 and out["volume_iou"] == 1.0 and out["fscore_0.01"] == 1.0
    shifted = gt.copy()
    shifted.apply_translation([0.05, 0.0, 0.0])
    shifted.export(tmp_path / "shifted.ply")
    res = run_cli("eval", "mesh", tmp_path / "shifted.ply", gt_path, "--samples", "20000", "--grid", "64")
    assert res.code == 0 and "Chamfer" in res.out and "volume IoU" in res.out


def test_intrinsics_scale_with_size():
    # --size 512 keeps the field of view of the 256 px target cameras
    assert intrinsics(512)[0, 0] == 2 * intrinsics(256)[0, 0]
