"""Per-view pose refinement: one small rigid correction per view, learned with the field.

Generated view sets are not rendered from exactly the cameras they are meant for: each view is off
by a degree or two and a little shift. Fitted at the nominal cameras, the field has to explain every
view's offset with the geometry, which blurs thin parts and doubles edges. Here view ``v``'s rays
are moved by a rotation ``R_v`` about the world origin (the object's centre, where every camera
looks) and a shift ``t_v``: a ray ``o + s d`` becomes ``R_v o + t_v + s R_v d``, i.e. the view's
camera-to-world map is composed with ``x -> R_v x + t_v``.

Anchoring: moving every camera the same way moves nothing in the images but the object, which the
field can follow forever: a common rotation about the origin, a common shift, and all cameras moving
towards (or away from) the object by the same distance, which with a smaller (larger) object gives
the same images to first order. Left free, that last one drifts even on perfectly consistent views
(measured: shifts of 2 % of the object and a scaled surface). So the rotations have mean zero, and
the shifts are projected off those four common motions (three shifts and the radial one); the
cameras keep their average frame and distance.
The rotation is the axis-angle vector's exponential written as ``x + a (w x) + b w x (w x)`` with
the series of ``a = sin|w|/|w|`` and ``b = (1 - cos|w|)/|w|^2`` (exact to ~1e-7 below 0.3 rad, the
regime a *small* correction lives in); at initialisation every correction is zero and applying it
changes no bit.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import nn

from sd3d.core.cameras import Camera


def _series(rotvec: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sin(th)/th`` and ``(1 - cos(th))/th^2`` of ``th = |rotvec|`` (..., 1), by their series."""
    th2 = rotvec.square().sum(-1, keepdim=True)
    a = 1.0 - th2 / 6.0 * (1.0 - th2 / 20.0 * (1.0 - th2 / 42.0))
    b = 0.5 - th2 / 24.0 * (1.0 - th2 / 30.0 * (1.0 - th2 / 56.0))
    return a, b


def rotate(rotvec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``exp([rotvec]_x) x`` for matching (..., 3) tensors (Rodrigues, see the module docstring)."""
    a, b = _series(rotvec)
    wx = torch.cross(rotvec, x, dim=-1)
    return x + a * wx + b * torch.cross(rotvec, wx, dim=-1)


def rotation_matrices(rotvec: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) matrices of the rotations ``rotvec`` (N, 3): ``R @ x == rotate(rotvec, x)``; the
    identity, exactly, where a rotation vector is zero."""
    n = rotvec.shape[0]
    basis = torch.eye(3, device=rotvec.device, dtype=rotvec.dtype).expand(n, 3, 3)
    cols = rotate(rotvec[:, None, :].expand(n, 3, 3), basis)  # row k: the rotated basis vector e_k
    return cols.transpose(1, 2)


def _common_motions(centres: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis (3N, 4) of the shifts that move all N cameras alike: the same shift along
    x, y or z, and each camera along its own direction from the origin (``centres`` (N, 3))."""
    n = centres.shape[0]
    same = torch.eye(3, dtype=torch.float64).repeat(n, 1)  # (3N, 3)
    radial = centres.double() / centres.double().norm(dim=1, keepdim=True)
    basis, _ = torch.linalg.qr(torch.cat([same, radial.reshape(-1, 1)], dim=1))
    return basis


class ViewPoses(nn.Module):
    """Learned rigid corrections of the cameras whose centres are ``centres`` (N, 3): ``rotvec`` (N, 3)
    radians, ``shift`` (N, 3) world units, both initialised to zero (no random numbers are drawn)."""

    def __init__(self, centres: torch.Tensor, device: torch.device) -> None:
        super().__init__()
        n = centres.shape[0]
        self.rotvec = nn.Parameter(torch.zeros(n, 3, device=device))
        self.shift = nn.Parameter(torch.zeros(n, 3, device=device))
        self.register_buffer("_common", _common_motions(centres).float().to(device), persistent=False)

    def offsets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Anchored rotation vectors (mean zero) and shifts (none of the common motions), (N, 3) each."""
        flat = self.shift.reshape(-1)
        shift = flat - self._common @ (self._common.T @ flat)
        return self.rotvec - self.rotvec.mean(0, keepdim=True), shift.view_as(self.shift)

    def apply(
        self,
        origins: torch.Tensor,
        dirs: torch.Tensor,
        view: torch.Tensor,
        offsets: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rays (R, 3) of views ``view`` (R,) as their corrected cameras cast them. ``offsets``:
        this step's :meth:`offsets`, when the caller needs them for :meth:`penalty` too (computed
        once, their kernels are launched once)."""
        rotvec, shift = self.offsets() if offsets is None else offsets
        # one 3x3 matrix per view, then one batched product for origins and directions together:
        # the rotation's series per ray (twice) took ~50 kernels forward and ~80 backward per
        # training step, which on a GPU is bound by launching kernels; ~half of that now
        moved = rotation_matrices(rotvec)[view] @ torch.stack([origins, dirs], dim=-1)  # (R, 3, 2)
        return moved[..., 0] + shift[view], moved[..., 1]

    def penalty(self, offsets: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Mean over views of the squared correction (radians^2 + world units^2): keeps them small."""
        rotvec, shift = self.offsets() if offsets is None else offsets
        return (rotvec.square().sum(1) + shift.square().sum(1)).mean()

    @torch.no_grad()
    def matrices(self) -> np.ndarray:
        """(N, 3, 4) float64 ``[R | t]`` per view: the corrected ray of a nominal one is ``R o + t, R d``."""
        rotvec, shift = self.offsets()
        return torch.cat([rotation_matrices(rotvec), shift[:, :, None]], dim=2).double().cpu().numpy()


def corrected_cameras(cameras: list[Camera], corrections: np.ndarray | None) -> list[Camera]:
    """The cameras with each view's correction ``[R | t]`` (N, 3, 4) applied (``None``: unchanged).

    A corrected camera sees world point ``x`` where the nominal one sees ``R^T (x - t)``, so its
    world-to-camera map is ``w2c o [R^T | -R^T t]``.
    """
    if corrections is None:
        return list(cameras)
    out = []
    for cam, corr in zip(cameras, corrections, strict=True):
        rot, shift = corr[:, :3], corr[:, 3]
        w2c = np.concatenate([cam.R @ rot.T, (cam.t - cam.R @ rot.T @ shift)[:, None]], axis=1)
        out.append(replace(cam, w2c=w2c))
    return out
