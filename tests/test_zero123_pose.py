"""Zero123's pose vector: the worked values of the official code (docs/reference/zero123.md §1.4, §1.5) and sign conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sd3d.core import cameras as cam
from sd3d.core.zero123_pose import (
    check_orbit_camera,
    orbit_center,
    pose_from_deltas,
    pose_from_polar_deltas,
    relative_pose,
    relative_pose_between,
    spherical,
)

F32 = np.float32


@pytest.mark.parametrize(
    ("sliders", "expected"),
    [
        ((0, 0, 0), [0, 0, 1, 0]),
        ((10, 90, 0), [0.17453292, 1, 6.123234e-17, 0]),
        ((-90, 0, 0), [-1.5707964, 0, 1, 0]),
        ((0, 90, 0), [0, 1, 6.123234e-17, 0]),
        ((0, -90, 0), [0, -1, 6.123234e-17, 0]),
        ((0, 180, 0), [0, 1.2246469e-16, -1, 0]),
        ((0, 30, 0.3), [0, 0.5, 0.8660254, 0.3]),
    ],
)
def test_demo_slider_worked_values(sliders, expected):
    """(polar deg, azimuth deg, zoom) -> T, the float32 table of docs/reference/zero123.md §1.4."""
    got = pose_from_polar_deltas(*sliders)
    assert got.dtype == F32 and got.shape == (4,)
    assert np.array_equal(got, np.asarray(expected, F32))


def test_cos_90_is_stored_as_float32_not_zero():
    assert pose_from_polar_deltas(0, 90)[2] == F32(6.123234e-17) != 0


def test_elevation_delta_enters_negated():
    # "camera up by 10 degrees" is a polar delta of -10 degrees
    assert np.array_equal(pose_from_deltas(10, 90, 0.2), pose_from_polar_deltas(-10, 90, 0.2))
    assert pose_from_deltas(10, 0)[0] == F32(-math.radians(10))


@pytest.mark.parametrize(
    ("cond", "target", "expected"),
    [
        ((0, 0, 1.5), (30, 90, 1.5), [-0.5235988, 1, None, 0]),
        ((20, 0, 1.5), (30, 22.5, 1.5), [-0.1745329, 0.3826834, 0.9238795, 0]),
        ((30, 22.5, 1.5), (30, 67.5, 1.5), [0, 0.7071068, 0.7071068, 0]),
        ((0, 350, 1.5), (0, 10, 1.5), [0, 0.3420201, 0.9396926, 0]),
        ((0, 0, 1.5), (0, 0, 2.0), [0, 0, 1, 0.5]),
    ],
)
def test_relative_pose_between_absolute_cameras(cond, target, expected):
    """docs/reference/zero123.md §1.5 examples (elevation, azimuth, radius); 'None' is the notes' '~0'."""
    got = relative_pose(orbit_center(*cond), orbit_center(*target))
    assert got.dtype == F32
    for g, e in zip(got, expected, strict=True):
        if e is None:
            assert abs(g) < 1e-7
        else:
            assert g == pytest.approx(e, abs=1e-7)


def test_signs_follow_the_camera_motion():
    base = orbit_center(0, 0, 1.5)
    lower = orbit_center(-10, 0, 1.5)
    assert relative_pose(base, lower)[0] > 0  # camera down = positive polar delta
    left_to_right = relative_pose(base, orbit_center(0, 30, 1.5))  # towards +Y = the camera's right
    assert left_to_right[1] > 0
    # camera at +X looking at the origin, +Z up: its right-hand direction is +Y
    c = cam.orbit_camera(0, 0, 1.5)
    assert np.allclose(c.R[0], [0, 1, 0])
    assert relative_pose(base, orbit_center(0, 0, 2.0))[3] > 0  # further away


def test_spherical_conventions():
    theta, phi, r = spherical([0, 2, 0])
    assert theta == pytest.approx(math.pi / 2) and phi == pytest.approx(math.pi / 2) and r == pytest.approx(2)
    assert spherical([0, 0, 1.5])[:2] == (0.0, 0.0)  # pole: azimuth undefined -> 0


def test_pole_crossing_goes_through_absolute_positions():
    """Elevation 80 + 20 'up' is physically elevation 80 on the opposite azimuth, not polar -10 deg."""
    cond = orbit_center(20, 0, 1.5)
    over_the_top = orbit_center(80, 180, 1.5)
    got = relative_pose(cond, over_the_top)
    assert got[0] == pytest.approx(math.radians(10 - 70), abs=1e-6)
    assert got[2] == pytest.approx(-1, abs=1e-6)


def test_relative_pose_between_cameras_matches_syncdreamer_embedding():
    """docs/reference/zero123.md §1.6: input at (elevation e, azimuth 0) to ring view n is SyncDreamer's viewpoint embedding."""
    elevation = 15.0
    inp = cam.orbit_camera(elevation, 0.0, cam.TARGET_DISTANCE)
    ref = cam.viewpoint_embedding(elevation)
    for n, target in enumerate(cam.target_cameras()):
        got = relative_pose_between(inp, target)
        assert np.allclose(got, ref[n], atol=2e-6), n


def test_cameras_that_do_not_look_at_the_origin_are_refused():
    good = cam.orbit_camera(30, 45, 1.5)
    check_orbit_camera(good)
    shifted = cam.Camera(K=good.K, w2c=good.w2c + np.array([[0, 0, 0, 0.2], [0, 0, 0, 0], [0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="look at the origin"):
        relative_pose_between(shifted, good)
    roll = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # 90 deg about the optical axis
    rolled = cam.Camera(K=good.K, w2c=np.concatenate([roll @ good.R, (roll @ good.t)[:, None]], axis=1))
    with pytest.raises(ValueError, match="rolled"):
        relative_pose_between(good, rolled)
    # unchecked, only the centres count
    assert np.array_equal(
        relative_pose_between(good, rolled, check=False), relative_pose(good.center, good.center)
    )
