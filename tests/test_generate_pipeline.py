"""``sd3d.pipelines.syncdreamer.generate_views`` on the tiny model: seeds, batching of samples, dtype, quantisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sd3d.core.errors import InputImageError, UserError
from sd3d.models.configs import tiny_config
from sd3d.models.syncdreamer_checkpoint import load_syncdreamer
from sd3d.models.synthetic import synthetic_state_dict
from sd3d.pipelines.syncdreamer import (
    GenerationSettings,
    as_prepared,
    default_batch_view_num,
    generate_views,
    quantize_official,
    sample_views,
)


@pytest.fixture(scope="module")
def model():
    return load_syncdreamer(synthetic_state_dict(tiny_config()), tiny_config())


@pytest.fixture(scope="module")
def rgba():
    yy, xx = np.mgrid[:256, :256]
    img = np.zeros((256, 256, 4), np.uint8)
    img[(yy - 128) ** 2 + (xx - 128) ** 2 < 100**2] = (200, 80, 40, 255)
    return img


def test_same_seed_same_views_different_seed_different(model, rgba):
    a = generate_views(rgba, model=model, steps=2, seed=11)
    b = generate_views(rgba, model=model, steps=2, seed=11)
    c = generate_views(rgba, model=model, steps=2, seed=12)
    assert len(a) == 1
    views = a[0]
    assert views.images.shape == (16, 256, 256, 3) and views.images.dtype == np.float32
    assert views.num_views == 16 and views.seed == 11 and views.input_elevation_deg == 30.0
    np.testing.assert_array_equal(views.images * 255, np.rint(views.images * 255))  # quantised values
    np.testing.assert_array_equal(views.images, b[0].images)
    assert np.abs(views.images - c[0].images).mean() > 1e-3
    assert views.provenance["settings"]["dtype"] == "float32"


def test_samples_are_independent_and_elevation_matters(model, rgba):
    two = generate_views(rgba, model=model, steps=2, seed=3, samples=2, batch_view_num=8)
    assert [v.provenance["sample"] for v in two] == [0, 1]
    assert np.abs(two[0].images - two[1].images).mean() > 1e-3
    low = generate_views(rgba, model=model, steps=2, seed=3, elevation_deg=-10)
    assert np.abs(low[0].images - generate_views(rgba, model=model, steps=2, seed=3)[0].images).mean() > 1e-4


def test_bf16_autocast_runs_on_cpu(model, rgba):
    views = generate_views(rgba, model=model, steps=2, seed=5, dtype="bf16")[0]
    assert views.provenance["settings"]["dtype"] == "bfloat16"
    assert np.isfinite(views.images).all()
    fp32 = generate_views(rgba, model=model, steps=2, seed=5)[0]
    assert np.abs(views.images - fp32.images).mean() < 0.1  # same seed: close, not bit-equal


def test_official_quantisation_truncates():
    x = torch.tensor([-1.5, -1.0, 0.0, 0.999, 1.0, 2.0]).view(1, 1, 6).expand(3, 1, 6)
    assert quantize_official(x)[0, :, 0].tolist() == [0, 0, 127, 254, 255, 255]


def test_settings_and_inputs_are_checked():
    with pytest.raises(UserError, match="--eta"):
        GenerationSettings(eta=-1).check()
    with pytest.raises(UserError, match="--seed"):
        GenerationSettings(seed=-1).check()
    GenerationSettings(steps=200, sampler="unipc").check()
    with pytest.raises(InputImageError):
        as_prepared(np.zeros((10, 10, 4), np.uint8))
    assert default_batch_view_num(torch.device("cpu"), torch.float32) == 16


@pytest.fixture
def ddim_spy(monkeypatch):
    """Records the ``x_T`` and tables every DDIM run starts from (the run itself is unchanged)."""
    from sd3d.sampling import samplers

    calls = []
    original = samplers.ddim_sample

    def spy(eps_fn, x_T, tables, *args, **kwargs):
        calls.append((x_T.detach().clone(), tables))
        return original(eps_fn, x_T, tables, *args, **kwargs)

    monkeypatch.setattr(samplers, "ddim_sample", spy)
    return calls


def test_a_given_x_T_replaces_the_seed_noise(model, rgba, ddim_spy):
    prepared = as_prepared(rgba)
    settings = GenerationSettings(steps=2, seed=11)
    seeded = sample_views(model, prepared, settings)
    seed_x_T = ddim_spy[-1][0]
    # the seed's own x_T, given explicitly (as float64 numpy): the very same run, bit for bit (the
    # posterior and per-step noise stay the seed's)
    same = sample_views(model, prepared, settings, x_T=seed_x_T.double().numpy())
    assert torch.equal(same.latents, seeded.latents)
    np.testing.assert_array_equal(same.views_u8, seeded.views_u8)
    assert seeded.record["x_T"] == "seed" and same.record["x_T"] == "given"
    # another x_T through the public API: the sampler starts from it instead of the seed's draw
    other_x_T = -seed_x_T
    views = generate_views(rgba, model=model, steps=2, seed=11, x_T=other_x_T)[0]
    assert torch.equal(ddim_spy[-1][0], other_x_T)
    assert np.abs(views.images * 255 - seeded.views_u8[0]).mean() > 0.25


@pytest.mark.parametrize(
    ("x_T", "message"),
    [
        (
            torch.zeros(1, 16, 4, 32, 16),
            r"x_T must have shape \(1, 16, 4, 32, 32\) .*got \(1, 16, 4, 32, 16\)",
        ),
        (torch.zeros(16, 4, 32, 32), r"x_T must have shape \(1, 16, 4, 32, 32\)"),
        (torch.zeros(1, 16, 4, 32, 32, dtype=torch.int64), "x_T must hold floating-point values, got int64"),
        (np.zeros((1, 16, 4, 32, 32), np.int32), "x_T must hold floating-point values"),
        (torch.full((1, 16, 4, 32, 32), float("nan")), "NaN or infinite"),
        ([[0.0]], "x_T must be a torch tensor or numpy array, got list"),
    ],
)
def test_a_wrong_x_T_is_one_error_line(model, rgba, x_T, message):
    with pytest.raises(UserError, match=message) as info:
        generate_views(rgba, model=model, steps=2, x_T=x_T)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match=r"x_T must have shape \(2, 16"):
        generate_views(rgba, model=model, steps=2, samples=2, x_T=torch.zeros(1, 16, 4, 32, 32))


def test_quad_ddim_timesteps(model, rgba, ddim_spy):
    from sd3d.sampling.ddim import ddim_timesteps

    quad = generate_views(rgba, model=model, steps=2, seed=2, ddim_discretize="quad")[0]
    assert ddim_spy[-1][1].timesteps.tolist() == ddim_timesteps(2, discretize="quad").tolist() == [1, 801]
    assert quad.provenance["settings"]["ddim_discretize"] == "quad"
    uniform = generate_views(rgba, model=model, steps=2, seed=2)[0]
    assert ddim_spy[-1][1].timesteps.tolist() == [1, 501]
    assert np.abs(quad.images - uniform.images).mean() > 1e-3
    with pytest.raises(UserError, match="unknown DDIM discretization"):
        GenerationSettings(ddim_discretize="linear").check()
    with pytest.raises(UserError, match="is a DDIM option"):
        GenerationSettings(sampler="unipc", ddim_discretize="quad").check()
