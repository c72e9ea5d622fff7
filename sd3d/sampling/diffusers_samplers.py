"""Extra samplers from diffusers (DPM-Solver++ and UniPC) behind the same eps-function interface as DDIM.

They are configured with the model's own float32 betas and diffusers' Stable-Diffusion timestep
convention ("leading" spacing, offset 1; diffusers spaces it by ``T // (S + 1)``, so 50 steps visit
951, 932, ..., 20 rather than DDIM's 981, ..., 1). They are deterministic (no per-step noise). diffusers is imported lazily: ``import sd3d.sampling``
stays cheap, and the default DDIM path never needs it.
"""

from __future__ import annotations

import torch

from sd3d.core.progress import Progress, resolve
from sd3d.sampling.ddim import EpsFn
from sd3d.sampling.schedule import NoiseSchedule

DIFFUSERS_SAMPLERS = ("dpmpp", "unipc")


def make_scheduler(name: str, schedule: NoiseSchedule, steps: int):
    """A diffusers scheduler for ``name`` (``dpmpp`` or ``unipc``) with ``set_timesteps(steps)`` done."""
    common = dict(
        num_train_timesteps=schedule.num_timesteps,
        trained_betas=schedule.betas.cpu().numpy(),
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
    )
    if name == "dpmpp":
        from diffusers import DPMSolverMultistepScheduler

        scheduler = DPMSolverMultistepScheduler(
            algorithm_type="dpmsolver++", solver_order=2, lower_order_final=True, **common
        )
    elif name == "unipc":
        from diffusers import UniPCMultistepScheduler

        scheduler = UniPCMultistepScheduler(solver_order=2, lower_order_final=True, **common)
    else:
        raise ValueError(f"unknown diffusers sampler {name!r}; known: {', '.join(DIFFUSERS_SAMPLERS)}")
    scheduler.set_timesteps(steps)
    return scheduler


def diffusers_sample(
    name: str,
    eps_fn: EpsFn,
    x_T: torch.Tensor,
    schedule: NoiseSchedule,
    steps: int,
    progress: Progress | None = None,
    description: str = "denoising",
) -> torch.Tensor:
    """Run a diffusers multistep solver from ``x_T`` (any shape) with ``eps_fn(x, t, index)``."""
    scheduler = make_scheduler(name, schedule, steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    x = x_T.float()
    with resolve(progress).task(description, len(timesteps)) as advance:
        for i, t in enumerate(timesteps):
            eps = eps_fn(x, t, len(timesteps) - 1 - i).float()
            x = scheduler.step(eps, t, x).prev_sample
            advance(1, info=f"t={t}")
    return x
