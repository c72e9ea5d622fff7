"""Full-size parity with the official SyncDreamer forward pass (golden synthetic fixture, fp32, CPU).

The synthetic weights of docs/reference/syncdreamer.md §7.2 are rebuilt for every official key, written with the official
buffers as a Lightning checkpoint in the released file's format (the session fixture
``official_syncdreamer_ckpt``; this module is its only user, so one test process writes it), loaded through the
normal loader (``load_syncdreamer``: key accounting, buffer checks, memory-mapped), and every stage stored in ``syncdreamer-golden-synthetic.npz`` is compared with
the tolerances of docs/reference/syncdreamer.md §7.4: encoders and volumes rel 1e-4, eps / x_prev / decoded rel 1e-3.

The fixture's frustum arrays describe the frustum net on zero input (see :mod:`sd3d.models.golden`);
``test_eps_detects_a_broken_frustum_input`` shows the eps checks cover the real volume sampling.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from support.official_checkpoint import no_weights_warning

from sd3d.models import golden as g
from sd3d.models.configs import official_config
from sd3d.models.syncdreamer_checkpoint import load_syncdreamer
from sd3d.models.synthetic import synthetic_tensor
from sd3d.pipelines.syncdreamer import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def golden(reference_dir):
    with np.load(reference_dir / "syncdreamer-golden-synthetic.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def stages(golden, official_syncdreamer_ckpt):
    """Load the checkpoint, run the fixture's call sequence once; free the model after."""
    model = load_syncdreamer(official_syncdreamer_ckpt)  # memory-mapped: the weights are not copied
    assert model.config == official_config()
    try:
        return g.run_stages(model, golden)
    finally:
        del model
        gc.collect()


@pytest.mark.parametrize("name", g.ENCODER_STAGES)
def test_encoder_and_volume_stages(stages, golden, name):
    assert g.rel_err(stages[name], golden[name]) <= g.ENCODER_RTOL


@pytest.mark.parametrize("name", g.STATS_STAGES)
def test_volume_statistics(stages, golden, name):
    """sum, abs-sum and L2 each within rtol (the sum alone is cancellation-sensitive)."""
    np.testing.assert_allclose(stages[name], golden[name], rtol=g.ENCODER_RTOL, atol=0)


@pytest.mark.parametrize("name", g.OUTPUT_STAGES)
def test_output_stages(stages, golden, name):
    assert g.rel_err(stages[name], golden[name]) <= g.OUTPUT_RTOL


def test_eps_detects_a_broken_frustum_input(stages, golden):
    """With the frustum input zeroed, view 2's eps leaves the tolerance (measured 1.2e-2; up to 3e-2
    over the 16 guided views), so the eps checks cover the spatial-volume -> frustum sampling."""
    assert g.rel_err(stages["eps_view2_zero_volume"], golden["eps_nocfg_views0to3"][2]) > 5 * g.OUTPUT_RTOL


# --------------------------------------------------------------------------------------------------
# full size
# --------------------------------------------------------------------------------------------------
def _assert_synthetic_weights(model) -> None:
    key = "model.diffusion_model.out.2.weight"
    weight = model.model.diffusion_model.out[2].weight
    assert torch.equal(weight, synthetic_tensor(key, weight.shape))


@pytest.mark.slow
def test_full_size_official_checkpoint_loads_and_generate_accepts_it(
    official_syncdreamer_ckpt, run_cli, stop_after_load, cutout_photo, tmp_path
):
    with no_weights_warning():
        model = load_model(official_syncdreamer_ckpt, device="cpu")
    assert model.config == official_config()
    _assert_synthetic_weights(model)
    del model
    out = tmp_path / "views"
    res = run_cli("--quiet", "generate", cutout_photo, "-o", out, "--weights", official_syncdreamer_ckpt)
    assert res.code == 0 and "warning" not in res.err, res
    config, _, cc_projection = stop_after_load[0]
    assert config == official_config()
    assert torch.equal(cc_projection, synthetic_tensor("cc_projection.weight", cc_projection.shape))


@pytest.mark.slow
def test_full_size_converted_copy_loads(official_syncdreamer_ckpt, run_cli, tmp_path):
    out = tmp_path / "syncdreamer.safetensors"
    try:
        res = run_cli("-q", "weights", "convert", official_syncdreamer_ckpt, out)
        assert res.code == 0, res
        with no_weights_warning():
            model = load_model(out, device="cpu")
        assert model.config == official_config()
        _assert_synthetic_weights(model)
        del model
    finally:
        out.unlink(missing_ok=True)
