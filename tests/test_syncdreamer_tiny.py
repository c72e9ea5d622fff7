"""Model-level behaviour on the tiny config: chunking invariance and classifier-free-guidance wiring.

The model runs in float64 here so that "the same result" can be checked to 1e-10: in float32 the
differently batched kernels already differ by ~1e-5 relative (as they do from the float64 result).
"""

from __future__ import annotations

import pytest
import torch

from sd3d.models.configs import tiny_config
from sd3d.models.syncdreamer_checkpoint import load_syncdreamer
from sd3d.models.synthetic import synthetic_state_dict


@pytest.fixture(scope="module")
def model():
    return load_syncdreamer(synthetic_state_dict(tiny_config()), tiny_config()).double()


@pytest.fixture(scope="module")
def inputs(model):
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 256, 256, generator=gen, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        cond = model.condition(image, [30.0, 10.0], generator=gen)
    x_t = torch.randn(2, 16, 4, 32, 32, generator=gen, dtype=torch.float64)
    return cond, x_t


T = 581


def assert_same(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-10) -> None:
    """Equal up to float64 round-off: max error relative to max |b|."""
    assert a.shape == b.shape
    err = ((a - b).abs().max() / b.abs().max()).item()
    assert err <= rel, err


def _plain(model, cond, x_t, views, *, context=True, frustum=True, concat=True):
    """The official plain (cfg = 1) call for ``views``, optionally with conditions zeroed (full tensors)."""
    B = x_t.shape[0]
    vn = len(views)
    targets = torch.tensor(views)
    t_embed = model.embed_time(torch.full((B,), T))
    volume = model.build_spatial_volume(x_t, t_embed, cond)
    feats = model.frustum_features(volume, t_embed, cond, targets)
    if not frustum:
        feats = {k: torch.zeros_like(v) for k, v in feats.items()}
    ctx = cond.contexts[:, targets].reshape(B * vn, 1, -1)
    cat = cond.concat_latent.repeat_interleave(vn, dim=0)
    x = x_t[:, targets].reshape(B * vn, 4, 32, 32)
    out = model.model(
        x,
        torch.full((B * vn,), T),
        ctx if context else torch.zeros_like(ctx),
        feats,
        cat if concat else torch.zeros_like(cat),
    )
    return out.reshape(B, vn, 4, 32, 32)


def test_batch_view_num_does_not_change_eps(model, inputs):
    cond, x_t = inputs
    with torch.no_grad():
        ref = model.predict_eps(x_t, T, cond, cfg_scale=2.0, batch_view_num=16)
        for bvn in (1, 4, 5):  # 5: uneven last chunk
            assert_same(model.predict_eps(x_t, T, cond, 2.0, bvn), ref)
    assert ref.shape == (2, 16, 4, 32, 32)
    assert (ref[:, 0] - ref[:, 8]).abs().mean() > 1e-3  # views really differ


def test_cfg_one_is_the_plain_conditional_path(model, inputs):
    cond, x_t = inputs
    with torch.no_grad():
        eps = model.predict_eps(x_t, T, cond, cfg_scale=1.0, batch_view_num=16)
        plain = _plain(model, cond, x_t, list(range(16)))
    assert_same(eps, plain)


def test_guidance_zeroes_context_frustum_and_concat(model, inputs):
    cond, x_t = inputs
    views = [0, 5, 11]
    with torch.no_grad():
        c = _plain(model, cond, x_t, views)
        uc = _plain(model, cond, x_t, views, context=False, frustum=False, concat=False)
        t_embed = model.embed_time(torch.full((2,), T))
        volume = model.build_spatial_volume(x_t, t_embed, cond)
        guided = model.eps_from_volume(x_t, T, t_embed, volume, cond, 3.0, 2, views=views)
        # each of the three conditions matters on its own, so zeroing all three is really tested
        for kw in ({"context": False}, {"frustum": False}, {"concat": False}):
            assert (_plain(model, cond, x_t, views, **kw) - c).abs().max() > 1e-4, kw
    assert_same(guided, uc + 3.0 * (c - uc))


def test_volume_is_built_from_all_views(model, inputs):
    """Changing one noisy view changes the prediction of another (the synchronisation)."""
    cond, x_t = inputs
    changed = x_t.clone()
    changed[:, 9] += 1.0
    with torch.no_grad():
        a = model.predict_eps(x_t, T, cond, 1.0, 16)[:, 3]
        b = model.predict_eps(changed, T, cond, 1.0, 16)[:, 3]
    assert (a - b).abs().max() > 1e-4
