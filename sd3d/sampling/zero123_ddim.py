"""Zero123's DDIM sampler (``DDIMSampler`` as the official demo runs it), independent of any network.

What it shares with SyncDreamer's sampler (:mod:`sd3d.sampling.ddim`, reused here): the "uniform"
timesteps ``range(0, 1000, 1000 // S) + 1`` (S = 75 runs 77 steps), the :class:`DDIMTables` layout
(``alphas_prev[0] = abar[0]``, sigma from the float32 tables in float64) and the integer timestep fed
to the network. What differs (reference-zero123.md §4.3-4.4):

* the tables' last-bit rounding (:func:`zero123_ddim_tables` reproduces Zero123's exactly);

* the schedule is computed in float64 and stored float32 (:func:`zero123_schedule`);
* the direction coefficient ``sqrt(1 - a_prev - sigma^2)`` is not clamped;
* fresh noise ``sigma z`` is added at **every** step, the last one included (so the returned latent
  carries a little noise, sigma_0 = 0.0206 at S = 50);
* eta defaults to 1 (fully stochastic DDIM), as in the demo.

RNG order for a seeded run: ``x_T``, then one draw of ``x_T``'s shape per step, in step order.
"""

from __future__ import annotations

import numpy as np
import torch

from sd3d.core.progress import Progress, resolve
from sd3d.sampling.ddim import DDIMTables, EpsFn, ddim_timesteps, ddim_update
from sd3d.sampling.schedule import NoiseSchedule, scaled_linear_schedule

__all__ = [
    "DEFAULT_ETA",
    "DDIMTables",
    "ddim_timesteps",
    "zero123_ddim_sample",
    "zero123_ddim_step",
    "zero123_ddim_tables",
    "zero123_schedule",
]

DEFAULT_ETA = 1.0


def zero123_schedule(
    num_timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012
) -> NoiseSchedule:
    """The LDM "linear" schedule (squares of a linspace of square roots) computed in float64."""
    return scaled_linear_schedule(num_timesteps, linear_start, linear_end, compute_dtype=torch.float64)


def zero123_ddim_tables(
    steps: int, eta: float = DEFAULT_ETA, schedule: NoiseSchedule | None = None
) -> DDIMTables:
    """DDIM tables for ``steps`` requested steps (the executed count is ``tables.steps``), bit-exact.

    Built here with the official Zero123 rounding rather than taken from SyncDreamer's tables (whose
    sampler rounds differently in the last bit): ``alphas = abar[ts]`` and ``alphas_prev`` are float32
    values; ``sqrt(1 - a)`` is numpy's float32 sqrt; sigma's ``(1 - a_prev) / (1 - a)``, with ``a`` a
    float32 tensor and ``a_prev`` a float64 array, runs as ``reciprocal(1 - a)`` in float32 times
    ``(1 - a_prev)`` in float64 (``Tensor.__rtruediv__``), the rest in float64. All four tables equal
    the fixture's ``ddim50_*`` arrays exactly.
    """
    schedule = zero123_schedule() if schedule is None else schedule
    ts = ddim_timesteps(steps, schedule.num_timesteps)
    abar = schedule.alphas_cumprod.detach().cpu().to(torch.float32)
    index = torch.from_numpy(ts)
    a32 = abar[index]
    a_prev = torch.cat([abar[:1], abar[index[:-1]]]).double()  # float32 values held in float64
    inv = torch.reciprocal(1.0 - a32).double()
    sigmas = float(eta) * torch.sqrt((1.0 - a_prev) * inv * (1.0 - a32.double() / a_prev))
    sqrt_one_minus = torch.from_numpy(np.sqrt(1.0 - a32.numpy()))
    return DDIMTables(
        timesteps=ts,
        alphas=a32,
        alphas_prev=a_prev.to(torch.float32),
        sigmas=sigmas.to(torch.float32),
        sqrt_one_minus_alphas=sqrt_one_minus.to(torch.float32),
    )


def zero123_ddim_step(
    x_t: torch.Tensor, eps: torch.Tensor, index: int, tables: DDIMTables, noise: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One official update at table ``index``, in float32; returns ``(x_prev, pred_x0)``.

    ``pred_x0 = (x - sqrt(1-a) eps) / sqrt(a)`` (no clipping); ``x_prev = sqrt(a_prev) pred_x0 +
    sqrt(1 - a_prev - sigma^2) eps + sigma noise`` (no clamp; ``noise=None`` only for eta = 0 use).
    """
    return ddim_update(x_t, eps, index, tables, noise, min_direction=None)


def zero123_ddim_sample(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    tables: DDIMTables,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    description: str = "denoising",
) -> torch.Tensor:
    """The full loop from ``x_T``; one ``randn`` of ``x_T``'s shape from ``generator`` per step (the last too)."""
    x = x_T.float()
    with resolve(progress).task(description, tables.steps) as advance:
        for index in reversed(range(tables.steps)):
            t = int(tables.timesteps[index])
            eps = eps_fn(x, t, index)
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
            x, _ = zero123_ddim_step(x, eps, index, tables, noise)
            advance(1, info=f"t={t}")
    return x
