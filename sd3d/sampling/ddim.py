"""DDIM, as the two official samplers run it, independent of any network.

SyncDreamer's ``SyncDDIMSampler`` and Zero123's ``DDIMSampler`` share the arithmetic and differ in
three details, which a :class:`DDIMVariant` names (:data:`SYNCDREAMER`, :data:`ZERO123`):

* **table rounding**: both compute ``alphas[i] = abar[ts[i]]``, ``alphas_prev[i] = abar[ts[i-1]]``
  (``alphas_prev[0] = abar[0]``, not 1) and ``sigma = eta sqrt((1 - a_prev)/(1 - a) (1 - a/a_prev))``
  from float32 tables, but their float32/float64 promotions differ in the last bit, and each variant
  reproduces its own sampler's tables;
* **the direction clamp**: ``sqrt(max(1 - a_prev - sigma^2, 1e-7))`` in SyncDreamer, unclamped in Zero123;
* **noise on the last step**: SyncDreamer adds ``sigma z`` on every step but the last (index 0, which
  still keeps the direction term); Zero123 adds it on every step, so its result carries a little noise.

Timesteps: ``uniform`` ``range(0, T, T // S) + 1`` (1, 21, ..., 981 for S = 50; a step count that does
not divide T gives more steps) or ``quad`` ``int(linspace(0, sqrt(0.8 T), S) ** 2) + 1``.
Update, all float32: ``x0 = (x - sqrt(1 - a) eps) / sqrt(a)``;
``x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z``.
RNG order of a seeded run: one ``randn`` of ``x``'s shape per noised step, in step order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
    if not uniform_steps_usable(steps, num_timesteps):
        raise ValueError(
            f"{steps} steps put the last DDIM timestep at {ts[-1]}, past the {num_timesteps}-step schedule"
        )
    return ts


def uniform_steps_usable(steps: int, num_timesteps: int = 1000) -> bool:
    """Whether the official uniform rule ``range(0, T, T // S) + 1`` stays below ``T`` for ``S`` steps.

    It does not for 99 of the counts 1..500 at T = 1000 (3, 9, 27, 36, 37, 101-111, 251-333): their
    last timestep lands on T, which the official samplers index out of range."""
    c = num_timesteps // steps
    return (num_timesteps - 1) // c * c + 1 < num_timesteps


def nearest_usable_steps(steps: int, max_steps: int, num_timesteps: int = 1000) -> list[int]:
    """The closest step counts below and above ``steps`` (within 1..``max_steps``) that the uniform
    rule accepts: what an error for an unusable count suggests instead."""
    below = next((s for s in range(steps - 1, 0, -1) if uniform_steps_usable(s, num_timesteps)), None)
    above = next((s for s in range(steps + 1, max_steps + 1) if uniform_steps_usable(s, num_timesteps)), None)
    return [s for s in (below, above) if s is not None]


@dataclass(frozen=True)
class DDIMVariant:
    """The details in which the official samplers differ (see the module docstring)."""

    name: str
    min_direction: float | None  # lower clamp of ``1 - a_prev - sigma^2``; None: no clamp
    noise_on_last_step: bool
    table_rounding: str  # "syncdreamer" or "zero123"


SYNCDREAMER = DDIMVariant(
    "syncdreamer", min_direction=1e-7, noise_on_last_step=False, table_rounding="syncdreamer"
)
ZERO123 = DDIMVariant("zero123", min_direction=None, noise_on_last_step=True, table_rounding="zero123")


def ddim_tables(
    schedule: NoiseSchedule,
    steps: int,
    eta: float = 1.0,
    discretize: str = "uniform",
    variant: DDIMVariant = SYNCDREAMER,
) -> DDIMTables:
    """The official tables, bit-exact with the variant's own sampler.

    SyncDreamer's rounding: ``1 - a_prev`` in float32, the rest of sigma's expression in float64,
    ``sqrt(1 - a)`` in float32. Zero123's: ``a_prev`` held in float64, sigma's ``(1 - a_prev) / (1 - a)``
    as ``reciprocal(1 - a)`` in float32 times ``(1 - a_prev)`` in float64 (``Tensor.__rtruediv__``), the
    rest in float64, and ``sqrt(1 - a)`` by numpy in float32. ``discretize``: see :func:`ddim_timesteps`.
    """
    ts = ddim_timesteps(steps, schedule.num_timesteps, discretize)
    abar = schedule.alphas_cumprod.detach().cpu().to(torch.float32)
    index = torch.from_numpy(ts)
    alphas = abar[index]
    alphas_prev = torch.cat([abar[:1], abar[index[:-1]]])
    a64 = alphas.double()
    if variant.table_rounding == "zero123":
        a_prev64 = alphas_prev.double()
        inv = torch.reciprocal(1.0 - alphas).double()
        sigmas = float(eta) * torch.sqrt((1.0 - a_prev64) * inv * (1.0 - a64 / a_prev64))
        sqrt_one_minus = torch.from_numpy(np.sqrt(1.0 - alphas.numpy()))
    elif variant.table_rounding == "syncdreamer":
        sigmas = eta * torch.sqrt((1 - alphas_prev) / (1 - a64) * (1 - a64 / alphas_prev))
        sqrt_one_minus = torch.sqrt(1.0 - alphas)
    else:
        raise ValueError(f"unknown DDIM table rounding {variant.table_rounding!r}")
    return DDIMTables(
        timesteps=ts,
        alphas=alphas,
        alphas_prev=alphas_prev,
        sigmas=sigmas.to(torch.float32),
        sqrt_one_minus_alphas=sqrt_one_minus.to(torch.float32),
    )


def ddim_update(
    x_t: torch.Tensor,
    eps: torch.Tensor,
    index: int,
    tables: DDIMTables,
    noise: torch.Tensor | None,
    variant: DDIMVariant = SYNCDREAMER,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One update at table ``index``, in float32; returns ``(x_prev, pred_x0)``.

    ``noise`` is added (times sigma) unless it is None or this is the last step of a variant that
    adds none there; the clamp of the direction term is the variant's.
    """
    dev = x_t.device
    a_t = tables.alphas[index].to(dev)
    a_prev = tables.alphas_prev[index].to(dev)
    sigma = tables.sigmas[index].to(dev)
    sqrt_one_minus = tables.sqrt_one_minus_alphas[index].to(dev)
    x_t, eps = x_t.float(), eps.float()
    pred_x0 = (x_t - sqrt_one_minus * eps) / a_t.sqrt()
    direction = 1.0 - a_prev - sigma**2
    if variant.min_direction is not None:
        direction = torch.clamp(direction, min=variant.min_direction)
    x_prev = a_prev.sqrt() * pred_x0 + direction.sqrt() * eps
    if noise is not None and (index != 0 or variant.noise_on_last_step):
        x_prev = x_prev + sigma * noise.to(dev, torch.float32)
    return x_prev, pred_x0


def ddim_step(*args: Any, **kwargs: Any) -> torch.Tensor:
    """``x_prev`` of :func:`ddim_update`, which takes the same arguments (declared there once); what
    the sampling loop needs (SyncDreamer ignores ``noise`` on index 0)."""
    return ddim_update(*args, **kwargs)[0]


def ddim_sample(
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    tables: DDIMTables,
    generator: torch.Generator | None = None,
    progress: Progress | None = None,
    description: str = "denoising",
    variant: DDIMVariant = SYNCDREAMER,
) -> torch.Tensor:
    """Run the full DDIM loop from ``x_T``; per-step noise is ``randn`` from ``generator``.

    Noise is drawn in step order with ``x_T``'s shape, once per step that the variant noises (all but
    the last for SyncDreamer, every step for Zero123), as the official samplers do, so a seeded
    generator reproduces their samples.
    """
    x = x_T.float()
    tables = tables.to(x_T.device)
    with resolve(progress).task(description, tables.steps) as advance:
        for index in reversed(range(tables.steps)):
            t = int(tables.timesteps[index])
            eps = eps_fn(x, t, index)
            noise = None
            if index != 0 or variant.noise_on_last_step:
                noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
            x = ddim_step(x, eps, index, tables, noise, variant)
            advance(1, info=f"t={t}")
    return x
