"""3DiM stochastic conditioning on a single-view, pose-conditioned denoiser such as Zero123.

Views are generated one after another. For each target the whole reverse chain runs (Zero123's DDIM,
:mod:`sd3d.sampling.ddim`, Zero123's variant), and at **every denoising step** the conditioning view is drawn
uniformly at random from the views available so far: the input plus every target already finished
(Watson et al. 2022; docs/reference/zero123.md §6). The drawn view supplies the conditional branch's
context token ``cc_projection([CLIP(view), T(view -> target)])`` and concat latent; the relative pose
comes from the two absolute camera centres. The unconditional branch (zero token, zero concat) does not
depend on the draw, so a step costs what a plain Zero123 step costs.

Only *finished* views are used as conditioning (Zero123 was trained on clean images); how a finished
latent becomes a conditioning view (decode, quantise, re-encode) is the caller's ``finish`` callback.
Nothing here knows the network: it needs ``project`` and ``guided_eps`` (:class:`Denoiser`).

Randomness: the latent noise (``x_T`` and one draw per step, per target in generation order) comes
from ``noise_generator``; the draws of the conditioning view from a separate ``choice_generator``,
and every draw is recorded, so a run is reproducible and inspectable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from sd3d.core.progress import Progress, resolve
from sd3d.core.zero123_pose import relative_pose
from sd3d.sampling.ddim import ZERO123, DDIMTables, ddim_sample

INPUT_VIEW = -1
"""The ``view_id`` of the input view; finished targets use their target index."""


@dataclass(frozen=True)
class ConditioningView:
    """A view that can condition later targets: its absolute camera centre and cached encodings.

    ``clip_embed`` (1,1,E) and ``concat_latent`` (1,C,h,w) are computed once per view.
    """

    view_id: int
    center: np.ndarray
    clip_embed: torch.Tensor
    concat_latent: torch.Tensor


class Denoiser(Protocol):
    """What the sampler needs from the network (:class:`sd3d.models.zero123.Zero123` provides it)."""

    def project(self, clip_embed: torch.Tensor, pose: torch.Tensor) -> torch.Tensor: ...

    def guided_eps(
        self,
        x_noisy: torch.Tensor,
        timestep: int,
        context: torch.Tensor,
        concat: torch.Tensor,
        cfg_scale: float,
    ) -> torch.Tensor: ...


# finish(target_index, final_latent (1,C,h,w)) -> the finished view as a conditioning view
FinishFn = Callable[[int, torch.Tensor], ConditioningView]


@dataclass(frozen=True)
class StochasticConditioningResult:
    """``latents``: (N,C,h,w) final latents in *target* order. ``order``: the generation order.

    ``draws[n]``: for target ``n``, the ``view_id`` drawn at each denoising step (first step first);
    ``INPUT_VIEW`` (-1) is the input, any other value the target index of a finished view.
    """

    latents: torch.Tensor
    order: tuple[int, ...]
    draws: tuple[tuple[int, ...], ...]


def angular_order(input_center: np.ndarray, target_centers: Sequence[np.ndarray]) -> tuple[int, ...]:
    """Targets by increasing angle between their direction and the input's (ties: lower index first)."""
    u = np.asarray(input_center, np.float64)
    u = u / np.linalg.norm(u)

    def angle(c: np.ndarray) -> float:
        v = np.asarray(c, np.float64)
        return math.acos(float(np.clip(np.dot(u, v / np.linalg.norm(v)), -1.0, 1.0)))

    angles = [angle(c) for c in target_centers]
    # Round so that views symmetric about the input tie exactly and keep index order.
    return tuple(sorted(range(len(angles)), key=lambda i: (round(angles[i], 9), i)))


def sample_stochastic_conditioning(
    denoiser: Denoiser,
    input_view: ConditioningView,
    target_centers: Sequence[np.ndarray],
    finish: FinishFn,
    tables: DDIMTables,
    latent_shape: tuple[int, int, int],
    cfg_scale: float,
    noise_generator: torch.Generator,
    choice_generator: torch.Generator,
    order: Sequence[int] | None = None,
    progress: Progress | None = None,
) -> StochasticConditioningResult:
    """Generate every target in ``order`` (default :func:`angular_order`), conditioning stochastically.

    ``latent_shape`` is (C,h,w); latents live on ``noise_generator``'s device. ``choice_generator``
    is a CPU generator. With the available set restricted to the input this is plain Zero123.
    """
    n = len(target_centers)
    order = (
        angular_order(input_view.center, target_centers) if order is None else tuple(int(i) for i in order)
    )
    if sorted(order) != list(range(n)):
        raise ValueError(f"order must be a permutation of range({n}), got {order}")
    device = noise_generator.device
    available: list[ConditioningView] = [input_view]
    contexts: dict[tuple[int, int], torch.Tensor] = {}
    latents: dict[int, torch.Tensor] = {}
    draws: dict[int, tuple[int, ...]] = {}
    bar = resolve(progress)

    def context_for(view: ConditioningView, target: int) -> torch.Tensor:
        key = (view.view_id, target)
        if key not in contexts:
            pose = torch.from_numpy(relative_pose(view.center, target_centers[target])).reshape(1, 1, -1)
            contexts[key] = denoiser.project(view.clip_embed, pose.to(view.clip_embed.device))
        return contexts[key]

    with bar.task("stochastic conditioning", n) as advance:
        for position, target in enumerate(order):
            chosen: list[int] = []

            def eps_fn(
                x: torch.Tensor, t: int, index: int, target: int = target, chosen: list = chosen
            ) -> torch.Tensor:
                k = int(torch.randint(len(available), (1,), generator=choice_generator).item())
                view = available[k]
                chosen.append(view.view_id)
                return denoiser.guided_eps(x, t, context_for(view, target), view.concat_latent, cfg_scale)

            x_T = torch.randn(
                (1, *latent_shape), generator=noise_generator, device=device, dtype=torch.float32
            )
            latent = ddim_sample(eps_fn, x_T, tables, generator=noise_generator, variant=ZERO123)
            latents[target] = latent
            draws[target] = tuple(chosen)
            if position < n - 1:  # the last view conditions nothing
                available.append(finish(target, latent))
            advance(1, info=f"view {target}")
    return StochasticConditioningResult(
        latents=torch.cat([latents[i] for i in range(n)], dim=0),
        order=order,
        draws=tuple(draws[i] for i in range(n)),
    )
