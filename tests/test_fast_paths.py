"""The fast paths agree with the plain ones: each rewrite against its reference, on tiny models.

Exact rewrites are checked in float64 to round-off; inexact ones (bf16 weights) against float32 with
a bound on the deviation. CUDA-only paths (graph replay, offloading) run where a GPU is present.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

from sd3d.models import conv_bias
from sd3d.models.configs import tiny_config
from sd3d.models.conv_bias import pointwise_conv2d, set_conv_bias_folding
from sd3d.models.depth_attention import DepthTransformer, set_depth_attention_impl
from sd3d.models.flops import count_generation_flops
from sd3d.models.inference import (
    cast_weights_,
    choose_batch_view_num,
    choose_decode_batch,
    keeps_float32,
    set_channels_last_,
)
from sd3d.models.syncdreamer_checkpoint import LazySafetensors, load_syncdreamer
from sd3d.models.synthetic import synthetic_state_dict
from sd3d.models.volume import repeat_rows
from sd3d.pipelines.syncdreamer import GenerationSettings, as_prepared, compute_dtype_for, sample_views
from sd3d.sampling.ddim import ddim_tables
from sd3d.sampling.schedule import scaled_linear_schedule

CUDA = torch.cuda.is_available()
T = 581


@pytest.fixture(scope="module")
def state_dict():
    return synthetic_state_dict(tiny_config())


@pytest.fixture(scope="module")
def model64(state_dict):
    return load_syncdreamer(state_dict, tiny_config()).double()


@pytest.fixture(scope="module")
def inputs(model64):
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 256, 256, generator=gen, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        cond = model64.condition(image, [30.0, 10.0], generator=gen)
    x_t = torch.randn(2, 16, 4, 32, 32, generator=gen, dtype=torch.float64)
    return cond, x_t


@pytest.fixture(scope="module")
def prepared():
    yy, xx = np.mgrid[:256, :256]
    rgba = np.zeros((256, 256, 4), np.uint8)
    rgba[(yy - 128) ** 2 + (xx - 128) ** 2 < 100**2] = (200, 80, 40, 255)
    return as_prepared(rgba)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# --------------------------------------------------------------------------------------------------
# exact rewrites
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", ["fast", "folded"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_reassociated_depth_attention_equals_the_direct_form(impl, channels_last):
    """Both re-associations give the direct form's output (float64), from either input layout; the
    folded form's output is channels-last (what the UNet's next convolution reads on CUDA)."""
    torch.manual_seed(0)
    layer = DepthTransformer(dim=24, n_heads=4, d_head=8, context_dim=16).double().eval()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(5, 24, 6, 7, dtype=torch.float64)  # non-square: pixel order matters
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ctx = torch.randn(3, 16, 9, 6, 7, dtype=torch.float64)
    with torch.no_grad():
        layer.depth_attn.impl = impl
        fast = layer(x, ctx)
        inner = layer.depth_attn(layer.proj_in(x[:3]), layer._context(ctx))
        layer.depth_attn.impl = "reference"
        ref = layer(x, ctx)
        layer.depth_attn.impl = "fast"
    assert rel(fast, ref) < 1e-13
    assert rel(fast[:3], x[:3]) > 1e-2  # the attention really contributes
    if impl == "folded":
        assert inner.is_contiguous(memory_format=torch.channels_last)


def test_folded_depth_attention_weights_are_kept_until_a_weight_changes():
    """The folded matrices are formed once, not every step (inference runs without autograd), and
    formed again when a weight changes in place (its version) or is replaced (its storage), also by
    one made under inference mode (which keeps no version), or another dtype is asked for; with
    autograd on nothing is kept (a kept pair would hold a stale graph)."""
    layer = DepthTransformer(dim=24, n_heads=4, d_head=8, context_dim=16).eval().depth_attn
    with torch.no_grad():
        m, n = layer.folded_weights(torch.float32)
        assert layer.folded_weights(torch.float32)[0] is m
        layer.to_q.weight.mul_(2)
        m2, _ = layer.folded_weights(torch.float32)
        assert m2 is not m and torch.allclose(m2, 2 * m)
        layer.to_out.weight.data = layer.to_out.weight.data.clone() * 3
        assert torch.allclose(layer.folded_weights(torch.float32)[1], 3 * n)
        assert layer.folded_weights(torch.bfloat16)[0].dtype == torch.bfloat16
        with torch.inference_mode():
            layer.to_k.weight.data = layer.to_k.weight.data * 0.5
        assert torch.allclose(layer.folded_weights(torch.float32)[0], m2 * 0.5)
    fresh = DepthTransformer(dim=24, n_heads=4, d_head=8, context_dim=16).depth_attn
    assert fresh.folded_weights(torch.float32)[0].requires_grad
    assert getattr(fresh, "_folded", None) is None


def test_whole_model_eps_is_unchanged_by_the_rewrites(model64, inputs):
    """Re-associated depth attention and a tensor timestep give the reference eps (float64)."""
    cond, x_t = inputs
    with torch.no_grad():
        set_depth_attention_impl(model64, "reference")
        ref = model64.predict_eps(x_t, T, cond, 2.0, 16)
        set_depth_attention_impl(model64, "folded")
        folded = model64.predict_eps(x_t, T, cond, 2.0, 16)
        set_depth_attention_impl(model64, "fast")
        fast = model64.predict_eps(x_t, torch.tensor(T), cond, 2.0, 16)
    assert rel(fast, ref) < 1e-12 and rel(folded, ref) < 1e-12
    with pytest.raises(ValueError, match="unknown"):
        set_depth_attention_impl(model64, "flash")


def test_repeat_rows_is_repeat_interleave():
    t = torch.randn(3, 2, 5)
    assert torch.equal(repeat_rows(t, 4), t.repeat_interleave(4, dim=0))


def test_channels_last_changes_layout_not_values(model64, inputs):
    """float64: a layout change is exact (float32 CPU kernels for NHWC round differently)."""
    cond, x_t = inputs
    with torch.no_grad():
        ref = model64.predict_eps(x_t, T, cond, 2.0, 16)
        set_channels_last_(model64, unet=True, volume=True)
        conv = model64.model.diffusion_model.input_blocks[0][0].weight
        assert conv.is_contiguous(memory_format=torch.channels_last)
        fast = model64.predict_eps(x_t, T, cond, 2.0, 16)
        set_channels_last_(model64, unet=False, volume=False)
    assert not conv.is_contiguous(memory_format=torch.channels_last) or conv.shape[-1] == 1
    assert rel(fast, ref) < 1e-12


@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_conv_biases_leave_eps_unchanged(model64, inputs, channels_last, monkeypatch):
    """float64: the convolution biases moved into the norms' terms and the 1x1 projections' matrix
    products (sd3d.models.conv_bias) give the plain model's eps; channels-last, the 1x1 projections
    really ran as matrix products (spatial transformers' in and out, the ResBlocks' skips)."""
    cond, x_t = inputs
    model = copy.deepcopy(model64)
    set_channels_last_(model, unet=channels_last, volume=False)
    products = []
    plain_rows = conv_bias.channels_last_rows

    def counted(x):
        rows = plain_rows(x)
        products.append(rows is not None)
        return rows

    monkeypatch.setattr(conv_bias, "channels_last_rows", counted)
    with torch.no_grad():
        ref = model.predict_eps(x_t, T, cond, 2.0, 16)
        assert not products
        set_conv_bias_folding(model, True)
        folded = model.predict_eps(x_t, T, cond, 2.0, 16)
    unet = model.model.diffusion_model
    transformers = sum(type(m).__name__ == "SpatialTransformer" for m in unet.modules())
    skips = sum(
        type(m).__name__ == "ResBlock" and isinstance(m.skip_connection, torch.nn.Conv2d)
        for m in unet.modules()
    )
    assert transformers > 0 and skips > 0
    assert len(products) == 2 * transformers + skips  # every 1x1 projection, each once
    if channels_last:
        assert all(products)
    assert rel(folded, ref) < 1e-13


def test_pointwise_conv2d_adds_both_biases_and_keeps_channels_last():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(6, 5, 1).double()
    extra = torch.randn(5, dtype=torch.float64)
    x = torch.randn(2, 6, 3, 4, dtype=torch.float64)
    ref = conv(x) + extra.view(1, -1, 1, 1)
    for layout in (torch.contiguous_format, torch.channels_last):
        with torch.no_grad():
            out = pointwise_conv2d(conv, x.contiguous(memory_format=layout), extra)
        assert out.is_contiguous(memory_format=layout)
        assert rel(out, ref) < 1e-15


def test_ddim_tables_on_another_device_keep_their_values():
    tables = ddim_tables(scaled_linear_schedule(), 50)
    moved = tables.to("cpu")
    for name in ("alphas", "alphas_prev", "sigmas", "sqrt_one_minus_alphas"):
        assert torch.equal(getattr(moved, name), getattr(tables, name))


# --------------------------------------------------------------------------------------------------
# weights: dtype, lazy safetensors
# --------------------------------------------------------------------------------------------------
def _eps32(model, inputs, autocast: bool = False, flip: bool = False) -> torch.Tensor:
    """``predict_eps`` of the float32 copy of ``inputs`` (bf16 autocast if asked)."""
    cond, x_t = inputs
    cond32 = type(cond)(**{k: getattr(cond, k).float() for k in cond.__dataclass_fields__})
    x = (x_t.flip(1) if flip else x_t).float()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return model.predict_eps(x, T, cond32, 2.0, 16)


def test_bf16_weights_keep_norms_in_float32_and_stay_close(state_dict, inputs):
    fp32 = load_syncdreamer(state_dict, tiny_config())
    bf16 = load_syncdreamer(state_dict, tiny_config(), dtype=torch.bfloat16)
    keep = keeps_float32(bf16)
    assert "model.diffusion_model.out.0.weight" in keep  # a GroupNorm32
    assert "clip_image_encoder.model.visual.ln_post.weight" in keep  # a LayerNorm
    for name, p in bf16.named_parameters():
        assert p.dtype == (torch.float32 if name in keep else torch.bfloat16), name
    assert bf16.weight_dtype == torch.bfloat16 and fp32.weight_dtype == torch.float32
    ref = _eps32(fp32, inputs)
    half = _eps32(bf16, inputs, autocast=True)
    autocast_only = _eps32(fp32, inputs, autocast=True)
    assert half.dtype == torch.float32  # the guidance combination is float32
    other = _eps32(fp32, inputs, flip=True)  # the scale of "close": another noisy input moves eps by ~0.9
    assert rel(half, ref) < 0.2 * rel(other, ref)
    assert rel(half, autocast_only) < 1e-6  # stored bf16 weights = autocast's per-op casts
    cast_weights_(bf16, torch.float32)
    assert all(p.dtype == torch.float32 for p in bf16.parameters())


def test_half_norms_compute_in_bf16_with_float32_statistics():
    """A norm with bf16 parameters normalises bf16 input without a float32 copy, under autocast too,
    and its statistics are float32's: the result is the float32 computation rounded to bf16."""
    from sd3d.models.norms import GroupNorm, GroupNorm32, LayerNorm

    gen = torch.Generator().manual_seed(1)
    # a large common offset: statistics accumulated in bf16 would be off by whole bf16 steps
    x = (torch.randn(2, 64, 8, 8, generator=gen) * 0.5 + 40.0).bfloat16()
    for norm in (GroupNorm(8, 64), GroupNorm32(8, 64), LayerNorm(8)):
        with torch.no_grad():
            norm.weight.normal_(generator=gen)
            norm.bias.normal_(generator=gen)
        norm.bfloat16()
        exact = copy.deepcopy(norm).double()(x.double())  # float64, same bf16 input and parameters
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            y = norm(x)
        assert y.dtype == torch.bfloat16, type(norm)
        # the float64 result rounded to bf16 (half an ulp, 2^-9 relative), plus float32 round-off
        bound = 2**-8 * exact.abs() + 2**-12
        assert bool(((y.double() - exact).abs() <= bound).all()), type(norm)
    # the bound discriminates: statistics accumulated in bf16 miss it by far
    g = x.reshape(2, 8, -1)
    naive = (g - g.mean(-1, keepdim=True)) / (g.var(-1, keepdim=True, unbiased=False) + 1e-5).sqrt()
    exact = torch.nn.functional.group_norm(x.double(), 8).reshape(2, 8, -1)
    assert not bool(((naive.double() - exact).abs() <= 2**-8 * exact.abs() + 2**-12).all())


def test_half_norms_model_stays_as_close_to_float32_as_float32_norms(state_dict, inputs):
    fp32 = load_syncdreamer(state_dict, tiny_config())
    bf16 = load_syncdreamer(state_dict, tiny_config(), dtype=torch.bfloat16)
    cast_weights_(bf16, torch.bfloat16, half_norms=True)
    keep = keeps_float32(bf16, half_norms=True)
    assert "model.diffusion_model.out.0.weight" not in keep  # the UNet's GroupNorm32 is bf16 now
    assert "clip_image_encoder.model.visual.ln_post.weight" in keep  # CLIP's LayerNorm is not
    assert bf16.model.diffusion_model.out[0].weight.dtype == torch.bfloat16
    ref = _eps32(fp32, inputs)
    half_norms = _eps32(bf16, inputs, autocast=True)
    cast_weights_(bf16, torch.bfloat16, half_norms=False)
    float_norms = _eps32(bf16, inputs, autocast=True)
    # bf16 norms add their output rounding to what bf16 weights already cost: same order
    assert rel(half_norms, ref) < 2.0 * rel(float_norms, ref), (rel(half_norms, ref), rel(float_norms, ref))


def test_safetensors_are_read_lazily_and_only_the_consumed_keys(state_dict, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    model = load_syncdreamer(path, dtype=torch.bfloat16)
    assert model.config == tiny_config() and model.weight_dtype == torch.bfloat16
    reference = load_syncdreamer(state_dict, tiny_config())
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.float(), q.to(p.dtype).float(), rtol=0, atol=0, msg=name)

    with safe_open(str(path), framework="pt") as handle:
        lazy = LazySafetensors(handle)
        read = []
        get_tensor = handle.get_tensor

        class Counting:
            def __getattr__(self, attr):
                return getattr(handle, attr)

            def get_tensor(self, key):
                read.append(key)
                return get_tensor(key)

        lazy._handle = Counting()
        load_syncdreamer(lazy, tiny_config())
    assert not [k for k in read if "token_embedding" in k or "text_projection" in k]
    assert len(set(read)) == len(read) < len(lazy)  # each consumed tensor read once; leftovers never


# --------------------------------------------------------------------------------------------------
# the pipeline's choices
# --------------------------------------------------------------------------------------------------
def test_compute_dtype_follows_half_weights_and_fp32_upcasts_with_a_warning(state_dict):
    model = load_syncdreamer(state_dict, tiny_config(), dtype=torch.bfloat16)
    assert compute_dtype_for(model, "auto") == torch.bfloat16
    with pytest.warns(UserWarning, match="upcast"):
        assert compute_dtype_for(model, "fp32") == torch.float32
    assert model.weight_dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compute_dtype_for(model, "auto") == torch.float32  # CPU, fp32 weights


def test_memory_choices_on_cpu():
    cpu = torch.device("cpu")
    assert choose_batch_view_num(cpu, torch.bfloat16, samples=4) == 16
    assert choose_decode_batch(cpu, torch.bfloat16, 32) == 32


def test_flop_count_follows_the_work():
    one = count_generation_flops(tiny_config(), samples=1, steps=10, cfg_scale=1.0)
    guided = count_generation_flops(tiny_config(), samples=1, steps=10, cfg_scale=2.0)
    two = count_generation_flops(tiny_config(), samples=2, steps=10, cfg_scale=2.0)
    assert guided.step_unet == pytest.approx(2 * one.step_unet, rel=1e-9)  # CFG doubles the UNet batch
    # depth attention attends on the conditional rows only: guidance adds just the constant maps
    assert one.step_depth_attention < guided.step_depth_attention < 1.2 * one.step_depth_attention
    assert guided.step_volume == one.step_volume > 0
    assert two.decode == pytest.approx(2 * guided.decode)
    assert two.step_unet == pytest.approx(2 * guided.step_unet)
    assert two.step_volume == pytest.approx(2 * guided.step_volume)
    assert guided.total == pytest.approx(guided.conditioning + 10 * guided.step + guided.decode)
    assert guided.floor_seconds(1e12) == pytest.approx(guided.total / 1e12)


def test_sample_views_returns_the_latents_behind_the_views(state_dict, prepared):
    model = load_syncdreamer(state_dict, tiny_config())
    settings = GenerationSettings(steps=2, seed=4)
    out = sample_views(model, prepared, settings)
    assert out.latents.shape == (1, 16, 4, 32, 32) and out.latents.dtype == torch.float32
    assert out.views_u8.shape == (1, 16, 256, 256, 3) and out.views_u8.dtype == np.uint8
    assert out.record["cuda_graph"] is False
    with torch.no_grad():
        decoded = model.decode_latents(out.latents[0])
    from sd3d.pipelines.syncdreamer import quantize_official

    np.testing.assert_array_equal(quantize_official(decoded), out.views_u8[0])


# --------------------------------------------------------------------------------------------------
# CUDA only
# --------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("half_norms", [False, True])
def test_cuda_graph_replay_equals_eager(state_dict, prepared, half_norms):
    model = load_syncdreamer(state_dict, tiny_config(), "cuda", dtype=torch.bfloat16)
    cast_weights_(model, torch.bfloat16, half_norms=half_norms)
    settings = GenerationSettings(steps=4, seed=9)
    eager = sample_views(model, prepared, settings, "bf16", cuda_graph=False)
    graphed = sample_views(model, prepared, settings, "bf16", cuda_graph=True)
    assert graphed.record["cuda_graph"] is True
    torch.testing.assert_close(graphed.latents, eager.latents, rtol=0, atol=0)
    np.testing.assert_array_equal(graphed.views_u8, eager.views_u8)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_offloaded_conditioning_gives_the_same_views(state_dict, prepared):
    from sd3d.models.inference import offload_conditioning_, onload_conditioning_

    model = load_syncdreamer(state_dict, tiny_config(), "cuda", dtype=torch.bfloat16)
    settings = GenerationSettings(steps=2, seed=9)
    ref = sample_views(model, prepared, settings, "bf16")
    offload_conditioning_(model)
    assert model.clip_image_encoder.model.visual.proj.device.type == "cpu"
    out = sample_views(model, prepared, settings, "bf16")
    assert model.clip_image_encoder.model.visual.proj.device.type == "cpu"  # still parked after the run
    onload_conditioning_(model)
    torch.testing.assert_close(out.latents, ref.latents, rtol=0, atol=0)


def _cuda_step(model, inputs) -> torch.Tensor:
    cond, x_t = inputs
    cond = type(cond)(**{k: getattr(cond, k).float().cuda() for k in cond.__dataclass_fields__})
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        return model.predict_eps(x_t.float().cuda(), torch.tensor(T, device="cuda"), cond, 2.0, 16).float()


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_biases_moved_into_norm_terms_round_as_cudnns_addition(state_dict, inputs):
    """On CUDA (bf16, channels-last, the Triton norms), a bias moved into the next norm's terms
    (identity-skip ResBlocks, the depth transformers' input projections) gives the same bits as
    cuDNN's convolution followed by PyTorch's addition; the whole model with every fold, the 1x1
    projections as matrix products included (one rounding fewer), ends no further from float32."""
    from sd3d.models.depth_attention import DepthTransformer
    from sd3d.models.inference import prepare_for_inference
    from sd3d.models.unet import ResBlock

    model = load_syncdreamer(state_dict, tiny_config(), "cuda", dtype=torch.bfloat16)
    prepare_for_inference(model, torch.bfloat16, offload=False, fold_conv_biases=False)
    plain = _cuda_step(model, inputs)
    exact = 0
    for m in model.modules():
        if isinstance(m, DepthTransformer) or (
            isinstance(m, ResBlock) and isinstance(m.skip_connection, torch.nn.Identity)
        ):
            m.fold_conv_bias = True
            exact += 1
    assert exact > 0
    assert torch.equal(_cuda_step(model, inputs), plain)
    set_conv_bias_folding(model, True)
    folded = _cuda_step(model, inputs)
    fp32 = load_syncdreamer(state_dict, tiny_config(), "cuda")
    cond, x_t = inputs
    cond32 = type(cond)(**{k: getattr(cond, k).float().cuda() for k in cond.__dataclass_fields__})
    with torch.no_grad():
        reference = fp32.predict_eps(x_t.float().cuda(), torch.tensor(T, device="cuda"), cond32, 2.0, 16)
    assert not torch.equal(folded, plain)
    assert rel(folded, reference) <= 1.1 * rel(plain, reference), (
        rel(folded, reference),
        rel(plain, reference),
    )


def test_zero_context_offset_is_kept_until_a_weight_or_the_setting_changes():
    """The unconditional rows' constant offset is computed once, not every step, and again when a
    weight it depends on changes in place or is replaced, when another size is asked for,
    or under autocast; with autograd on nothing is kept."""
    layer = DepthTransformer(dim=24, n_heads=4, d_head=8, context_dim=16).eval()
    computed = []
    plain = layer._compute_zero_context_offset

    def counted(*args):
        computed.append(args)
        return plain(*args)

    layer._compute_zero_context_offset = counted
    cpu = torch.device("cpu")
    with torch.no_grad():
        first = layer.zero_context_offset(5, 6, torch.float32, cpu)
        assert layer.zero_context_offset(5, 6, torch.float32, cpu) is first and len(computed) == 1
        assert torch.equal(first, plain(5, 6, torch.float32, cpu))
        layer.proj_out[2].weight.mul_(2)
        second = layer.zero_context_offset(5, 6, torch.float32, cpu)
        assert len(computed) == 2 and torch.equal(second, plain(5, 6, torch.float32, cpu))
        layer.depth_attn.to_v.weight.data = layer.depth_attn.to_v.weight.data * 3
        third = layer.zero_context_offset(5, 6, torch.float32, cpu)
        assert len(computed) == 3 and torch.equal(third, plain(5, 6, torch.float32, cpu))
        layer.zero_context_offset(4, 6, torch.float32, cpu)
        layer.zero_context_offset(5, 7, torch.float32, cpu)
        assert len(computed) == 5
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer.zero_context_offset(5, 6, torch.float32, cpu)
        assert len(computed) == 6
    layer.zero_context_offset(5, 6, torch.float32, cpu)  # autograd on: computed, not kept
    layer.zero_context_offset(5, 6, torch.float32, cpu)
    assert len(computed) == 8
