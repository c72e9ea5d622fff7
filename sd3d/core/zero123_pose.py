"""Zero123's relative pose vector ``T = [d_polar, sin d_azimuth, cos d_azimuth, d_radius]``.

Conventions (docs/reference/zero123.md §1): world +Z up, object at the origin. A camera centre
``C = (x, y, z)`` has polar angle ``theta = atan2(sqrt(x^2 + y^2), z)`` measured *from +Z* (0 = straight
above, pi/2 = on the horizon), azimuth ``phi = atan2(y, x)`` from +X towards +Y, radius ``r = |C|``.
For a conditioning camera ``c`` and a target ``t``:

    T = [theta_t - theta_c, sin(dphi), cos(dphi), r_t - r_c],   dphi = (phi_t - phi_c) mod 2 pi

in radians and world units, built in float64 and stored float32 (so ``cos 90deg`` is 6.1e-17, not 0).

Signs, because they are easy to get wrong: a positive *polar* delta moves the camera **down**, so an
*elevation* delta enters with the opposite sign (``d_polar = -d_elevation``); a positive azimuth
delta moves the camera counter-clockwise seen from above (to the camera's right); a positive radius
delta moves it away. The official demo's sliders are a polar delta, not an elevation delta.

Only camera *positions* enter the model, never roll or look-at offsets, so poses between arbitrary
cameras go through absolute centres (:func:`relative_pose`), never by adding deltas: a target that
crosses a pole is then physically right.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from sd3d.core.cameras import Camera

POSE_DIM = 4


def _as_pose(values: Sequence[float]) -> np.ndarray:
    """Python floats (float64 maths) -> the float32 vector the model sees."""
    return np.asarray([float(v) for v in values], dtype=np.float32)


def pose_from_polar_deltas(d_polar_deg: float, d_azimuth_deg: float, d_radius: float = 0.0) -> np.ndarray:
    """The official demo's pose: sliders in degrees (polar delta, +10 = camera *down*) and world units."""
    d_polar, d_azimuth = math.radians(d_polar_deg), math.radians(d_azimuth_deg)
    return _as_pose([d_polar, math.sin(d_azimuth), math.cos(d_azimuth), d_radius])


def pose_from_deltas(d_elevation_deg: float, d_azimuth_deg: float, d_radius: float = 0.0) -> np.ndarray:
    """The pose for "move the camera up by ``d_elevation_deg``, right by ``d_azimuth_deg``, away by ``d_radius``".

    This is sd3d's user-facing convention (elevation, like every other sd3d command): it enters T
    negated, because Zero123 measures the polar angle from +Z.
    """
    return pose_from_polar_deltas(-float(d_elevation_deg), d_azimuth_deg, d_radius)


def spherical(center: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """``(theta, phi, r)`` of a camera centre: polar angle from +Z, azimuth from +X towards +Y, radius.

    At the poles (x = y = 0) the azimuth is undefined and comes out as 0 (``atan2(0, 0)``).
    """
    x, y, z = (float(v) for v in np.asarray(center, dtype=np.float64).reshape(3))
    return math.atan2(math.hypot(x, y), z), math.atan2(y, x), math.sqrt(x * x + y * y + z * z)


def relative_pose(
    cond_center: Sequence[float] | np.ndarray, target_center: Sequence[float] | np.ndarray
) -> np.ndarray:
    """T from the conditioning camera's centre to the target camera's centre (float32, shape (4,))."""
    theta_c, phi_c, r_c = spherical(cond_center)
    theta_t, phi_t, r_t = spherical(target_center)
    d_phi = (phi_t - phi_c) % (2.0 * math.pi)
    return _as_pose([theta_t - theta_c, math.sin(d_phi), math.cos(d_phi), r_t - r_c])


def orbit_center(elevation_deg: float, azimuth_deg: float, radius: float) -> np.ndarray:
    """Camera centre on the orbit (the same parametrisation as :func:`sd3d.core.cameras.orbit_camera`)."""
    e, a = math.radians(elevation_deg), math.radians(azimuth_deg)
    return np.array(
        [radius * math.cos(e) * math.cos(a), radius * math.cos(e) * math.sin(a), radius * math.sin(e)]
    )


def check_orbit_camera(camera: Camera, atol: float = 1e-4) -> None:
    """Raise ``ValueError`` unless ``camera`` looks at the origin, upright, without roll about its axis.

    Zero123 only sees camera positions, so a camera that looks elsewhere or is rolled would get a
    view that does not match it; refusing it is better than returning a silently wrong image.
    """
    c = camera.center
    r = float(np.linalg.norm(c))
    if r < 1e-9:
        raise ValueError("the camera sits at the origin (where the object is)")
    x_axis, y_axis, z_axis = (np.asarray(camera.R[i], np.float64) for i in range(3))
    if np.abs(z_axis + c / r).max() > atol:
        raise ValueError("the camera does not look at the origin; Zero123 poses assume it does")
    if abs(x_axis[2]) > atol or y_axis[2] > atol:
        raise ValueError("the camera is rolled or upside down relative to +Z; Zero123 poses assume it is not")


def relative_pose_between(cond: Camera, target: Camera, check: bool = True) -> np.ndarray:
    """T from camera ``cond`` to camera ``target`` (any :class:`~sd3d.core.cameras.Camera`, OpenCV axes).

    Only the centres ``-R^T t`` are used; ``check`` first verifies both cameras look at the origin
    without roll (:func:`check_orbit_camera`).
    """
    if check:
        check_orbit_camera(cond)
        check_orbit_camera(target)
    return relative_pose(cond.center, target.center)
