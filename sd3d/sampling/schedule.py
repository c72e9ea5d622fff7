"""The diffusion noise schedule ("scaled linear" betas, T = 1000) and its derived tables.

SyncDreamer computes everything in float32 (its code comment says float64, the tensors are not);
Zero123 computes in float64 and stores float32. ``compute_dtype`` picks either; the official
SyncDreamer checkpoint's schedule buffers (``betas``, ``alphas_cumprod``, ...) are compared with
:meth:`NoiseSchedule.buffers` when a checkpoint is loaded (:mod:`sd3d.models.buffers`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# SyncDreamer's lower clamp of ``posterior_log_variance_clipped`` (after the usual log(max(v, 1e-20))).
POSTERIOR_LOG_VARIANCE_MIN = -10.0


@dataclass(frozen=True)
class NoiseSchedule:
    """``betas`` and ``alphas_cumprod`` (abar), both float32 tensors of length ``num_timesteps``."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def buffers(self) -> dict[str, torch.Tensor]:
        """The seven schedule buffers of the official SyncDreamer state dict, float32.

        Only ``betas`` and ``alphas_cumprod`` matter at inference; the rest are training tables, built
        the way SyncDreamer's ``_init_schedule`` builds them only so a checkpoint's copies can be
        compared: ``1 - abar`` in float32, the posterior variance promoted to float64 (by the float64
        ``abar_prev``), its log clamped at 1e-20 *and then at -10* (SyncDreamer's own clamp: entry 0 is
        -10, where CompVis and Zero123 keep log(1e-20) = -46.05), all stored float32.
        """
        betas, abar = self.betas, self.alphas_cumprod
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1].double()])
        posterior_variance = betas.double() * (1.0 - abar_prev) / (1.0 - abar).double()
        log_variance = torch.log(posterior_variance.clamp_min(1e-20)).clamp_min(POSTERIOR_LOG_VARIANCE_MIN)
        out = {
            "betas": betas,
            "alphas": 1.0 - betas,
            "alphas_cumprod": abar,
            "sqrt_alphas_cumprod": torch.sqrt(abar),
            "sqrt_one_minus_alphas_cumprod": torch.sqrt(1.0 - abar),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": log_variance,
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


def zero123_schedule(
    num_timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012
) -> NoiseSchedule:
    """Zero123's schedule: the same "linear" betas (squares of a linspace of square roots), computed in
    float64 and stored float32 (SyncDreamer computes in float32)."""
    return scaled_linear_schedule(num_timesteps, linear_start, linear_end, compute_dtype=torch.float64)
