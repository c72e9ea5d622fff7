"""A test double for the VAE decoder: synthetic weights decode to noise with no background, which the
reconstruction rightly refuses. For plumbing tests of ``sd3d run`` we keep the model's decoded pixels
inside a centred ellipse (darkened, so they never read as white) and make everything else white, so
each of the 16 views shows "an object" on a white background. Everything else stays real.

Run as a script it is the ``sd3d`` command with the double installed (for ``make batch`` tests).
"""

from __future__ import annotations

import torch

from sd3d.models.syncdreamer import SyncDreamer

_original = SyncDreamer.decode_latents


def _object_decode(self, latents: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    images = _original(self, latents, batch_size)
    h, w = images.shape[-2:]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    inside = ((yy / 0.55) ** 2 + (xx / 0.4) ** 2 < 1.0).to(images)
    obj = images.clamp(-1, 1) * 0.3 - 0.4
    return obj * inside + (1.0 - inside)


def install() -> None:
    SyncDreamer.decode_latents = _object_decode


def uninstall() -> None:
    SyncDreamer.decode_latents = _original


if __name__ == "__main__":
    install()
    from cli.app import entry

    entry()
