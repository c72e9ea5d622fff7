"""One entry point for the noise solvers: ``make_sampler(name, schedule, steps, ...)``.

A :class:`Sampler` is what a pipeline needs from a solver: the timesteps it will visit (for progress
and provenance) and a call that runs the loop from ``x_T`` with an ``eps_fn(x, t, index)``. DDIM
(either official variant) draws per-step noise from the generator it is given; the diffusers solvers
are deterministic. Pipelines pick a solver by name and never branch on it themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from sd3d.core.progress import Progress
from sd3d.sampling.ddim import SYNCDREAMER, DDIMVariant, EpsFn, ddim_sample, ddim_tables
from sd3d.sampling.diffusers_samplers import DIFFUSERS_SAMPLERS, diffusers_sample, make_scheduler
from sd3d.sampling.schedule import NoiseSchedule

SAMPLERS = ("ddim", *DIFFUSERS_SAMPLERS)

_Loop = Callable[[EpsFn, torch.Tensor, "torch.Generator | None", "Progress | None", str], torch.Tensor]


@dataclass(frozen=True)
class Sampler:
    """A configured solver: ``timesteps`` in visiting order (descending) and the loop itself."""

    name: str
    timesteps: tuple[int, ...]
    loop: _Loop

    @property
    def steps(self) -> int:
        """How many network evaluations the loop makes (a DDIM count that does not divide T adds steps)."""
        return len(self.timesteps)

    def __call__(
        self,
        eps_fn: EpsFn,
        x_T: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: Progress | None = None,
        description: str = "denoising",
    ) -> torch.Tensor:
        return self.loop(eps_fn, x_T, generator, progress, description)


def make_sampler(
    name: str,
    schedule: NoiseSchedule,
    steps: int,
    *,
    eta: float = 1.0,
    discretize: str = "uniform",
    variant: DDIMVariant = SYNCDREAMER,
) -> Sampler:
    """The solver ``name`` (one of :data:`SAMPLERS`) over ``schedule`` with ``steps`` steps.

    ``eta``, ``discretize`` and ``variant`` configure DDIM; the diffusers solvers take none of them
    (they are deterministic and use diffusers' own timestep spacing), so asking for a non-default
    ``discretize`` with them is an error rather than silently ignored.
    """
    if name == "ddim":
        tables = ddim_tables(schedule, steps, eta, discretize, variant)

        def ddim_loop(eps_fn, x_T, generator, progress, description):
            return ddim_sample(eps_fn, x_T, tables, generator, progress, description, variant)

        return Sampler(name, tuple(int(t) for t in tables.timesteps[::-1]), ddim_loop)
    if name in DIFFUSERS_SAMPLERS:
        if discretize != "uniform":
            raise ValueError(
                f"the {name} sampler has its own timestep spacing: discretize applies to ddim only"
            )
        timesteps = tuple(int(t) for t in make_scheduler(name, schedule, steps).timesteps)

        def diffusers_loop(eps_fn, x_T, generator, progress, description):
            return diffusers_sample(name, eps_fn, x_T, schedule, steps, progress, description)

        return Sampler(name, timesteps, diffusers_loop)
    raise ValueError(f"unknown sampler {name!r}: choose from {', '.join(SAMPLERS)}")
