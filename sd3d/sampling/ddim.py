"""The official SyncDreamer DDIM sampler (``SyncDDIMSampler``), independent of any network.

Tables (reference-syncdreamer.md §4.2): uniform timesteps ``range(0, T, T // S) + 1`` (1, 21, ...,
981 for S = 50), or the sampler's other choice, ``ddim_discretize="quad"`` (CompVis'
``make_ddim_timesteps``): ``int(linspace(0, sqrt(0.8 T), S) ** 2) + 1``, denser near t = 0 and ending
at 801; ``alphas[i] = abar[ts[i]]``; ``alphas_prev[i] = abar[ts[i-1]]`` with
``alphas_prev[0] = abar[0]`` (not 1); ``sigma = eta sqrt((1 - a_prev)/(1 - a) (1 - a/a_prev))``
computed in float64 from the float32 tables and stored float32 (bit-exact vs the official tables).

Update (§4.3), all float32: ``x0 = (x - sqrt(1 - a) eps) / sqrt(a)``;
``x_prev = sqrt(a_prev) x0 + sqrt(max(1 - a_prev - sigma^2, 1e-7)) eps`` plus ``sigma z`` except on
the last step (index 0), which still keeps the direction term.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from sd3d.core.progress import Progress, resolve
from sd3d.sampling.schedule import NoiseSchedule

# eps_fn(x_t, timestep, index) -> eps, all views at once; ``index`` counts down S-1 .. 0.
EpsFn = Callable[[torch.Tensor, int, int], torch.Tensor]


@dataclass(frozen=True)
class DDIMTables:
    """Per-step scalars, index i <-> ``timesteps[i]`` (ascending); sampling visits i = S-1 .. 0."""

    timesteps: np.ndarray  # int64 (S,)
    alphas: torch.Tensor  # float32 (S,)
    alphas_prev: torch.Tensor
    sigmas: torch.Tensor
    sqrt_one_minus_alphas: torch.Tensor

    @property
    def steps(self) -> int:
        return int(self.timesteps.shape[0])

    def to(self, device: torch.device | str) -> DDIMTables:
        """The same tables on ``device``: the per-step scalars are then read without host copies."""
        return DDIMTables(
            timesteps=self.timesteps,
            alphas=self.alphas.to(device),
            alphas_prev=self.alphas_prev.to(device),
            sigmas=self.sigmas.to(device),
            sqrt_one_minus_alphas=self.sqrt_one_minus_alphas.to(device),
        )


DISCRETIZATIONS = ("uniform", "quad")


def ddim_timesteps(steps: int, num_timesteps: int = 1000, discretize: str = "uniform") -> np.ndarray:
    """The official DDIM timesteps, ascending.

    ``uniform``: ``range(0, T, T // S) + 1`` (a step count that does not divide T gives more steps).
    ``quad``: ``int(linspace(0, sqrt(0.8 T), S) ** 2) + 1``, exactly S entries; for S above ~30 the
    first ones repeat (1, 1, 2, ... for S = 50), as in the official code: a repeated timestep is a
    step with ``a_prev == a`` and sigma 0, which leaves the latent unchanged up to round-off.
    """
    if steps < 1 or steps > num_timesteps:
        raise ValueError(f"steps must be in [1, {num_timesteps}], got {steps}")
    if discretize == "quad":
        return (np.linspace(0, np.sqrt(num_timesteps * 0.8), steps) ** 2).astype(np.int64) + 1
    if discretize != "uniform":
        raise ValueError(f"unknown DDIM discretization {discretize!r}: use {' or '.join(DISCRETIZATIONS)}")
    c = num_timesteps // steps
    ts = np.asarray(list(range(0, num_timesteps, c)), dtype=np.int64) + 1
    if ts[-1] >= num_timesteps:
        raise ValueError(
            f"{steps} steps put the last DDIM timestep at {ts[-1]}, past the {num_timesteps}-step schedule"
        )
    return ts


def ddim_tables(
    schedule: NoiseSchedule, steps: int, eta: float = 1.0, discretize: str = "uniform"
) -> DDIMTables:
    """The official tables, bit-exact: every entry equals the SyncDreamer sampler's float32 value.

    The rounding recipe that reproduces them: ``1 - a_prev`` in float32, the rest of sigma's
    expression in float64, ``sqrt(1 - a)`` in float32. ``discretize``: see :func:`ddim_timesteps`.
    """
    ts = ddim_timesteps(steps, schedule.num_timesteps, discretize)
    abar = schedule.alphas_cumprod.cpu().to(torch.float32)
    index = torch.from_numpy(ts)
    alphas = abar[index]
    alphas_prev = torch.cat([abar[:1], abar[index[:-1]]])
    a64 = alphas.double()
    sigmas = eta * torch.sqrt((1 - alphas_prev) / (1 - a64) * (1 - a64 / alphas_prev))
    return DDIMTables(
        timesteps=ts,
        alphas=alphas,
        alphas_prev=alphas_prev,
        sigmas=sigmas.float(),
        sqrt_one_minus_alphas=torch.sqrt(1.0 - alphas),
    )


def ddim_update(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    index: int,
    tables: DDIMTables,
    noise: torch.Tensor | None,
    min_direction: float | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DDIM arithmetic both official samplers share, in float32; returns ``(x_prev, pred_x0)``.

    ``pred_x0 = (x - sqrt(1-a) eps) / sqrt(a)``; ``x_prev = sqrt(a_prev) pred_x0 +
    sqrt(1 - a_prev - sigma^2) eps`` plus ``sigma noise`` when ``noise`` is given. The samplers
    differ only in ``min_direction`` (a lower clamp on ``1 - a_prev - sigma^2``: SyncDreamer's 1e-7,
    none in Zero123) and in which steps get noise, which their own step functions decide.
    """
    dev = x_t.device
    a_t = tables.alphas[index].to(dev)
    a_prev = tables.alphas_prev[index].to(dev)
    sigma = tables.sigmas[index].to(dev)
    sqrt_one_minus = tables.sqrt_one_minus_alphas[index].to(dev)
    x_t, eps = x_t.float(), eps.float()
    pred_x0 = (x_t - sqrt_one_minus * eps) / a_t.sqrt()
    direction = 1.0 - a_prev - sigma**2
    if min_direction is not None:
        direction = torch.clamp(direction, min=min_direction)
    x_prev = a_prev.sqrt() * pred_x0 + direction.sqrt() * eps
    if noise is not None:
        x_prev = x_prev + sigma * noise.to(dev, torch.float32)
    return x_prev, pred_x0


def ddim_step(
    x_t: torch.Tensor, eps: torch.Tensor, index: int, tables: DDIMTables, noise: torch.Tensor | None
) -> torch.Tensor:
    """One SyncDreamer DDIM update at table ``index``; ``noise`` (like ``x_t``) is ignored on index 0."""
    return ddim_update(x_t, eps, index, tables, noise if index != 0 else None, min_direction=1e-7)[0]


def ddim_sample(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    tables: DDIMTables,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    description: str = "denoising",
) -> torch.Tensor:
    """Run the full DDIM loop from ``x_T``; per-step noise is ``randn`` from ``generator``.

    Noise is drawn once per step except the last, in step order, with ``x_T``'s shape, as the
    official sampler does (so a seeded generator gives reproducible samples).
    """
    x = x_T
    tables = tables.to(x_T.device)
    with resolve(progress).task(description, tables.steps) as advance:
        for index in reversed(range(tables.steps)):
            t = int(tables.timesteps[index])
            eps = eps_fn(x, t, index)
            noise = None
            if index != 0:
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
            x = ddim_step(x, eps, index, tables, noise)
            advance(1, info=f"t={t}")
    return x
