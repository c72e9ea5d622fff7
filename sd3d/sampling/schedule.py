"""The diffusion noise schedule ("scaled linear" betas, T = 1000) and its derived tables.

SyncDreamer computes everything in float32 (its code comment says float64, the tensors are not);
Zero123 computes in float64 and stores float32. ``compute_dtype`` picks either; the official
SyncDreamer checkpoint's schedule buffers (``betas``, ``alphas_cumprod``, ...) are checked against
:meth:`NoiseSchedule.buffers` when a checkpoint is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NoiseSchedule:
    """``betas`` and ``alphas_cumprod`` (abar), both float32 tensors of length ``num_timesteps``."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def buffers(self) -> dict[str, torch.Tensor]:
        """The seven schedule buffers of the official model's state dict, float32.

        The posterior entries are unused at inference; they are built the official way (promoted to
        float64, stored float32) only so a checkpoint's copies can be checked.
        """
        betas = self.betas.double()
        abar = self.alphas_cumprod.double()
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        out = {
            "betas": self.betas,
            "alphas": (1.0 - self.betas).float(),
            "alphas_cumprod": self.alphas_cumprod,
            "sqrt_alphas_cumprod": torch.sqrt(self.alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": torch.sqrt(1.0 - self.alphas_cumprod),
            "posterior_variance": posterior_variance.float(),
            "posterior_log_variance_clipped": torch.log(posterior_variance.clamp_min(1e-20)).float(),
        }
        return {k: v.to(torch.float32) for k, v in out.items()}


def scaled_linear_schedule(
    num_timesteps: int = 1000,
    linear_start: float = 0.00085,
    linear_end: float = 0.012,
    compute_dtype: torch.dtype = torch.float32,
) -> NoiseSchedule:
    """``betas = linspace(sqrt(start), sqrt(end), T) ** 2``; ``abar = cumprod(1 - betas)``."""
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=compute_dtype) ** 2
    abar = torch.cumprod(1.0 - betas, dim=0)
    return NoiseSchedule(betas=betas.to(torch.float32), alphas_cumprod=abar.to(torch.float32))
