"""Zero123's DDIM loop and 3DiM stochastic conditioning, with stand-in networks (no weights needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sd3d.core import cameras as cam
from sd3d.core.zero123_pose import orbit_center, relative_pose
from sd3d.sampling.ddim import ZERO123, ddim_sample, ddim_step, ddim_tables, ddim_update
from sd3d.sampling.schedule import zero123_schedule
from sd3d.sampling.stochastic_conditioning import (
    INPUT_VIEW,
    ConditioningView,
    angular_order,
    sample_stochastic_conditioning,
)

SHAPE = (2, 4, 8)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------------
# DDIM
# --------------------------------------------------------------------------------------------------
def test_schedule_is_float64_maths_stored_float32():
    ours = zero123_schedule()
    assert ours.alphas_cumprod.dtype == torch.float32
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    expected = torch.cumprod(1 - betas, 0).float()
    assert torch.equal(ours.alphas_cumprod, expected)
    # documented values (docs/reference/zero123.md §4.3)
    assert ours.alphas_cumprod[0].item() == pytest.approx(0.99915, abs=1e-7)
    assert ours.alphas_cumprod[980].item() == pytest.approx(0.0058437836, rel=1e-6)


def test_noise_is_added_at_every_step_including_the_last():
    tables = ddim_tables(zero123_schedule(), 50, variant=ZERO123)
    x = torch.randn(SHAPE, generator=_gen(0))
    eps = torch.randn(SHAPE, generator=_gen(1))
    z = torch.randn(SHAPE, generator=_gen(2))
    with_noise, _ = ddim_update(x, eps, 0, tables, z, variant=ZERO123)
    without, _ = ddim_update(x, eps, 0, tables, None, variant=ZERO123)
    sigma0 = tables.sigmas[0].item()
    assert sigma0 == pytest.approx(0.0206484, abs=1e-7)
    assert torch.allclose(with_noise - without, sigma0 * z, atol=1e-6)
    # SyncDreamer's sampler skips the noise on the last step (the only other difference: its clamp)
    sync = ddim_step(x, eps, 0, tables, z)
    assert torch.equal(sync, without)


def test_loop_draws_x_t_shaped_noise_once_per_step_in_order():
    """RNG order: the caller draws x_T; then one randn per step, the last step included."""
    tables = ddim_tables(zero123_schedule(), 10, variant=ZERO123)
    seen: list[int] = []

    def eps_fn(x, t, index):
        seen.append(t)
        return 0.1 * x

    gen = _gen(5)
    x_T = torch.randn(SHAPE, generator=gen)
    out = ddim_sample(eps_fn, x_T, tables, gen, variant=ZERO123)
    assert seen == list(reversed(tables.timesteps.tolist()))
    assert seen[0] == 901 and seen[-1] == 1

    gen = _gen(5)
    x = torch.randn(SHAPE, generator=gen)
    for index in reversed(range(tables.steps)):
        x, _ = ddim_update(x, 0.1 * x, index, tables, torch.randn(SHAPE, generator=gen), variant=ZERO123)
    assert torch.equal(out, x)


def test_eta_zero_is_deterministic_given_x_t():
    tables = ddim_tables(zero123_schedule(), 20, eta=0.0, variant=ZERO123)
    assert torch.count_nonzero(tables.sigmas) == 0
    x_T = torch.randn(SHAPE, generator=_gen(0))
    a = ddim_sample(lambda x, t, i: 0.05 * x, x_T, tables, _gen(1), variant=ZERO123)
    b = ddim_sample(lambda x, t, i: 0.05 * x, x_T, tables, _gen(2), variant=ZERO123)
    assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------------
# stochastic conditioning
# --------------------------------------------------------------------------------------------------
class RecordingDenoiser:
    """A stand-in Zero123: the context is the pose itself, and every conditional call is recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def project(self, clip_embed: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        return pose.reshape(1, 1, 4).float()

    def guided_eps(self, x, timestep, context, concat, cfg_scale):
        self.calls.append((context.clone(), concat.clone()))
        return 0.1 * x + 0.01 * concat.mean() + 0.01 * context.mean()


def _ring(n: int = 6) -> list[np.ndarray]:
    return [orbit_center(30.0, 360.0 * i / n, 1.5) for i in range(n)]


def _run(seed: int, choice_seed: int, n: int = 6, steps: int = 4):
    denoiser = RecordingDenoiser()
    input_center = orbit_center(10.0, 0.0, 1.5)
    input_view = ConditioningView(
        INPUT_VIEW, input_center, torch.zeros(1, 1, 4), torch.full((1, 2, 4, 4), -1.0)
    )

    def finish(target: int, latent: torch.Tensor) -> ConditioningView:
        # tag the view's concat latent with its target index so the draws can be traced in the calls
        return ConditioningView(
            target, _ring(n)[target], torch.zeros(1, 1, 4), torch.full((1, 2, 4, 4), float(target))
        )

    result = sample_stochastic_conditioning(
        denoiser,
        input_view,
        _ring(n),
        finish,
        ddim_tables(zero123_schedule(), steps, variant=ZERO123),
        (2, 4, 4),
        3.0,
        noise_generator=_gen(seed),
        choice_generator=_gen(choice_seed),
    )
    return result, denoiser


def test_angular_order_visits_nearby_views_first():
    order = angular_order(orbit_center(20.0, 0.0, 1.5), [c.center for c in cam.target_cameras()])
    assert order == (0, 1, 15, 2, 14, 3, 13, 4, 12, 5, 11, 6, 10, 7, 9, 8)


def test_draws_are_seeded_recorded_and_include_finished_views():
    result, _ = _run(seed=0, choice_seed=1)
    again, _ = _run(seed=0, choice_seed=1)
    other, _ = _run(seed=0, choice_seed=2)
    assert result.draws == again.draws and torch.equal(result.latents, again.latents)
    assert result.draws != other.draws
    assert all(len(d) == 4 for d in result.draws)
    # only the input and views finished *before* a target can condition it
    for position, target in enumerate(result.order):
        allowed = {INPUT_VIEW, *result.order[:position]}
        assert set(result.draws[target]) <= allowed
    assert set(result.draws[result.order[0]]) == {INPUT_VIEW}
    assert any(v != INPUT_VIEW for d in result.draws for v in d)  # finished views are really drawn


def test_conditional_branch_gets_the_drawn_views_latent_and_pose():
    result, denoiser = _run(seed=3, choice_seed=4)
    ring = _ring()
    input_center = orbit_center(10.0, 0.0, 1.5)
    calls = iter(denoiser.calls)
    for target in result.order:
        for drawn in result.draws[target]:
            context, concat = next(calls)
            assert torch.all(concat == (-1.0 if drawn == INPUT_VIEW else float(drawn)))
            source = input_center if drawn == INPUT_VIEW else ring[drawn]
            assert torch.equal(context.reshape(4), torch.from_numpy(relative_pose(source, ring[target])))
    assert next(calls, None) is None


def test_latent_noise_does_not_depend_on_the_draws():
    """Noise and draws come from separate generators: changing one leaves the other's stream intact."""
    a, _ = _run(seed=7, choice_seed=1)
    b, _ = _run(seed=8, choice_seed=1)
    assert a.draws == b.draws
    assert not torch.equal(a.latents, b.latents)


def test_a_single_target_is_plain_zero123():
    denoiser = RecordingDenoiser()
    center = orbit_center(0.0, 0.0, 1.5)
    view = ConditioningView(INPUT_VIEW, center, torch.zeros(1, 1, 4), torch.zeros(1, 2, 4, 4))
    target = orbit_center(30.0, 90.0, 1.5)
    tables = ddim_tables(zero123_schedule(), 5, variant=ZERO123)
    result = sample_stochastic_conditioning(
        denoiser,
        view,
        [target],
        lambda t, x: pytest.fail("nothing to finish"),
        tables,
        (2, 4, 4),
        3.0,
        _gen(0),
        _gen(1),
    )
    assert result.draws == ((INPUT_VIEW,) * 5,)
    gen = _gen(0)
    x_T = torch.randn((1, 2, 4, 4), generator=gen)
    context = torch.from_numpy(relative_pose(center, target)).reshape(1, 1, 4)
    plain = ddim_sample(
        lambda x, t, i: denoiser.guided_eps(x, t, context, view.concat_latent, 3.0),
        x_T,
        tables,
        gen,
        variant=ZERO123,
    )
    assert torch.equal(result.latents, plain)


def test_order_must_be_a_permutation():
    denoiser = RecordingDenoiser()
    view = ConditioningView(
        INPUT_VIEW, orbit_center(0, 0, 1.5), torch.zeros(1, 1, 4), torch.zeros(1, 2, 4, 4)
    )
    with pytest.raises(ValueError, match="permutation"):
        sample_stochastic_conditioning(
            denoiser,
            view,
            _ring(3),
            None,
            ddim_tables(zero123_schedule(), 2, variant=ZERO123),
            (2, 4, 4),
            3.0,
            _gen(0),
            _gen(1),
            order=[0, 0, 1],
        )
