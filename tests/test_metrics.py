"""Mesh and image metrics: definitions checked on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from recon import metrics


@pytest.fixture(scope="module")
def sphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=5, radius=0.3)


def test_identical_meshes_score_perfect(sphere):
    m = metrics.mesh_metrics(sphere, sphere.copy())
    assert m == {"chamfer": 0.0, "fscore_0.01": 1.0, "fscore_0.02": 1.0, "volume_iou": 1.0}


def test_concentric_spheres_match_analytic_values(sphere):
    r1, r2 = 0.3, 0.315
    big = trimesh.creation.icosphere(subdivisions=5, radius=r2)
    m = metrics.mesh_metrics(sphere, big)
    # every nearest neighbour is ~radially across the 0.015 gap (+ the sample spacing's tiny lateral part)
    assert m["chamfer"] == pytest.approx(r2 - r1, abs=3e-4)
    assert m["fscore_0.01"] == 0.0
    assert m["fscore_0.02"] == 1.0
    assert m["volume_iou"] == pytest.approx((r1 / r2) ** 3, abs=0.01)


def test_open_mesh_still_has_its_volume(sphere):
    closed = metrics.occupancy_grid(sphere.vertices, sphere.faces)
    one_face_missing = metrics.occupancy_grid(sphere.vertices, sphere.faces[1:])
    assert metrics.iou(one_face_missing, closed) > 0.999
    # a cap of ~8% of the surface removed: the winding number still fills most of the ball
    keep = sphere.triangles_center[:, 2] < 0.25
    holey = metrics.occupancy_grid(sphere.vertices, sphere.faces[keep])
    assert 0.9 < metrics.iou(holey, closed) < 1.0
    assert keep.mean() < 0.95


def test_inverted_mesh_counts_as_inside(sphere):
    inverted = trimesh.Trimesh(sphere.vertices, sphere.faces[:, ::-1], process=False)
    assert metrics.volume_iou(inverted, sphere) == 1.0


def test_volume_matches_the_mesh_volume():
    box = trimesh.creation.box(extents=(0.5, 0.3, 0.7))
    box.apply_transform(trimesh.transformations.rotation_matrix(0.3, [1, 2, 3]))
    occ = metrics.occupancy_grid(box.vertices, box.faces, resolution=128, bound=0.6)
    assert occ.sum() * (1.2 / 128) ** 3 == pytest.approx(box.volume, rel=0.01)


@pytest.mark.parametrize("case", ["closed", "open", "big_hole", "inverted"])
def test_grid_winding_number_equals_the_solid_angle_sum(case):
    small = trimesh.creation.icosphere(subdivisions=2, radius=0.35)
    small.vertices[:, 0] += 0.05
    faces = {
        "closed": small.faces,
        "open": small.faces[3:],
        "big_hole": small.faces[small.triangles_center[:, 1] < 0.15],
        "inverted": small.faces[:, ::-1],
    }[case]
    n = 14
    w_grid = metrics.winding_numbers_grid(small.vertices, faces, resolution=n, bound=0.6)
    xs = metrics.grid_centres(n, 0.6)
    step = xs[1] - xs[0]
    gx, gy, gz = np.meshgrid(
        xs + metrics._RAY_JITTER[0] * step, xs + metrics._RAY_JITTER[1] * step, xs, indexing="ij"
    )
    pts = np.stack([gx, gy, gz], -1).reshape(-1, 3)
    w_ref = metrics.winding_numbers_bruteforce(small.vertices, faces, pts).reshape(n, n, n)
    np.testing.assert_allclose(w_grid, w_ref, atol=1e-9)
    if case in ("open", "big_hole"):  # the cone term is exercised: winding numbers are not integers
        assert np.abs(w_ref - np.round(w_ref)).max() > 0.01


def test_fast_open_mesh_winding_number_matches_the_exact_one():
    """Away from the closing cone the cone's solid angle is interpolated: same inside/outside."""
    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.4)
    faces = ball.faces[ball.triangles_center[:, 2] < 0.1]  # a large open bowl
    fast = metrics.winding_numbers_grid(ball.vertices, faces, resolution=40, coarse_stride=4)
    exact = metrics.winding_numbers_grid(ball.vertices, faces, resolution=40, coarse_stride=1)
    assert np.abs(fast - exact).max() < 0.02
    assert np.array_equal(np.abs(fast) >= 0.5, np.abs(exact) >= 0.5)


def test_sampling_is_area_uniform_and_seeded():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 0, 1], [0, 1, 1]], float)
    f = np.array([[0, 1, 2], [3, 4, 5]])  # areas 0.5 and 1.5
    p = metrics.sample_surface(v, f, 40_000, seed=3)
    assert np.array_equal(p, metrics.sample_surface(v, f, 40_000, seed=3))
    upper = p[p[:, 2] > 0.5]
    assert len(upper) / len(p) == pytest.approx(0.75, abs=0.01)
    assert np.all(upper[:, 0] / 3 + upper[:, 1] <= 1 + 1e-12)
    # uniform inside a triangle: the mean is the centroid (x has std 0.7 -> 0.004 on the mean)
    np.testing.assert_allclose(upper.mean(0), [1.0, 1 / 3, 1.0], atol=0.02)  # ~5 sigma of the mean


def test_fscore_definition():
    d_pg = np.array([0.001, 0.005, 0.03, 0.04])  # precision at 0.01: 0.5
    d_gp = np.array([0.001, 0.002, 0.003, 0.05])  # recall at 0.01: 0.75
    assert metrics.fscore_from_distances(d_pg, d_gp, 0.01) == pytest.approx(2 * 0.5 * 0.75 / 1.25)
    assert metrics.fscore_from_distances(d_pg + 1, d_gp + 1, 0.01) == 0.0


def test_psnr_of_a_known_error():
    gt = np.full((8, 8, 3), 0.5)
    assert metrics.psnr(gt + 0.1, gt) == pytest.approx(20.0)
    assert metrics.psnr(gt, gt) == math.inf


def test_ssim_of_constant_images_is_the_luminance_term():
    a, b = np.full((32, 32, 3), 0.8), np.full((32, 32, 3), 0.6)
    c1 = (0.01 * 1.0) ** 2
    expected = (2 * 0.8 * 0.6 + c1) / (0.8**2 + 0.6**2 + c1)
    assert metrics.ssim(a, b, data_range=1.0) == pytest.approx(expected, rel=1e-12)
    rng = np.random.default_rng(0)
    img = rng.random((40, 40, 3))
    assert metrics.ssim(img, img) == pytest.approx(1.0)
    assert metrics.ssim(img, np.clip(img + rng.normal(0, 0.3, img.shape), 0, 1)) < 0.7


def test_ssim_matches_torchmetrics():
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.functional")
    rng = np.random.default_rng(1)
    a = rng.random((48, 40, 3))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1) * 0.9

    def t(x):
        return torch.from_numpy(x).permute(2, 0, 1)[None]

    expected = float(tm.structural_similarity_index_measure(t(a), t(b)))
    assert metrics.ssim(a, b) == pytest.approx(expected, rel=1e-10)


def test_silhouette_iou_is_soft():
    a = np.array([[1.0, 0.5], [0.0, 0.0]])
    b = np.array([[1.0, 1.0], [0.5, 0.0]])
    assert metrics.silhouette_iou(a, b) == pytest.approx(1.5 / 2.5)


def _grid_plane(n: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """The square [-0.5, 0.5]^2 in the z = 0 plane as 2 n^2 triangles."""
    s = np.linspace(-0.5, 0.5, n + 1)
    gx, gy = np.meshgrid(s, s, indexing="ij")
    v = np.stack([gx.ravel(), gy.ravel(), np.zeros(gx.size)], 1)
    idx = np.arange(len(v)).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]
    f = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    return v, f


def test_normal_angle_error_of_identical_meshes_is_zero(sphere):
    assert metrics.normal_angle_error(sphere, sphere.copy(), num_samples=20_000) == 0.0


def test_normal_angle_error_of_a_tilted_plane_is_the_tilt():
    v, f = _grid_plane()
    a = math.radians(17.0)
    tilt = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    flat = trimesh.Trimesh(v, f, process=False)
    tilted = trimesh.Trimesh(v @ tilt.T, f, process=False)
    assert metrics.normal_angle_error(flat, tilted, num_samples=20_000) == pytest.approx(17.0, abs=1e-9)
    # unoriented by default: a flipped copy matches; oriented, it is 180 degrees off
    flipped = trimesh.Trimesh(v, f[:, ::-1], process=False)
    assert metrics.normal_angle_error(flat, flipped, num_samples=5000) == 0.0
    assert metrics.normal_angle_error(flat, flipped, num_samples=5000, oriented=True) == pytest.approx(180.0)


def test_normal_angle_error_matches_each_point_to_the_nearest_surface():
    """GT: the plane plus an equal-area wall far off to the side. Predicted: the plane alone.
    Predicted points all match the plane (0 deg); half of the GT points (the wall's) match the
    plane's edge at 90 deg: the symmetric mean is (0 + 45) / 2 = 22.5 deg, up to sampling."""
    v, f = _grid_plane()
    wall = v[:, [2, 0, 1]] + [3.0, 0.0, 0.0]  # the square in the x = 3 plane
    gt = trimesh.Trimesh(np.concatenate([v, wall]), np.concatenate([f, f + len(v)]), process=False)
    pred = trimesh.Trimesh(v, f, process=False)
    n = 40_000
    # the wall's share of the GT samples is binomial(n, 1/2): 90 deg x its standard deviation / 2
    tol = 4 * 0.5 * 90 * math.sqrt(0.25 / n)
    assert metrics.normal_angle_error(pred, gt, num_samples=n) == pytest.approx(22.5, abs=tol)


def test_closest_faces_is_the_exact_nearest_face(sphere):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(300, 3)) * 0.2
    got = metrics.closest_faces(pts, sphere.vertices, sphere.faces)
    tris = sphere.vertices[sphere.faces]
    for p, face in zip(pts[:40], got[:40], strict=True):
        d = np.linalg.norm(
            trimesh.triangles.closest_point(tris, np.repeat(p[None], len(tris), 0)) - p, axis=1
        )
        assert d[face] == pytest.approx(d.min(), abs=1e-12)


def test_separable_ssim_equals_the_2d_gaussian_window():
    """The fast path (column then row pass) against the plain 2-D window convolution."""
    rng = np.random.default_rng(2)
    a = rng.random((37, 41, 3))
    b = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    p = torch.nn.functional.pad(torch.from_numpy(a).permute(2, 0, 1)[None], (5, 5, 5, 5), mode="reflect")
    g = torch.nn.functional.pad(torch.from_numpy(b).permute(2, 0, 1)[None], (5, 5, 5, 5), mode="reflect")
    x = torch.arange(11, dtype=torch.float64) - 5.0
    k = torch.exp(-0.5 * (x / 1.5) ** 2)
    k = k / k.sum()
    window = torch.outer(k, k).expand(3, 1, 11, 11)
    mu_p, mu_g, e_pp, e_gg, e_pg = torch.nn.functional.conv2d(
        torch.cat([p, g, p * p, g * g, p * g]), window, groups=3
    )
    rng_ = float(max(np.ptp(a), np.ptp(b)))
    c1, c2 = (0.01 * rng_) ** 2, (0.03 * rng_) ** 2
    var_p, var_g = (e_pp - mu_p**2).clamp(min=0), (e_gg - mu_g**2).clamp(min=0)
    cov = e_pg - mu_p * mu_g
    ref = ((2 * mu_p * mu_g + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_g**2 + c1) * (var_p + var_g + c2))
    assert metrics.ssim(a, b) == pytest.approx(float(ref.mean()), rel=1e-12)
