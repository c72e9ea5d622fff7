"""Schedule, DDIM tables and update rule vs the official numbers; sampler mechanics; diffusers samplers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from support.ulp import assert_within_ulps

from sd3d.sampling.ddim import (
    ddim_sample,
    ddim_step,
    ddim_tables,
    ddim_timesteps,
    nearest_usable_steps,
    uniform_steps_usable,
)
from sd3d.sampling.diffusers_samplers import diffusers_sample, make_scheduler
from sd3d.sampling.schedule import scaled_linear_schedule


@pytest.fixture(scope="module")
def vectors(reference_dir):
    return json.loads((reference_dir / "syncdreamer-reference-vectors.json").read_text())


@pytest.fixture(scope="module")
def schedule():
    return scaled_linear_schedule()


def test_schedule_is_the_official_float32_one(vectors, schedule):
    np.testing.assert_array_equal(schedule.betas.numpy(), np.float32(vectors["betas_float32"]))
    np.testing.assert_array_equal(
        schedule.alphas_cumprod.numpy(), np.float32(vectors["alphas_cumprod_float32"])
    )
    assert schedule.betas.dtype == schedule.alphas_cumprod.dtype == torch.float32


@pytest.mark.parametrize("steps", [50, 200])
def test_ddim_tables_match_the_official_sampler(vectors, schedule, steps):
    ref = vectors[f"ddim{steps}"]
    tables = ddim_tables(schedule, steps, eta=1.0)
    np.testing.assert_array_equal(tables.timesteps, ref["timesteps_ascending"])
    for ours, name in [
        (tables.alphas, "alphas"),
        (tables.alphas_prev, "alphas_prev"),
        (tables.sigmas, "sigmas_eta1"),
        (tables.sqrt_one_minus_alphas, "sqrt_one_minus_alphas"),
    ]:
        assert ours.dtype == torch.float32
        # The official tables went through float64 pow/sqrt of another numpy/torch build: the last
        # bit is the library's, so 2 ulps per value (1-ulp differences are seen across CPUs).
        assert_within_ulps(ours.numpy(), np.float32(ref[name]), 2, what=name)


def test_timesteps_and_first_alpha_prev(schedule):
    assert ddim_timesteps(50).tolist() == list(range(1, 1000, 20))
    assert ddim_timesteps(30).tolist() == list(range(1, 1000, 33))  # 30 does not divide 1000: 31 steps
    with pytest.raises(ValueError, match="1000"):
        ddim_timesteps(3)  # 1, 334, 667, 1000: past the schedule (the official code would crash)
    tables = ddim_tables(schedule, 50)
    assert tables.alphas_prev[0] == schedule.alphas_cumprod[0] != 1.0
    assert float(ddim_tables(schedule, 50, eta=0.0).sigmas.abs().max()) == 0.0
    with pytest.raises(ValueError):
        ddim_timesteps(0)


def test_usable_step_counts_are_those_the_official_rule_keeps_below_t():
    """The cheap rule agrees with building the timesteps, for every count the pipelines accept, and
    the suggestions are the nearest usable counts on each side."""
    for steps in range(1, 1001):
        last = list(range(0, 1000, 1000 // steps))[-1] + 1
        assert uniform_steps_usable(steps) == (last < 1000), steps
    bad = [s for s in range(1, 501) if not uniform_steps_usable(s)]
    assert bad[:16] == [3, 9, 27, 36, 37, *range(101, 112)] and len(bad) == 99
    assert nearest_usable_steps(3, 500) == [2, 4]
    assert nearest_usable_steps(105, 500) == [100, 112]
    assert nearest_usable_steps(300, 500) == [250, 334]  # 251..333: T // S = 3 puts the last at 1000
    assert nearest_usable_steps(2, 2) == [1]  # nothing above the limit
    assert all(uniform_steps_usable(s) for s in nearest_usable_steps(37, 500))


@pytest.mark.parametrize("steps", [10, 50])
def test_quad_timesteps_follow_the_formula(schedule, steps):
    """``int(linspace(0, sqrt(0.8 T), S) ** 2) + 1``, i.e. ``floor(800 k^2 / (S-1)^2) + 1``: exact
    integer arithmetic here (for S = 10 and 50 no entry but the last lands on an integer, where
    float round-off could tip the floor; the last is 800 + 1)."""
    expected = [800 * k * k // (steps - 1) ** 2 + 1 for k in range(steps)]
    ts = ddim_timesteps(steps, discretize="quad")
    assert ts.dtype == np.int64 and ts.tolist() == expected
    tables = ddim_tables(schedule, steps, eta=1.0, discretize="quad")
    abar = schedule.alphas_cumprod
    assert torch.equal(tables.alphas, abar[ts])
    assert torch.equal(tables.alphas_prev, torch.cat([abar[:1], abar[ts[:-1]]]))
    # S = 50 repeats t = 1 (as the official sampler does): a step with a_prev == a and sigma 0
    repeats = np.flatnonzero(np.diff(ts) == 0) + 1
    assert (steps == 50) == bool(repeats.size)
    assert torch.isfinite(tables.sigmas).all() and (tables.sigmas[repeats] == 0).all()
    with pytest.raises(ValueError, match="unknown DDIM discretization"):
        ddim_timesteps(steps, discretize="cubic")


def test_ddim_step_is_the_official_update(schedule):
    tables = ddim_tables(schedule, 50, eta=1.0)
    gen = torch.Generator().manual_seed(0)
    x, eps, z = (torch.randn(2, 16, 4, 8, 8, generator=gen) for _ in range(3))
    for index in (49, 20, 0):
        a = tables.alphas[index].double()
        a_prev = tables.alphas_prev[index].double()
        sigma = tables.sigmas[index].double()
        s1m = tables.sqrt_one_minus_alphas[index].double()
        x0 = (x.double() - s1m * eps.double()) / a.sqrt()
        expected = a_prev.sqrt() * x0 + torch.clamp(1 - a_prev - sigma**2, min=1e-7).sqrt() * eps.double()
        if index != 0:
            expected = expected + sigma * z.double()
        got = ddim_step(x, eps, index, tables, z)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)
    # the last step ignores the noise and still keeps the direction term
    no_noise = ddim_step(x, eps, 0, tables, None)
    assert torch.equal(ddim_step(x, eps, 0, tables, z), no_noise)
    x0 = (x - tables.sqrt_one_minus_alphas[0] * eps) / tables.alphas[0].sqrt()
    assert not torch.allclose(no_noise, tables.alphas_prev[0].sqrt() * x0, atol=1e-4)


def test_ddim_sample_visits_timesteps_downwards_and_draws_noise_per_step(schedule):
    tables = ddim_tables(schedule, 10)
    seen = []

    def eps_fn(x, t, index):
        seen.append((t, index))
        return torch.zeros_like(x)

    x_T = torch.ones(1, 2, 4, 2, 2)
    gen = torch.Generator().manual_seed(3)
    out = ddim_sample(eps_fn, x_T, tables, generator=gen)
    assert seen == [(int(tables.timesteps[i]), i) for i in reversed(range(10))]
    # the generator advanced by exactly 9 draws of x_T's shape (none on the last step)
    replay = torch.Generator().manual_seed(3)
    for _ in range(9):
        torch.randn(x_T.shape, generator=replay)
    assert torch.equal(torch.randn(4, generator=gen), torch.randn(4, generator=replay))
    again = ddim_sample(eps_fn, x_T, tables, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, again)
    other = ddim_sample(eps_fn, x_T, tables, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(out, other)


def _delta_eps(schedule, mu):
    """The exact eps of a data distribution concentrated on ``mu``."""
    abar = schedule.alphas_cumprod

    def eps_fn(x, t, index):
        a = abar[t]
        return (x - a.sqrt() * mu) / (1 - a).sqrt()

    return eps_fn


@pytest.mark.parametrize("name", ["dpmpp", "unipc"])
def test_diffusers_samplers_use_our_betas_and_recover_a_known_target(schedule, name):
    scheduler = make_scheduler(name, schedule, 20)
    assert torch.equal(scheduler.alphas_cumprod, schedule.alphas_cumprod)
    ts = [int(t) for t in scheduler.timesteps]
    assert ts == sorted(ts, reverse=True) and len(ts) == 20
    mu = torch.tensor([0.3, -0.5, 0.8, 0.0]).view(1, 1, 4, 1, 1)
    x_T = torch.randn(1, 2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    out = diffusers_sample(name, _delta_eps(schedule, mu), x_T, schedule, 20)
    torch.testing.assert_close(out, mu.expand_as(out), rtol=0, atol=1e-4)


def test_ddim_recovers_a_known_target_up_to_the_final_direction_term(schedule):
    mu = torch.tensor([0.3, -0.5, 0.8, 0.0]).view(1, 1, 4, 1, 1)
    x_T = torch.randn(1, 2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    out = ddim_sample(_delta_eps(schedule, mu), x_T, ddim_tables(schedule, 50, 0.0))
    # eta 0 keeps eps constant along the path: x_0 = sqrt(abar_0) mu + sqrt(1 - abar_0) eps_T
    a0, aT = schedule.alphas_cumprod[0], schedule.alphas_cumprod[981]
    eps_T = (x_T - aT.sqrt() * mu) / (1 - aT).sqrt()
    expected = a0.sqrt() * mu + (1 - a0).sqrt() * eps_T
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)


def test_unknown_diffusers_sampler(schedule):
    with pytest.raises(ValueError, match="unknown"):
        make_scheduler("euler", schedule, 10)


def test_make_sampler_is_the_one_entry_point(schedule):
    from sd3d.sampling.ddim import ZERO123
    from sd3d.sampling.samplers import SAMPLERS, make_sampler

    assert SAMPLERS == ("ddim", "dpmpp", "unipc")
    ddim = make_sampler("ddim", schedule, 50)
    assert ddim.steps == 50 and ddim.timesteps[0] == 981 and ddim.timesteps[-1] == 1
    assert make_sampler("ddim", schedule, 30).steps == 31  # 30 does not divide 1000
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        make_sampler("euler", schedule, 50)
    with pytest.raises(ValueError, match="ddim only"):
        make_sampler("dpmpp", schedule, 20, discretize="quad")
    # The variant reaches the loop: Zero123's noises the last step too, so it draws one more randn.
    x_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    generators = {"sync": torch.Generator().manual_seed(1), "z123": torch.Generator().manual_seed(1)}
    make_sampler("ddim", schedule, 5)(lambda x, t, i: 0.1 * x, x_T, generators["sync"])
    make_sampler("ddim", schedule, 5, variant=ZERO123)(lambda x, t, i: 0.1 * x, x_T, generators["z123"])
    draws_left = {k: torch.randn(1, generator=g).item() for k, g in generators.items()}
    assert draws_left["z123"] != draws_left["sync"]
