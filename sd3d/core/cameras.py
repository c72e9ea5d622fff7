"""The one place that knows camera conventions.

World frame: +Z up, objects inside the unit cube. A camera at azimuth ``a`` (from +X towards +Y) and
elevation ``e`` sits at ``d * (cos e cos a, cos e sin a, sin e)`` and looks at the origin. Poses are
world-to-camera ``[R | t]`` in OpenCV axes (x right, y down, z forward): ``x_cam = R x_world + t``.
Intrinsics ``K`` map camera coordinates to continuous pixel coordinates with the image's top-left
corner at (0, 0).

SyncDreamer's 16 target views: elevation 30 deg, azimuth ``i * 22.5 deg``, distance 1.5, 256x256,
``fx = fy = 280`` (Blender 35 mm lens on a 32 mm sensor), ``cx = cy = 128``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch  # torch's float32 sin/cos are what the official code used (numpy differs by 1 ulp)

# The input camera's elevation ranges live with the defaults (plain numbers the CLI reads at start-up
# without importing torch); they are part of this module's conventions too.
from sd3d.core.defaults import ELEVATION_LIMITS_DEG as ELEVATION_LIMITS_DEG
from sd3d.core.defaults import ELEVATION_SEARCH_RANGE_DEG as ELEVATION_SEARCH_RANGE_DEG
from sd3d.core.defaults import TRAINED_ELEVATION_RANGE_DEG as TRAINED_ELEVATION_RANGE_DEG

NUM_VIEWS = 16
TARGET_ELEVATION_DEG = 30.0
TARGET_DISTANCE = 1.5
IMAGE_SIZE = 256
FOCAL_256 = 280.0


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: ``K`` (3x3) and world-to-camera ``w2c`` (3x4, OpenCV axes), float64."""

    K: np.ndarray
    w2c: np.ndarray
    width: int = IMAGE_SIZE
    height: int = IMAGE_SIZE
    azimuth_deg: float | None = None
    elevation_deg: float | None = None
    distance: float | None = None

    @property
    def R(self) -> np.ndarray:
        return self.w2c[:, :3]

    @property
    def t(self) -> np.ndarray:
        return self.w2c[:, 3]

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates, ``-R^T t``."""
        return -self.R.T @ self.t

    def c2w_opengl(self) -> np.ndarray:
        """4x4 camera-to-world in OpenGL axes (x right, y up, z backward), as nerfstudio wants."""
        c2w = np.eye(4)
        c2w[:3, :3] = self.R.T @ np.diag([1.0, -1.0, -1.0])
        c2w[:3, 3] = self.center
        return c2w

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N,3) -> continuous pixel coordinates (N,2) and camera z-depth (N,)."""
        cam = points @ self.R.T + self.t
        z = cam[:, 2]
        uvw = cam @ self.K.T
        return uvw[:, :2] / z[:, None], z


def intrinsics(size: int = IMAGE_SIZE, focal_256: float = FOCAL_256) -> np.ndarray:
    """K for a square ``size`` image with SyncDreamer's field of view (scaled from 256 px)."""
    s = size / IMAGE_SIZE
    return np.array([[focal_256 * s, 0.0, size / 2.0], [0.0, focal_256 * s, size / 2.0], [0.0, 0.0, 1.0]])


def look_at_pose(azimuth: float, elevation: float, distance: float) -> np.ndarray:
    """World-to-camera 3x4 pose (radians) for a camera on a sphere looking at the origin, +Z up.

    Rows of R are the camera axes in world coordinates:
    x = (-sin a, cos a, 0); y = (sin e cos a, sin e sin a, -cos e); z = -C/|C|; t = (0, 0, d).
    """
    sa, ca = math.sin(azimuth), math.cos(azimuth)
    se, ce = math.sin(elevation), math.cos(elevation)
    R = np.array(
        [
            [-sa, ca, 0.0],
            [se * ca, se * sa, -ce],
            [-ce * ca, -ce * sa, -se],
        ]
    )
    return np.concatenate([R, np.array([[0.0], [0.0], [distance]])], axis=1)


def orbit_camera(
    elevation_deg: float,
    azimuth_deg: float,
    distance: float = TARGET_DISTANCE,
    size: int = IMAGE_SIZE,
) -> Camera:
    """A camera on the orbit around the origin (degrees at the API, radians inside)."""
    pose = look_at_pose(math.radians(azimuth_deg), math.radians(elevation_deg), distance)
    return Camera(
        K=intrinsics(size),
        w2c=pose,
        width=size,
        height=size,
        azimuth_deg=float(azimuth_deg),
        elevation_deg=float(elevation_deg),
        distance=float(distance),
    )


def target_azimuths_deg(num_views: int = NUM_VIEWS) -> np.ndarray:
    return np.arange(num_views) * (360.0 / num_views)


def target_cameras(size: int = IMAGE_SIZE) -> list[Camera]:
    """The 16 SyncDreamer target cameras, computed analytically."""
    return [orbit_camera(TARGET_ELEVATION_DEG, az, TARGET_DISTANCE, size) for az in target_azimuths_deg()]


def stack_cameras(cameras: list[Camera]) -> tuple[np.ndarray, np.ndarray]:
    """(N,3,3) intrinsics and (N,3,4) poses, float64."""
    return np.stack([c.K for c in cameras]), np.stack([c.w2c for c in cameras])


def model_azimuth_buffer(num_views: int = NUM_VIEWS) -> np.ndarray:
    """SyncDreamer's ``azimuth`` buffer: ``(az + pi) mod 2pi - pi`` in float32 (index 8 -> -pi)."""
    # The pickle stores azimuths as float32 of i*2pi/16; recompute the same float32 values.
    az = np.array([np.float32(i * 2 * math.pi / num_views) for i in range(num_views)], dtype=np.float32)
    pi = np.float32(math.pi)
    return np.mod(az + pi, np.float32(2 * math.pi)).astype(np.float32) - pi


def viewpoint_embedding(input_elevation_deg: float, num_views: int = NUM_VIEWS) -> np.ndarray:
    """SyncDreamer's 4-d viewpoint embedding of each target view (float32, shape (num_views, 4)).

    ``[d_e, sin(d_a), cos(d_a), 0]`` with ``d_e = theta_in - 30deg`` (the official code negates both
    elevations: Zero123's polar-angle convention), ``d_a = azimuth[n] - azimuth[0]`` from the wrapped
    float32 azimuth buffer. The input view is always assumed to be at azimuth 0.
    """

    azimuth = torch.from_numpy(model_azimuth_buffer(num_views))
    theta_in = np.float32(np.deg2rad(np.float32(input_elevation_deg)))
    target_el = np.float32(np.deg2rad(np.float32(TARGET_ELEVATION_DEG)))
    d_e = float(np.float32(-target_el) - np.float32(-theta_in))
    d_a = azimuth - azimuth[0]
    emb = torch.stack(
        [torch.full_like(d_a, d_e), torch.sin(d_a), torch.cos(d_a), torch.zeros_like(d_a)], dim=-1
    )
    return emb.numpy().astype(np.float32)
