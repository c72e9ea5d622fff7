"""Network pieces: projection geometry and embeddings vs the official numbers; exact shortcuts vs plain maths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sd3d.models.configs import UNetConfig, official_config, tiny_config
from sd3d.models.depth_attention import DepthTransformer
from sd3d.models.syncdreamer import camera_buffers
from sd3d.models.unet import CrossAttention, UNetModel, timestep_embedding
from sd3d.models.volume import frustum_sample_grid, spatial_sample_grid


@pytest.fixture(scope="module")
def vectors(reference_dir):
    return json.loads((reference_dir / "syncdreamer-reference-vectors.json").read_text())


@pytest.fixture(scope="module")
def grids():
    cfg = official_config()
    cams = camera_buffers(cfg)
    spatial = spatial_sample_grid(cams["Ks"], cams["poses"], cfg.volume, cfg.image_size, cfg.latent_size)
    frustum, depth = frustum_sample_grid(
        cams["Ks"], cams["poses"], cfg.volume, cfg.image_size, cfg.latent_size
    )
    return spatial, frustum, depth


def test_spatial_volume_projection_samples(vectors, grids):
    spatial = grids[0]
    assert spatial.shape == (16, 32, 32 * 32, 2)
    for s in vectors["spatial_volume_projection_samples"]:
        n, d, h, w = s["view"], s["d_index(z)"], s["h_index(y)"], s["w_index(x)"]
        np.testing.assert_allclose(spatial[n, d, h * 32 + w].numpy(), s["grid_sample_xy"], rtol=0, atol=2e-6)


def test_frustum_volume_samples(vectors, grids):
    _, frustum, depth = grids
    assert frustum.shape == (16, 48, 32, 32, 3)
    for s in vectors["frustum_volume_samples"]:
        assert depth[s["d"]].item() == pytest.approx(s["depth"], abs=1e-7)
        world = frustum[s["view"], s["d"], s["y"], s["x"]].numpy() * 0.5  # grid = world / 0.5
        np.testing.assert_allclose(world, s["world_xyz"], rtol=0, atol=2e-6)


def test_timestep_embedding_matches_the_official_one(vectors):
    ref = vectors["timestep_embedding_dim256_t1_500_981_first8_and_128_136"]
    emb = timestep_embedding(torch.tensor([1, 500, 981]), 256)
    for i in range(3):
        np.testing.assert_allclose(emb[i, :8].numpy(), ref[i][0], rtol=0, atol=1e-6)  # cos first
        np.testing.assert_allclose(emb[i, 128:136].numpy(), ref[i][1], rtol=0, atol=1e-6)


def test_viewpoint_embedding_for_several_elevations(vectors):
    from sd3d.models.syncdreamer_checkpoint import build_meta_model

    model = build_meta_model(tiny_config())  # only needs the (real) camera buffers
    model.cc_projection.to_empty(device="cpu")
    table = vectors["viewpoint_embedding_by_input_elevation_deg"]
    elevations = [float(e) for e in table]
    got = model.viewpoint_embedding(elevations)
    for i, e in enumerate(table):
        np.testing.assert_array_equal(got[i].numpy(), np.float32(table[e]))


def _naive_depth_transformer(layer: DepthTransformer, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    """The spec's formula with plain convolutions and explicit reshapes."""
    h = layer.proj_in(x)
    c = torch.nn.functional.relu(
        layer.proj_context[1](torch.nn.functional.conv3d(ctx, layer.proj_context[0].weight))
    )
    att = layer.depth_attn
    b, _, hh, ww = h.shape
    D = c.shape[2]
    q = att.to_q(h).view(b, att.heads, att.dim_head, hh, ww)
    k = torch.nn.functional.conv3d(c, att.to_k.weight).view(b, att.heads, att.dim_head, D, hh, ww)
    v = torch.nn.functional.conv3d(c, att.to_v.weight).view(b, att.heads, att.dim_head, D, hh, ww)
    logits = (q.unsqueeze(3) * k).sum(2) * att.dim_head**-0.5
    weights = logits.softmax(dim=2)
    out = (weights.unsqueeze(2) * v).sum(3).reshape(b, -1, hh, ww)
    return layer.proj_out(att.to_out(out)) + x


def test_depth_transformer_matches_the_plain_formula_including_zero_context_rows():
    torch.manual_seed(0)
    layer = DepthTransformer(dim=24, n_heads=4, d_head=8, context_dim=16).eval()
    for p in layer.parameters():  # non-trivial norms so the zero-context constant is not 0
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(5, 24, 6, 6)
    ctx = torch.randn(3, 16, 7, 6, 6)
    with torch.no_grad():
        fast = layer(x, ctx)  # rows 3 and 4 get zero context
        full_ctx = torch.cat([ctx, torch.zeros(2, 16, 7, 6, 6)])
        slow = _naive_depth_transformer(layer, x, full_ctx)
        only_zero = layer(x, ctx[:0])
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        only_zero, _naive_depth_transformer(layer, x, torch.zeros(5, 16, 7, 6, 6)), rtol=1e-5, atol=1e-5
    )
    assert not torch.allclose(fast[3:], x[3:])  # the zero-context offset is really there


def test_single_token_cross_attention_shortcut_is_exact():
    torch.manual_seed(1)
    attn = CrossAttention(query_dim=16, heads=2, dim_head=8, context_dim=12).eval()
    x, ctx = torch.randn(3, 10, 16), torch.randn(3, 1, 12)
    with torch.no_grad():
        fast = attn(x, ctx)
        q, k, v = attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)
        q, k, v = (t.view(3, -1, 2, 8).transpose(1, 2) for t in (q, k, v))
        w = (q @ k.transpose(-1, -2) * 8**-0.5).softmax(-1)
        slow = attn.to_out((w @ v).transpose(1, 2).reshape(3, 10, 16))
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-6)


def test_unet_without_depth_attention_is_the_zero123_unet():
    cfg = UNetConfig(**{**tiny_config().unet.__dict__, "depth_attention_dims": None})
    unet = UNetModel(cfg).eval()
    assert not any("conditions" in k for k in unet.state_dict())
    with torch.no_grad():
        out = unet(torch.randn(2, 8, 32, 32), torch.tensor([1, 981]), torch.randn(2, 1, cfg.context_dim))
    assert out.shape == (2, 4, 32, 32)
    with_depth = UNetModel(tiny_config().unet)
    assert len(with_depth.output_conditions) == len(with_depth.output_blocks) - (cfg.num_res_blocks + 1)
    with pytest.raises(ValueError, match="source_dict"):
        with_depth(torch.randn(1, 8, 32, 32), torch.tensor([1]), torch.randn(1, 1, cfg.context_dim))


def test_one_token_cross_attention_skips_its_norm_and_equals_the_full_attention():
    """With a one-token context (SyncDreamer's and Zero123's), a transformer block skips norm2 (its
    output cannot change attn2's: one key, softmax weight 1) and still gives the full attention's
    result: the same context as two identical tokens (weights 1/2 each, so the same v) takes the
    general path through norm2, q, k and the softmax; float64."""
    from sd3d.models.unet import BasicTransformerBlock

    torch.manual_seed(0)
    block = BasicTransformerBlock(dim=16, heads=2, dim_head=8, context_dim=12).double().eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(3, 10, 16, dtype=torch.float64)
    ctx = torch.randn(3, 1, 12, dtype=torch.float64)
    calls = []
    block.norm2.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        one = block(x, ctx)
        assert not calls
        two = block(x, torch.cat([ctx, ctx], dim=1))
        assert calls
    assert float((one - two).norm() / two.norm()) < 1e-13
    assert float(block.attn2.single_key_output(ctx).abs().max()) > 0.1  # attn2 really contributes
