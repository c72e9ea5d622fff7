"""``sd3d.pipelines.syncdreamer.generate_views`` on the tiny model: seeds, batching of samples, dtype, quantisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sd3d.core.errors import InputImageError, UserError
from sd3d.models.checkpoint import load_syncdreamer
from sd3d.models.configs import tiny_config
from sd3d.models.synthetic import synthetic_state_dict
from sd3d.pipelines.syncdreamer import (
    GenerationSettings,
    as_prepared,
    default_batch_view_num,
    generate_views,
    quantize_official,
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
