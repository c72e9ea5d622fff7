"""View-set perturbations: each applies exactly its stated magnitude, measured on the images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from recon import perturb
from recon.perturb import Perturbation
from recon.raster import Lighting, orbit_cameras
from recon.shapes import cup
from sd3d.core.io import ViewSet

UNLIT = Lighting(ambient=1.0, directions=(), weights=())


@pytest.fixture(scope="module")
def mesh():
    return cup().render_mesh()


@pytest.fixture(scope="module")
def cameras():
    return orbit_cameras(None, None, 1.5, 64)  # the 16 target views at 64 px: fast


@pytest.fixture(scope="module")
def clean(mesh, cameras):
    return perturb.render_views(mesh, cameras)


def test_pose_jitter_applies_the_stated_motion(mesh, cameras):
    views = perturb.pose_jitter(mesh, cameras[:3], 3.0, 0.02, seed=1, lighting=UNLIT)
    record = views.provenance["perturbation"]
    centre, size = perturb.object_frame(mesh)
    for view in record["per_view"]:
        T = np.asarray(view["motion"])
        assert perturb.rotation_angle_deg(T[:3, :3]) == pytest.approx(3.0, abs=1e-9)
        assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-12)
        moved_centre = T[:3, :3] @ centre + T[:3, 3]
        assert np.linalg.norm(moved_centre - centre) == pytest.approx(0.02 * size, abs=1e-12)
    assert [c.w2c.tolist() for c in views.cameras] == [c.w2c.tolist() for c in cameras[:3]]  # nominal
    # the image is the nominal camera's view of the moved mesh (unlit: shading cannot differ)
    for i in range(3):
        T = np.asarray(record["per_view"][i]["motion"])
        expect = perturb.render_views(mesh.transformed(T), [cameras[i]], lighting=UNLIT)
        assert np.abs(expect.alphas[0] - views.alphas[i]).mean() < 1e-3
        assert np.abs(expect.images[0] - views.images[i]).mean() < 1e-3
    still = perturb.render_views(mesh, cameras[:3], lighting=UNLIT)
    assert np.abs(still.alphas - views.alphas).sum() > 5  # and it did move


def test_pose_jitter_of_zero_is_the_clean_render(mesh, cameras, clean):
    views = perturb.pose_jitter(mesh, cameras, 0.0, 0.0, seed=3)
    assert np.array_equal(views.images, clean.images) and np.array_equal(views.alphas, clean.alphas)


def test_colour_drift_stays_in_its_ranges_and_is_exact_on_the_pixels(clean):
    views = perturb.colour_drift(clean, 0.2, 0.05, 0.3, seed=0)
    rec = views.provenance["perturbation"]
    gains = np.array([v["gain"] for v in rec["per_view"]])
    biases = np.array([v["bias"] for v in rec["per_view"]])
    gammas = np.array([v["gamma"] for v in rec["per_view"]])
    assert gains.min() >= 0.8 and gains.max() <= 1.2 and gains.std() > 0.05
    assert np.abs(biases).max() <= 0.05 and biases.std() > 0.01
    assert gammas.min() >= 1 / 1.3 and gammas.max() <= 1.3 and gammas.std() > 0.05
    for i in (0, 7):
        full = clean.alphas[i] == 1.0
        c = clean.images[i][full].astype(np.float64)
        expect = np.clip(gains[i] * c ** gammas[i] + biases[i], 0, 1)
        assert np.abs(views.images[i][full] - expect).max() < 1e-5
        empty = clean.alphas[i] == 0.0
        assert np.array_equal(views.images[i][empty], clean.images[i][empty])  # background stays white
    assert np.array_equal(views.alphas, clean.alphas)


def test_colour_drift_of_zero_is_the_identity(clean):
    views = perturb.colour_drift(clean, 0.0, 0.0, 0.0, seed=5)
    assert np.array_equal(views.images, clean.images)


def _ramp_views(size: int = 64) -> ViewSet:
    """Opaque views whose colour encodes the pixel coordinates (x / 255, y / 255, 0.5)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.stack([xx / 255, yy / 255, np.full_like(xx, 0.5)], -1)
    cams = orbit_cameras(None, None, 1.5, size)[:2]
    return ViewSet(images=np.stack([image, image]), cameras=cams, alphas=np.ones((2, size, size), np.float32))


def test_local_warp_moves_pixels_by_at_most_the_stated_amount():
    views = _ramp_views()
    out = perturb.local_warp(views, 2.5, seed=4, scale_px=16)
    for i, rec in enumerate(out.provenance["perturbation"]["per_view"]):
        assert rec["max_displacement_px"] == pytest.approx(2.5, abs=1e-9)
        # bilinear sampling of a linear ramp returns the sampled position: the displacement itself
        yy, xx = np.mgrid[0:64, 0:64]
        dx = out.images[i][..., 0] * 255 - xx
        dy = out.images[i][..., 1] * 255 - yy
        length = np.hypot(dx, dy)
        assert length.max() <= 2.5 + 1e-3
        assert length[4:-4, 4:-4].max() > 0.5 and np.median(length) > 0.1
    # the field is the documented one: the seeded smooth field scaled to 2.5 px at its longest
    field = perturb.displacement_field(64, 64, 2.5, 16, np.random.default_rng(4))
    inner = np.s_[4:-4, 4:-4]
    assert np.abs(out.images[0][..., 0] * 255 - (np.mgrid[0:64, 0:64][1] + field[..., 0]))[inner].max() < 1e-3


def test_local_warp_moves_colour_and_alpha_together(clean):
    out = perturb.local_warp(clean, 3.0, seed=2)
    changed = np.abs(out.alphas - clean.alphas) > 0.05
    assert changed.sum() > 50
    # straight colour under alpha: composite = colour * alpha + (1 - alpha) keeps colour in [0, 1]
    for i in range(3):
        a = out.alphas[i][..., None]
        colour = np.where(a > 0.05, 1 + (out.images[i] - 1) / np.maximum(a, 0.05), 1.0)
        assert colour.min() > -1e-4 and colour.max() < 1 + 1e-4
    assert np.array_equal(perturb.local_warp(clean, 0.0, seed=2).images, clean.images)


def test_mask_noise_changes_only_pixels_near_the_edge(clean):
    width = 3.0
    out = perturb.mask_noise(clean, width, seed=0)
    grown = shrunk = 0
    for i in range(clean.num_views):
        inside = clean.alphas[i] >= 0.5
        to_other_class = np.where(inside, distance_transform_edt(inside), distance_transform_edt(~inside))
        changed = (np.abs(out.alphas[i] - clean.alphas[i]) > 1e-6) | (
            np.abs(out.images[i] - clean.images[i]).max(-1) > 1e-6
        )
        assert changed.any()
        # a pixel may change only if the other side of the edge is within `width` (+ the half pixel
        # between a pixel centre and the edge)
        assert to_other_class[changed].max() < width + 0.5 + 1e-9
        grown += int((out.alphas[i] > clean.alphas[i] + 1e-6).sum())
        shrunk += int((out.alphas[i] < clean.alphas[i] - 1e-6).sum())
    assert grown > 20 and shrunk > 20  # eroded in places, dilated in others
    none = perturb.mask_noise(clean, 0.0, seed=0)
    assert np.array_equal(none.alphas, clean.alphas) and np.array_equal(none.images, clean.images)


def test_bump_has_the_stated_height_and_support(mesh):
    _, size = perturb.object_frame(mesh)
    point = mesh.vertices[np.argmax(mesh.vertices[:, 0])]
    direction = np.array([1.0, 0.0, 0.0])
    out = perturb.bump(mesh, point, direction, 0.05, 0.1)
    assert len(out.faces) > len(mesh.faces)
    # original vertices keep their index; moved vertices lie within the radius, along the direction
    moved = out.vertices[: len(mesh.vertices)] - mesh.vertices
    new_moved = out.vertices - perturb.bump(mesh, point, direction, 0.0, 0.1).vertices
    assert np.abs(np.cross(new_moved, direction)).max() < 1e-12
    lengths = np.linalg.norm(new_moved, axis=1)
    base = perturb.bump(mesh, point, direction, 0.0, 0.1).vertices
    assert np.linalg.norm(base[lengths > 0] - point, axis=1).max() < 0.1
    assert 0.95 * 0.05 <= lengths.max() <= 0.05 + 1e-12  # a vertex lies within radius/8 of the point
    assert np.abs(moved).max() <= 0.05 + 1e-12


def test_detail_disagreement_differs_only_locally(mesh, cameras, clean):
    out = perturb.detail_disagreement(mesh, cameras, 0.05, seed=0, radius=0.1, num_views=2, base=clean)
    rec = out.provenance["perturbation"]
    assert len(rec["views"]) == 2 and abs(rec["height"]) == 0.05
    point = np.asarray(rec["point"])
    for i in range(clean.num_views):
        diff = np.abs(out.images[i] - clean.images[i]).max(-1) + np.abs(out.alphas[i] - clean.alphas[i])
        if i not in rec["views"]:
            assert not diff.any()
            continue
        changed = diff > 2 / 255
        assert changed.sum() >= 3
        # every changed pixel is inside the ball's projection (radius + height, at its nearest depth)
        (x, y), z = (a[0] for a in cameras[i].project(point[None]))
        reach = cameras[i].K[0, 0] * (rec["radius_world"] + 0.05) / (z - rec["radius_world"]) + 1.5
        rows, cols = np.nonzero(changed)
        assert np.hypot(cols + 0.5 - x, rows + 0.5 - y).max() <= reach


def test_perturbation_spec_parse_slug_and_describe():
    p = Perturbation.parse("pose:2", seed=7)
    assert (p.kind, p.magnitude, p.seed) == ("pose", 2.0, 7)
    assert p.option("translation") == pytest.approx(0.01) and p.slug == "pose-2"
    assert "rotation 2 deg" in p.describe() and "1 % of size" in p.describe()
    q = Perturbation.parse("warp:3,scale=32,seed=4")
    assert q.seed == 4 and q.option("scale") == 32 and q.slug == "warp-3-scale-32"
    assert Perturbation.parse("clean").slug == "clean"
    for bad in ("tilt:2", "pose", "pose:-1", "warp:2,spread=3", "mask:nan"):
        with pytest.raises(ValueError):
            Perturbation.parse(bad)
    assert math.isclose(Perturbation("colour", 0.1).option("bias"), 0.05)


def test_apply_dispatches_and_records_the_spec(mesh, clean):
    for spec in ("clean", "colour:0.1", "warp:2", "mask:2"):
        p = Perturbation.parse(spec, seed=1)
        out = perturb.apply(p, clean, mesh)
        assert out.provenance["perturbation"]["kind"] == p.kind
        assert out.images.shape == clean.images.shape
    with pytest.raises(ValueError, match="re-renders the mesh"):
        perturb.apply(Perturbation("pose", 1.0), clean)
