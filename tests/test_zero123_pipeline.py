"""End to end on CPU with the tiny synthetic Zero123: novel views, the 16 views with both samplers, the CLI."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from sd3d.core import cameras as cam
from sd3d.core.errors import InputImageError, UserError
from sd3d.models.zero123 import tiny_config
from sd3d.models.zero123_checkpoint import load_zero123, write_synthetic_checkpoint
from sd3d.pipelines.zero123 import (
    Zero123Input,
    Zero123Settings,
    generate_view_sets_zero123,
    generate_views_zero123,
    model_input,
    novel_view,
    prepare_zero123_input,
)
from sd3d.sampling.stochastic_conditioning import INPUT_VIEW

STEPS = 2
STOCHASTIC = Zero123Settings(steps=STEPS, seed=1, sampler="stochastic-conditioning")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return write_synthetic_checkpoint(tmp_path_factory.mktemp("z123") / "tiny-zero123.ckpt", tiny_config())


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    return load_zero123(tiny_ckpt)


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
    """A cut-out object: an RGBA image with a coloured disc on transparent background."""
    yy, xx = np.mgrid[:120, :160]
    disc = (yy - 60) ** 2 + (xx - 70) ** 2 < 40**2
    rgba = np.zeros((120, 160, 4), np.uint8)
    rgba[..., 0] = (xx * 1.5).astype(np.uint8)
    rgba[..., 1] = 90
    rgba[..., 2] = (yy * 2).astype(np.uint8)
    rgba[..., 3] = np.where(disc, 255, 0)
    path = tmp_path_factory.mktemp("photo") / "disc.png"
    Image.fromarray(rgba, "RGBA").save(path)
    return str(path)


@pytest.fixture(scope="module")
def prepared(photo) -> Zero123Input:
    return prepare_zero123_input(photo)


@pytest.fixture(scope="module")
def independent(model, prepared):
    return generate_views_zero123(prepared, 20.0, Zero123Settings(steps=STEPS, seed=1), model=model)


@pytest.fixture(scope="module")
def stochastic(model, prepared):
    return generate_views_zero123(prepared, 20.0, STOCHASTIC, model=model)


# --------------------------------------------------------------------------------------------------
# preprocessing
# --------------------------------------------------------------------------------------------------
def test_demo_preprocessing_of_a_cutout(prepared):
    assert prepared.preprocessed and prepared.background == "alpha"
    assert prepared.crop_box == (31, 21, 79, 79)  # inclusive box (x, y, w, h) of the disc; no resize
    u8 = prepared.uint8()
    assert (u8[0] == 255).all() and (u8[:, 0] == 255).all()  # white padding
    ys, xs = np.nonzero((u8 != 255).any(-1))
    assert (xs.min(), ys.min()) == ((256 - 79) // 2, (256 - 79) // 2)  # pasted floor-centred
    assert (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (79, 79)


def test_preprocessing_never_enlarges_and_shrinks_to_200(tmp_path):
    big = np.zeros((600, 900, 4), np.uint8)
    big[100:500, 100:800] = (200, 50, 50, 255)
    Image.fromarray(big, "RGBA").save(tmp_path / "big.png")
    u8 = prepare_zero123_input(tmp_path / "big.png").uint8()
    ys, xs = np.nonzero((u8 != 255).any(-1))
    assert xs.max() - xs.min() + 1 == 200  # 700x400 -> thumbnail 200x114
    assert ys.max() - ys.min() + 1 == 114


def test_bad_inputs_are_one_line_user_errors(tmp_path):
    clear = np.zeros((32, 32, 4), np.uint8)
    clear[..., 3] = 100  # alpha <= 127 everywhere: nothing survives the demo's hard threshold
    Image.fromarray(clear, "RGBA").save(tmp_path / "faint.png")
    with pytest.raises(InputImageError, match="> 127"):
        prepare_zero123_input(tmp_path / "faint.png", background="alpha")
    with pytest.raises(InputImageError):
        prepare_zero123_input(tmp_path / "missing.png")
    with pytest.raises(UserError, match="--background"):
        prepare_zero123_input(tmp_path / "faint.png", background="magic")


def test_syncdreamer_prepared_input_is_used_as_is(photo):
    from sd3d.preprocess import prepare_input

    sync = prepare_input(photo)
    x = model_input(sync)
    assert x.shape == (1, 3, 256, 256) and torch.equal(
        x[0].permute(1, 2, 0), torch.from_numpy(np.array(sync.model_rgb))
    )


# --------------------------------------------------------------------------------------------------
# novel_view
# --------------------------------------------------------------------------------------------------
def test_novel_view_samples_are_seeded(model, prepared):
    views = novel_view(prepared, 10, 90, settings=Zero123Settings(STEPS, seed=3, samples=2), model=model)
    assert len(views) == 2 and all(v.shape == (256, 256, 3) and v.dtype == np.uint8 for v in views)
    assert not np.array_equal(views[0], views[1])  # samples differ through their noise
    again = novel_view(prepared, 10, 90, settings=Zero123Settings(STEPS, seed=3, samples=2), model=model)
    assert all(np.array_equal(a, b) for a, b in zip(views, again, strict=True))
    other = novel_view(prepared, 10, 90, settings=Zero123Settings(STEPS, seed=4, samples=1), model=model)
    assert not np.array_equal(other[0], views[0])


def test_novel_view_rejects_impossible_settings(model, prepared):
    for kwargs, match in [
        ({"steps": 3}, "use 2 or 4"),
        ({"samples": 0}, "--samples"),
        ({"cfg": -1.0}, "--cfg"),
    ]:
        with pytest.raises(UserError, match=match):
            novel_view(prepared, 0, 30, settings=Zero123Settings(**{"steps": STEPS, **kwargs}), model=model)


# --------------------------------------------------------------------------------------------------
# generate_views_zero123
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["independent", "stochastic"])
def test_sixteen_views_at_the_target_cameras(request, fixture):
    views = request.getfixturevalue(fixture)
    assert views.images.shape == (16, 256, 256, 3) and views.images.dtype == np.float32
    assert views.images.min() >= 0 and views.images.max() <= 1
    # the demo's uint8 quantisation, kept exactly: images are u8 / 255
    assert np.array_equal((np.rint(views.images * 255) / 255).astype(np.float32), views.images)
    refs = cam.target_cameras()
    assert all(np.allclose(c.w2c, r.w2c) for c, r in zip(views.cameras, refs, strict=True))
    assert views.input_elevation_deg == 20.0 and views.seed == 1 and views.alphas is None
    assert views.provenance["sampler"] == (
        "independent" if fixture == "independent" else "stochastic-conditioning"
    )
    assert len({views.images[i].tobytes() for i in range(16)}) == 16  # every view is its own sample


def test_views_folder_round_trip(independent, tmp_path):
    """Same layout as SyncDreamer's views: write_views_into / read_views keep the pixels exactly."""
    from sd3d.core.io import read_views, to_uint8, write_views_into

    write_views_into(tmp_path, [to_uint8(im) for im in independent.images], independent.cameras)
    back = read_views(tmp_path)
    assert np.array_equal(back.images, independent.images)


def test_independent_views_are_reproducible_and_batch_size_free(model, prepared, independent):
    again = generate_views_zero123(prepared, 20.0, Zero123Settings(steps=STEPS, seed=1), model=model)
    assert np.array_equal(again.images, independent.images)
    # another batching draws the same noise; only float round-off differs (a uint8 step at most)
    rebatched = generate_views_zero123(
        prepared, 20.0, Zero123Settings(steps=STEPS, seed=1, batch_view_num=5), model=model
    )
    assert np.abs(rebatched.images - independent.images).max() * 255 <= 1.0 + 1e-4
    other = generate_views_zero123(prepared, 20.0, Zero123Settings(steps=STEPS, seed=2), model=model)
    assert not np.array_equal(other.images, independent.images)


def test_view_sets_use_consecutive_seeds(model, prepared, independent):
    sets = generate_view_sets_zero123(
        prepared, 20.0, Zero123Settings(steps=STEPS, seed=1, samples=2), model=model
    )
    assert [v.seed for v in sets] == [1, 2]
    assert np.array_equal(sets[0].images, independent.images)  # set 0 is the one-set run's
    second = generate_views_zero123(prepared, 20.0, Zero123Settings(steps=STEPS, seed=2), model=model)
    assert np.array_equal(sets[1].images, second.images)


def test_opaque_rgba_is_the_image_with_a_full_alpha(prepared):
    rgba = prepared.opaque_rgba()
    assert rgba.shape == (256, 256, 4) and rgba.dtype == np.uint8
    assert np.array_equal(rgba[..., :3], prepared.uint8()) and (rgba[..., 3] == 255).all()


def test_stochastic_conditioning_is_reproducible_and_seeded(model, prepared, stochastic):
    again = generate_views_zero123(prepared, 20.0, STOCHASTIC, model=model)
    assert np.array_equal(again.images, stochastic.images)
    assert again.provenance["conditioning_draws"] == stochastic.provenance["conditioning_draws"]
    other = generate_views_zero123(prepared, 20.0, replace(STOCHASTIC, seed=2), model=model)
    assert not np.array_equal(other.images, stochastic.images)
    assert other.provenance["conditioning_draws"] != stochastic.provenance["conditioning_draws"]


def test_stochastic_conditioning_draws_finished_views(stochastic):
    order = stochastic.provenance["generation_order"]
    draws = stochastic.provenance["conditioning_draws"]
    assert order == [0, 1, 15, 2, 14, 3, 13, 4, 12, 5, 11, 6, 10, 7, 9, 8]
    assert all(len(d) == STEPS for d in draws)
    for position, target in enumerate(order):
        assert set(draws[target]) <= {INPUT_VIEW, *order[:position]}
    used = {v for d in draws for v in d if v != INPUT_VIEW}
    assert len(used) >= 3  # several finished views conditioned later ones


def test_stochastic_conditioning_feeds_the_saved_image_of_a_finished_view(model, prepared, monkeypatch):
    """The conditional branch really receives a finished view: its concat latent is the VAE mean of
    that view's saved uint8 image (what re-reading the PNG gives), whenever that view is drawn."""
    calls: list[torch.Tensor] = []
    original = model.guided_eps

    def spy(x, t, context, concat, cfg_scale):
        calls.append(concat.clone())
        return original(x, t, context, concat, cfg_scale)

    monkeypatch.setattr(model, "guided_eps", spy)
    views = generate_views_zero123(prepared, 20.0, replace(STOCHASTIC, seed=5), model=model)
    monkeypatch.undo()
    order, draws = views.provenance["generation_order"], views.provenance["conditioning_draws"]
    drawn = [(target, v) for target in order for v in draws[target]]
    assert len(calls) == len(drawn)
    checked = 0
    with torch.inference_mode():
        for (_, view_id), concat in zip(drawn, calls, strict=True):
            if view_id == INPUT_VIEW:
                continue
            image = torch.from_numpy(views.images[view_id]).permute(2, 0, 1)[None] * 2 - 1
            assert torch.allclose(concat, model.encode_posterior(image)[0], atol=1e-5)
            checked += 1
    assert checked > 0


def test_latent_conditioning_option(model, prepared, stochastic):
    views = generate_views_zero123(prepared, 20.0, replace(STOCHASTIC, condition_on="latent"), model=model)
    assert views.provenance["condition_on"] == "latent"
    assert views.provenance["conditioning_draws"] == stochastic.provenance["conditioning_draws"]
    # the first view only sees the input, so it is identical; later ones see other conditioning
    assert np.array_equal(views.images[0], stochastic.images[0])
    assert not np.array_equal(views.images, stochastic.images)


def test_bad_sampler_and_elevation(model, prepared):
    with pytest.raises(UserError, match="unknown sampler"):
        generate_views_zero123(prepared, 20.0, Zero123Settings(sampler="sync"), model=model)
    with pytest.raises(UserError, match="elevation"):
        generate_views_zero123(prepared, 120.0, model=model)
