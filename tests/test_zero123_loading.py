"""Zero123 state-dict mapping: every official key accounted for, EMA UNet preferred, bad files refused."""

from __future__ import annotations

import json

import pytest
import torch

from sd3d.core.errors import WeightsError
from sd3d.models.synthetic import synthetic_tensor
from sd3d.models.zero123 import CONFIGS, tiny_config
from sd3d.models.zero123_checkpoint import (
    IGNORED_KEYS,
    SCHEDULE_BUFFER_KEYS,
    UNET_PREFIX,
    ema_key,
    load_zero123,
    official_key_shapes,
    schedule_buffers,
    synthetic_entries,
    write_synthetic_checkpoint,
)
from sd3d.sampling.schedule import zero123_schedule
from sd3d.weights import load_state_dict


@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    return dict(synthetic_entries(tiny_config()))


def _load(state, **kw):
    return load_zero123(state, config=tiny_config(), **kw)


def test_official_key_list_matches_the_reference(reference_dir):
    ref = json.loads((reference_dir / "zero123-state-dict-keys.json").read_text())["entries"]
    ours = official_key_shapes()
    assert [(e["key"], tuple(e["shape"]), e["dtype"]) for e in ref] == [
        (k, s, str(d).removeprefix("torch.")) for k, (s, d) in ours.items()
    ]


def test_ema_names_follow_litema():
    key = "model.diffusion_model.input_blocks.1.1.proj_in.weight"
    assert ema_key(key) == "model_ema.diffusion_modelinput_blocks11proj_inweight"
    unet = [k for k in official_key_shapes() if k.startswith(UNET_PREFIX)]
    assert len(unet) == 686 and len({ema_key(k) for k in unet}) == 686  # injective


def test_ignored_keys_are_the_documented_ones():
    assert set(IGNORED_KEYS) == {
        "model_ema.decay",
        "model_ema.num_updates",
        *(
            f"cond_stage_model.model.{k}"
            for k in ("positional_embedding", "text_projection", "logit_scale", "token_embedding.weight")
        ),
        "cond_stage_model.model.ln_final.weight",
        "cond_stage_model.model.ln_final.bias",
    }


def test_schedule_buffers_agree_with_the_sampler_schedule():
    buffers = schedule_buffers()
    schedule = zero123_schedule()
    assert torch.equal(buffers["betas"], schedule.betas)
    assert torch.equal(buffers["alphas_cumprod"], schedule.alphas_cumprod)
    assert buffers["alphas_cumprod_prev"][0] == 1.0
    assert buffers["posterior_log_variance_clipped"][0].item() == pytest.approx(-46.0517, abs=1e-3)


def test_unet_comes_from_the_ema_copy(tiny_state):
    model = _load(tiny_state)
    assert model.unet_weights == "ema"
    key = "model.diffusion_model.input_blocks.0.0.weight"
    w = model.model.diffusion_model.input_blocks[0][0].weight
    assert torch.equal(w, synthetic_tensor(ema_key(key), w.shape))
    assert not torch.equal(w, tiny_state[key])
    # everything else loads as it is
    assert torch.equal(model.cc_projection.weight, tiny_state["cc_projection.weight"])
    vae = "first_stage_model.decoder.conv_out.weight"
    assert torch.equal(model.first_stage_model.decoder.conv_out.weight, tiny_state[vae])
    clip = "cond_stage_model.model.visual.proj"
    assert torch.equal(model.cond_stage_model.model.visual.proj, tiny_state[clip])
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_without_any_ema_key_the_raw_unet_is_used(tiny_state):
    state = {k: v for k, v in tiny_state.items() if not k.startswith("model_ema.")}
    model = _load(state)
    assert model.unet_weights == "raw"
    key = "model.diffusion_model.out.2.weight"
    assert torch.equal(model.model.diffusion_model.out[2].weight, tiny_state[key])


def test_ignored_and_checked_keys_may_be_absent(tiny_state):
    """A converted file without schedule buffers, EMA bookkeeping, CLIP text leftovers or raw UNet."""

    def kept(key: str) -> bool:
        return key not in SCHEDULE_BUFFER_KEYS and key not in IGNORED_KEYS and not key.startswith(UNET_PREFIX)

    state = {k: v for k, v in tiny_state.items() if kept(k)}
    assert len(state) < len(tiny_state)
    assert _load(state).unet_weights == "ema"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda s: s.pop("model_ema.diffusion_modelout2bias"),
            "missing key 'model_ema.diffusion_modelout2bias'",
        ),
        (
            lambda s: s.pop("first_stage_model.encoder.conv_in.bias"),
            "missing key 'first_stage_model.encoder.conv_in.bias'",
        ),
        (lambda s: s.pop("cc_projection.weight"), "missing key 'cc_projection.weight'"),
        (lambda s: s.__setitem__("model_ema.extra", torch.zeros(1)), "unexpected key 'model_ema.extra'"),
        (lambda s: s.__setitem__("spatial_volume.x", torch.zeros(1)), "unexpected key 'spatial_volume.x'"),
        (lambda s: s.__setitem__("cc_projection.bias", torch.zeros(5)), "key 'cc_projection.bias' has shape"),
        (
            lambda s: s.__setitem__("model.diffusion_model.out.2.bias", torch.zeros(7)),
            "key 'model.diffusion_model.out.2.bias' has shape",
        ),
        (
            lambda s: s.__setitem__("alphas_cumprod", s["alphas_cumprod"] * 1.01),
            "buffer 'alphas_cumprod' differs from the Zero123 schedule",
        ),
    ],
)
def test_bad_state_dicts_name_the_key(tiny_state, edit, message):
    state = dict(tiny_state)
    edit(state)
    with pytest.raises(WeightsError) as info:
        _load(state)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_syncdreamer_checkpoint_is_refused():
    from sd3d.models.configs import tiny_config as syncdreamer_tiny
    from sd3d.models.synthetic import synthetic_state_dict

    with pytest.raises(WeightsError, match="unexpected key .*not a Zero123 checkpoint"):
        _load(synthetic_state_dict(syncdreamer_tiny()))


def test_checkpoint_files_round_trip_and_config_is_detected(tmp_path, tiny_state):
    ckpt = write_synthetic_checkpoint(tmp_path / "tiny.ckpt", tiny_config())
    st = write_synthetic_checkpoint(tmp_path / "tiny.safetensors", tiny_config())
    for path in (ckpt, st):
        loaded = load_state_dict(path)
        assert loaded.keys() == tiny_state.keys()
        assert all(torch.equal(loaded[k], tiny_state[k]) for k in tiny_state)
        assert loaded["model_ema.num_updates"].dtype == torch.int32
        model = load_zero123(path)  # no config given: detected from the shapes
        assert model.config == CONFIGS["tiny"]() and model.unet_weights == "ema"
    dropped = write_synthetic_checkpoint(tmp_path / "noema.safetensors", tiny_config(), drop=("model_ema.",))
    assert not any(k.startswith("model_ema.") for k in load_state_dict(dropped))
    assert load_zero123(dropped).unet_weights == "raw"


def test_reduced_precision_keeps_clip_in_float32(tiny_state):
    model = _load(tiny_state, dtype=torch.bfloat16)
    assert model.unet_dtype == torch.bfloat16
    assert model.first_stage_model.encoder.conv_in.weight.dtype == torch.bfloat16
    assert model.cond_stage_model.model.visual.proj.dtype == torch.float32
    assert model.model.diffusion_model.out[0].weight.dtype == torch.float32  # GroupNorm32 computes in fp32
    x = torch.zeros(1, 3, 256, 256)
    with torch.inference_mode():
        enc = model.encode_view(x)
        ctx = model.project(enc.clip_embed, torch.zeros(1, 1, 4))
        eps = model.guided_eps(torch.zeros(1, 4, 32, 32), 981, ctx, enc.concat_latent, 3.0)
    assert enc.clip_embed.dtype == eps.dtype == torch.float32 and bool(torch.isfinite(eps).all())
    # (no closeness check against fp32: the synthetic weights cancel so strongly that bf16 round-off
    # of the large residual stream dominates; precision is a property of real weights)
