"""Per-view colour correction: one small affine colour transform per view, learned with the field.

Generated view sets drift in colour and exposure from view to view. Without a correction the
colour network has one colour per surface point to offer and every view pulls it its own way; the
residual leaks into the geometry (bumps that shade a point darker in one view) and the texture ends
up an average of differently exposed views. Here view ``v`` sees ``A_v c + b_v`` (a 3x3 matrix or a
per-channel gain, plus a bias) of the field's canonical colour ``c``; the field keeps one colour.

The transform applies to the object only: a ray's rendered colour is ``fg + (1 - opacity) * bg``
with ``fg`` the premultiplied object colour, and the corrected colour is
``A fg + opacity * b + (1 - opacity) * bg``, so the white background stays white.

Anchoring: a free transform per view and a free colour field can trade a common change of colour
between them forever. ``mean`` pins the average transform to the identity (the canonical colour is
the views' average appearance), ``first`` pins view 0's (the canonical colour is that view's).
At initialisation every transform is the identity exactly, and applying it then changes no bit.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

APPEARANCE_MODES = ("none", "gain", "affine")
APPEARANCE_ANCHORS = ("mean", "first")


class ViewAppearance(nn.Module):
    """Learned colour transforms of ``num_views`` views (``mode``: ``gain`` or ``affine``).

    Parameters are offsets from the identity (``delta`` (N, 3, 3) or (N, 3), ``bias`` (N, 3)),
    initialised to zero: no random numbers are drawn, so switching the module on does not change
    the training's random stream.
    """

    def __init__(self, num_views: int, mode: str, anchor: str, device: torch.device) -> None:
        super().__init__()
        if mode not in APPEARANCE_MODES[1:]:
            raise ValueError(f"unknown appearance mode {mode!r}: use {', '.join(APPEARANCE_MODES)}")
        if anchor not in APPEARANCE_ANCHORS:
            raise ValueError(f"unknown appearance anchor {anchor!r}: use {', '.join(APPEARANCE_ANCHORS)}")
        self.mode, self.anchor = mode, anchor
        shape = (num_views, 3, 3) if mode == "affine" else (num_views, 3)
        self.delta = nn.Parameter(torch.zeros(shape, device=device))
        self.bias = nn.Parameter(torch.zeros(num_views, 3, device=device))

    def _anchored(self, x: torch.Tensor) -> torch.Tensor:
        if self.anchor == "mean":
            return x - x.mean(0, keepdim=True)
        keep = torch.ones(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype)
        keep[0] = 0.0
        return x * keep

    def offsets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Anchored ``(A - I, b)``: (N, 3, 3) and (N, 3)."""
        delta = self._anchored(self.delta)
        if self.mode == "gain":
            delta = torch.diag_embed(delta)
        return delta, self._anchored(self.bias)

    def apply(
        self,
        rgb: torch.Tensor,
        opacity: torch.Tensor,
        view: torch.Tensor,
        background: float = 1.0,
        offsets: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Rendered colours (R, 3) over ``background`` as view ``view`` (R,) would show them.

        Written as ``rgb + (A - I) fg + opacity * b`` so that the identity adds exact zeros.
        ``offsets``: this step's :meth:`offsets`, when the caller needs them for :meth:`penalty`
        too (computed once, their kernels are launched once).
        """
        delta, bias = self.offsets() if offsets is None else offsets
        fg = rgb - (1.0 - opacity)[:, None] * background
        return rgb + torch.einsum("rij,rj->ri", delta[view], fg) + opacity[:, None] * bias[view]

    def penalty(self, offsets: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Mean over views of the squared distance to the identity (keeps corrections small)."""
        delta, bias = self.offsets() if offsets is None else offsets
        return (delta.square().sum((1, 2)) + bias.square().sum(1)).mean()

    @torch.no_grad()
    def matrices(self) -> np.ndarray:
        """(N, 3, 4) float64 ``[A | b]`` per view: view colour = ``A @ canonical + b``."""
        delta, bias = self.offsets()
        eye = torch.eye(3, device=delta.device, dtype=delta.dtype)
        return torch.cat([delta + eye, bias[:, :, None]], dim=2).double().cpu().numpy()


def to_canonical(images: np.ndarray, transforms: np.ndarray | None) -> np.ndarray:
    """Undo each view's transform on its (N, H, W, 3) image: ``A^-1 (colour - b)``, clipped to [0, 1].

    ``transforms`` (N, 3, 4) from :meth:`ViewAppearance.matrices`, or ``None`` (images unchanged).
    """
    if transforms is None:
        return images
    A, b = transforms[:, :, :3], transforms[:, :, 3]
    inv = np.linalg.inv(A)
    out = np.einsum("nij,nhwj->nhwi", inv, images.astype(np.float64) - b[:, None, None, :])
    return np.clip(out, 0.0, 1.0).astype(np.float32)
