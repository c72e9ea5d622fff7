"""The released checkpoints' format loads: official buffers, Lightning wrapper, converted copies.

A file like ``syncdreamer-pretrain.ckpt`` (written by the official code: every official key, the 10
buffers as its ``__init__`` registers them, a Lightning dict with a pickled callback) must load through
``load_model``, ``sd3d generate --weights`` and ``sd3d weights convert``. The buffer rule
(:mod:`sd3d.models.buffers`): a buffer inference does not use never makes a load fail (one warning,
numbers only with ``--debug``); one it relies on (the schedule our samplers read, the cameras) must
agree with our recomputation within a tolerance.

These run on the tiny config, whose official-layout file has the same 10 buffers; the full-size file
(5.6 GB) is loaded by ``test_syncdreamer_parity.py``, in the one process that writes it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.official_checkpoint import no_weights_warning, official_state_dict, write_lightning_checkpoint

from sd3d.core.errors import WeightsError, WeightsWarning
from sd3d.models.configs import official_config, tiny_config
from sd3d.models.syncdreamer_checkpoint import (
    CHECKED_BUFFER_KEYS,
    USED_BUFFER_KEYS,
    buffer_rules,
    load_syncdreamer,
    reference_buffers,
)
from sd3d.pipelines.syncdreamer import load_model

UNUSED_BUFFER_KEYS = tuple(k for k in CHECKED_BUFFER_KEYS if k not in USED_BUFFER_KEYS)


@pytest.fixture(scope="module")
def tiny_official(official_syncdreamer_buffers):
    """The tiny model's official-layout state dict with the official buffers."""
    return official_state_dict(tiny_config(), official_syncdreamer_buffers)


# --------------------------------------------------------------------------------------------------
# the rule
# --------------------------------------------------------------------------------------------------
def test_our_recomputed_buffers_are_the_official_ones(official_syncdreamer_buffers):
    """Including SyncDreamer's clamp of the posterior log variance at -10 (CompVis keeps -46.05)."""
    official, ours = official_syncdreamer_buffers, reference_buffers(official_config())
    assert set(ours) == set(official) == set(CHECKED_BUFFER_KEYS)
    assert official["posterior_log_variance_clipped"][0] == -10.0
    exact = ("betas", "alphas", "alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped")
    for key in (*exact, "Ks", "azimuth"):
        assert torch.equal(ours[key], official[key]), key
    for key in ("sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod"):  # float32 sqrt: within 1 ulp
        ref = official[key].numpy()
        assert (np.abs(ours[key].numpy() - ref) <= np.spacing(np.abs(ref))).all(), key
    # the official poses are Blender's float32 values, ours the exact formula
    assert (ours["poses"] - official["poses"]).abs().max() < 1e-6
    with no_weights_warning():
        load_syncdreamer(official_state_dict(tiny_config(), official))


@pytest.mark.parametrize(
    ("key", "edit"),
    [(k, lambda v: v + 1.0) for k in UNUSED_BUFFER_KEYS]
    + [("posterior_variance", lambda v: v[:10]), ("alphas", lambda v: v.long())],
)
def test_an_unused_buffer_that_differs_only_warns(tiny_official, key, edit):
    state = dict(tiny_official)
    state[key] = edit(state[key])
    with pytest.warns(WeightsWarning) as seen:
        model = load_syncdreamer(state)
    messages = [str(w.message) for w in seen if issubclass(w.category, WeightsWarning)]
    assert len(messages) == 1 and f"'{key}'" in messages[0] and "\n" not in messages[0]
    assert model.config == tiny_config()
    assert torch.equal(model.cc_projection.weight, tiny_official["cc_projection.weight"])


@pytest.mark.parametrize("key", USED_BUFFER_KEYS)
def test_a_used_buffer_beyond_its_tolerance_is_one_error_line(tiny_official, key):
    state = dict(tiny_official)
    state[key] = state[key] + 1e-3
    with pytest.raises(WeightsError) as info:
        load_syncdreamer(state)
    message = str(info.value)
    assert message.startswith(f"buffer '{key}' differs from the SyncDreamer")
    assert message.endswith("not an official SyncDreamer checkpoint") and "\n" not in message


def test_used_buffers_are_compared_with_a_tolerance(tiny_official):
    rules = buffer_rules(official_config())
    state = dict(tiny_official)
    state["poses"] = state["poses"] + rules["poses"].atol / 2
    state["alphas_cumprod"] = state["alphas_cumprod"] * (1 + rules["alphas_cumprod"].rtol / 2)
    with no_weights_warning():
        load_syncdreamer(state)


# --------------------------------------------------------------------------------------------------
# files: Lightning wrapper, converted copies, the CLI
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_official_format_file_and_its_converted_copy_load(tmp_path, tiny_official, run_cli, dtype):
    src = write_lightning_checkpoint(tmp_path / "tiny.ckpt", tiny_official)
    dst = tmp_path / f"tiny-{dtype}.safetensors"
    res = run_cli("-q", "weights", "convert", src, dst, "--dtype", dtype)
    assert res.code == 0, res
    key = "cc_projection.weight"
    cast = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    with no_weights_warning():
        for path, expected in ((src, tiny_official[key]), (dst, tiny_official[key].to(cast).float())):
            model = load_model(path, device="cpu")
            assert model.config == tiny_config()
            assert torch.equal(model.cc_projection.weight, expected), path


def test_cli_warning_is_one_line_and_debug_shows_the_numbers(
    run_cli, stop_after_load, tmp_path, tiny_official, cutout_photo
):
    """The case that used to be refused: an unused buffer 36 off (CompVis' unclamped log variance)."""
    state = dict(tiny_official)
    state["posterior_log_variance_clipped"] = state["posterior_log_variance_clipped"].clone()
    state["posterior_log_variance_clipped"][0] = float(np.log(np.float32(1e-20)))
    ckpt = write_lightning_checkpoint(tmp_path / "odd.ckpt", state)
    args = ("generate", cutout_photo, "-o", tmp_path / "views", "--weights", ckpt)
    res = run_cli("--quiet", *args, "--ddim-discretize", "quad")
    assert res.code == 0, res
    assert res.err.strip().splitlines() == [res.err.strip()]
    assert res.err.startswith("warning: checkpoint in ") and "'posterior_log_variance_clipped'" in res.err
    assert "max abs diff" not in res.err
    config, settings, _ = stop_after_load[0]
    assert config == tiny_config() and settings.ddim_discretize == "quad"
    debug = run_cli("--debug", "--quiet", *args)
    assert debug.code == 0, debug
    assert "'posterior_log_variance_clipped'" in debug.err and "max abs diff 36" in debug.err


# --------------------------------------------------------------------------------------------------
# Zero123 (its schedule is CompVis': posterior_log_variance_clipped is not clamped)
# --------------------------------------------------------------------------------------------------
def _zero123_state():
    from sd3d.models.zero123 import tiny_config as zero123_tiny
    from sd3d.models.zero123_checkpoint import synthetic_entries

    return dict(synthetic_entries(zero123_tiny()))


def test_zero123_official_format_with_an_odd_unused_buffer_loads(tmp_path):
    from sd3d.models.zero123_checkpoint import load_zero123

    state = _zero123_state()
    # SyncDreamer's clamp applied to Zero123's table: not Zero123's values, but training-only
    state["posterior_log_variance_clipped"] = state["posterior_log_variance_clipped"].clamp_min(-10.0)
    state["model_ema.num_updates"] = torch.zeros(2, dtype=torch.int32)  # unused bookkeeping
    ckpt = write_lightning_checkpoint(tmp_path / "zero123.ckpt", state)
    with pytest.warns(WeightsWarning, match="'model_ema.num_updates', 'posterior_log_variance_clipped'"):
        model = load_zero123(ckpt)
    assert model.unet_weights == "ema"
    state["alphas_cumprod"] = state["alphas_cumprod"] * 1.01  # the table DDIM reads
    with pytest.raises(WeightsError, match="buffer 'alphas_cumprod' .*differs from the Zero123 schedule"):
        load_zero123(state)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_zero123_half_precision_copy_loads(tmp_path, dtype):
    from sd3d.models.zero123_checkpoint import load_zero123
    from sd3d.weights.convert import convert_checkpoint

    src = write_lightning_checkpoint(tmp_path / "zero123.ckpt", _zero123_state())
    dst = convert_checkpoint(src, tmp_path / f"zero123-{dtype}.safetensors", dtype=dtype).path
    with no_weights_warning():
        assert load_zero123(dst).unet_weights == "ema"
