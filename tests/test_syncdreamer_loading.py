"""Checkpoint layout and loading: every official key accounted for, bad checkpoints refused by name."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest
import torch

from sd3d.core.errors import WeightsError
from sd3d.models.configs import official_config, tiny_config
from sd3d.models.syncdreamer_checkpoint import (
    CHECKED_BUFFER_KEYS,
    IGNORED_KEYS,
    build_meta_model,
    detect_config,
    expected_shapes,
    load_syncdreamer,
    reference_buffers,
    split_state_dict,
)
from sd3d.models.synthetic import (
    make_synthetic_checkpoint,
    synthetic_state_dict,
    synthetic_tensor,
    synthetic_unit,
)


@pytest.fixture(scope="module")
def official_keys(reference_dir):
    entries = json.loads((reference_dir / "syncdreamer-state-dict-keys.json").read_text())["entries"]
    return {e["key"]: tuple(e["shape"]) for e in entries}


@pytest.fixture(scope="module")
def tiny_sd():
    return synthetic_state_dict(tiny_config())


def test_official_layout_matches_every_key_name_shape_and_order(official_keys):
    ours = expected_shapes(official_config())
    assert list(ours) == list(official_keys)
    assert ours == official_keys
    assert sum(math.prod(s) for s in ours.values()) == 1_392_370_020


def test_every_official_key_is_consumed_ignored_or_checked(official_keys):
    model = build_meta_model(official_config())
    consumed = set(model.state_dict())
    ignored, checked = set(IGNORED_KEYS), set(CHECKED_BUFFER_KEYS)
    assert not (consumed & ignored) and not (consumed & checked) and not (ignored & checked)
    assert consumed | ignored | checked == set(official_keys)
    assert (len(consumed), len(ignored), len(checked)) == (1602, 6, 10)
    assert all(k.startswith("clip_image_encoder.model.") and ".visual." not in k for k in ignored)


def test_recomputed_buffers_match_the_official_values(reference_dir):
    vectors = json.loads((reference_dir / "syncdreamer-reference-vectors.json").read_text())
    buffers = reference_buffers(official_config())
    np.testing.assert_array_equal(buffers["betas"].numpy(), np.float32(vectors["betas_float32"]))
    np.testing.assert_array_equal(
        buffers["alphas_cumprod"].numpy(), np.float32(vectors["alphas_cumprod_float32"])
    )
    np.testing.assert_array_equal(buffers["azimuth"].numpy(), np.float32(vectors["model_azimuth_buffer"]))
    cams = json.loads((reference_dir / "camera-16.json").read_text())
    poses = np.asarray(cams["poses"]["value"], np.float64)
    np.testing.assert_allclose(buffers["poses"].numpy(), poses, atol=1e-6, rtol=0)
    K = np.float32(cams["K"]["value"])
    np.testing.assert_array_equal(buffers["Ks"].numpy(), np.repeat(K[None], 16, axis=0))


def test_synthetic_formula_reproduces_the_fixture_noise(reference_dir):
    with np.load(reference_dir / "syncdreamer-golden-synthetic.npz") as golden:
        x_T, noise = golden["x_T"], golden["injected_noise_step49"]
    ulp = np.spacing(np.float32(1.5))  # values are within sqrt(2): one float32 ulp there
    assert np.abs(synthetic_unit("x_T", (1, 16, 4, 32, 32))[0].numpy() - x_T).max() <= ulp
    assert np.abs(synthetic_unit("noise_step49", (1, 16, 4, 32, 32))[0].numpy() - noise).max() <= ulp


@pytest.mark.parametrize(
    ("key", "shape", "rule"),
    [
        ("a.conv.weight", (5, 3, 3, 3), lambda u: u / math.sqrt(27)),
        ("a.norm.weight", (7,), lambda u: 1 + 0.1 * u),
        ("a.norm.bias", (7,), lambda u: 0.05 * u),
        ("a.logit_scale", (), lambda u: 0.05 * u),
        ("a.big.weight", (70000, 2), lambda u: u / math.sqrt(2)),  # the blocked fast path
    ],
)
def test_synthetic_tensor_follows_appendix_b(key, shape, rule):
    n = math.prod(shape)
    phase = (zlib.crc32(key.encode()) & 0xFFFFFFFF) / 2**32
    u = np.mod(np.arange(n, dtype=np.float64) * 0.6180339887498949 + phase, 1.0)
    expected = rule(np.sin(2 * np.pi * u) * np.sqrt(2)).astype(np.float32).reshape(shape)
    got = synthetic_tensor(key, shape).numpy()
    assert got.shape == shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=2 * np.spacing(np.float32(1.0)))


def test_tiny_synthetic_checkpoint_round_trips(tmp_path, tiny_sd):
    path = make_synthetic_checkpoint(tmp_path / "tiny.ckpt", tiny_config())
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict"} and list(raw["state_dict"]) == list(expected_shapes(tiny_config()))
    model = load_syncdreamer(path)  # the config is recognised from the shapes
    assert model.config == tiny_config()
    for key, value in model.state_dict().items():
        assert torch.equal(value, tiny_sd[key]), key
    assert not any(p.requires_grad for p in model.parameters())
    assert not model.training


def test_detect_config():
    assert detect_config(build_meta_model(tiny_config()).state_dict()) == tiny_config()
    assert detect_config({}) == official_config()


def test_safetensors_copy_without_leftovers_or_buffers_loads(tmp_path, tiny_sd):
    from safetensors.torch import save_file

    dropped = set(IGNORED_KEYS) | set(CHECKED_BUFFER_KEYS)
    half = {k: v.half().contiguous() for k, v in tiny_sd.items() if k not in dropped}
    save_file(half, tmp_path / "tiny.safetensors")
    model = load_syncdreamer(tmp_path / "tiny.safetensors", tiny_config())
    w = model.cc_projection.weight
    assert w.dtype == torch.float32
    assert torch.equal(w, tiny_sd["cc_projection.weight"].half().float())


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_a_half_precision_copy_from_sd3d_weights_convert_loads(tmp_path, dtype):
    from sd3d.weights.convert import convert_checkpoint

    src = make_synthetic_checkpoint(tmp_path / "tiny.ckpt", tiny_config())
    dst = tmp_path / f"tiny-{dtype}.safetensors"
    convert_checkpoint(src, dst, dtype=dtype, drop_prefixes=["clip_image_encoder.model.token_embedding"])
    model = load_syncdreamer(dst)
    assert model.config == tiny_config()
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda sd: sd.pop("model.diffusion_model.out.2.bias"),
            "missing key 'model.diffusion_model.out.2.bias'",
        ),
        (
            lambda sd: sd.__setitem__("model.extra.weight", torch.zeros(1)),
            "unexpected key 'model.extra.weight'",
        ),
        (
            lambda sd: sd.__setitem__("cc_projection.bias", torch.zeros(3)),
            r"key 'cc_projection.bias'.* has shape \[3\]",
        ),
        (lambda sd: sd.__setitem__("betas", sd["betas"] * 1.01), "buffer 'betas'.* differs"),
        (lambda sd: sd.__setitem__("poses", sd["poses"].flip(0)), "buffer 'poses'.* differs"),
    ],
)
def test_bad_checkpoints_are_refused_naming_the_key(tiny_sd, mutate, message):
    sd = dict(tiny_sd)
    mutate(sd)
    with pytest.raises(WeightsError, match=message) as info:
        split_state_dict(sd, tiny_config(), source="x.ckpt")
    assert "\n" not in str(info.value) and "x.ckpt" in str(info.value)


def test_a_tiny_checkpoint_is_refused_by_the_official_config(tiny_sd):
    with pytest.raises(WeightsError, match="unexpected key|missing key|has shape"):
        load_syncdreamer(tiny_sd, official_config())


def test_building_the_checkpoints_model_on_meta_imports_no_sympy():
    """A cold process that loads a checkpoint (SyncDreamer's or Zero123's) builds the model on
    ``meta`` first; ``torch.randn`` (or ``arange``, ``normal_``) there runs PyTorch's Python
    reference, whose first check imports sympy: about 2 s of a cold process on the GPU machine for
    values the checkpoint overwrites."""
    import subprocess
    import sys

    code = (
        "import sys; from sd3d.models.configs import official_config; "
        "from sd3d.models.syncdreamer_checkpoint import build_meta_model; "
        "from sd3d.models import zero123, zero123_checkpoint; "
        "build_meta_model(official_config()); "
        "zero123_checkpoint.build_meta_model(zero123.official_config()); print('sympy' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_clip_parameters_off_meta_are_the_draws_randn_makes():
    """The CLIP tower's random parameters (models built with random weights) keep their values."""
    from sd3d.models.clip import _normal

    torch.manual_seed(5)
    want = 0.25 * torch.randn(7, 33)
    torch.manual_seed(5)
    torch.testing.assert_close(_normal(0.25, 7, 33), want, rtol=0, atol=0)
    with torch.device("meta"):
        assert _normal(0.25, 7, 33).is_meta
