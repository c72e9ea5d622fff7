"""Foreground backends: auto selection, alpha/none, GrabCut, matte cleanup, carvekit adapter, rembg."""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest
from PIL import Image

from sd3d.background import (
    choose_backend,
    clean_matte,
    get_backend,
    has_informative_alpha,
    remove_background,
)
from sd3d.background import rembg_u2netp as rembg_backend
from sd3d.background.carvekit_tracer import OFFICIAL_PARAMETERS
from sd3d.core.errors import InputImageError, MissingDependencyError, UserError, WeightsError
from sd3d.preprocess import prepare_input


def _disc_photo(w: int = 160, h: int = 120, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """A red disc on a light, slightly noisy backdrop (an object photo without alpha) and its mask."""
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(225, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - h * 0.5) ** 2 + (xx - w * 0.55) ** 2 < (0.3 * h) ** 2
    img[disc] = (190, 40, 30)
    return Image.fromarray(img), disc


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_auto_prefers_informative_alpha(tmp_path):
    photo, disc = _disc_photo()
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.fromarray(disc.astype(np.uint8) * 255))
    assert has_informative_alpha(rgba)
    assert choose_backend(rgba, weights_dir=tmp_path) == "alpha"
    fg = remove_background(rgba, "auto", weights_dir=tmp_path)
    assert fg.backend == "alpha" and fg.rgba is rgba  # the user's mask is used untouched


def test_auto_without_alpha_or_model_uses_grabcut(tmp_path):
    photo, disc = _disc_photo()
    opaque = photo.convert("RGBA")  # an alpha channel that is all 255 says nothing
    assert not has_informative_alpha(opaque) and not has_informative_alpha(photo)
    assert choose_backend(opaque, weights_dir=tmp_path) == "grabcut"  # empty weights dir: no u2netp
    fg = remove_background(photo, "auto", weights_dir=tmp_path)
    assert fg.backend == "grabcut"
    assert _iou(np.asarray(fg.rgba)[..., 3] > 0, disc) > 0.95


def test_auto_picks_rembg_only_when_installed_and_model_present(tmp_path, monkeypatch):
    photo, _ = _disc_photo()
    (tmp_path / "u2netp.onnx").write_bytes(b"placeholder")
    monkeypatch.setattr(rembg_backend, "rembg_installed", lambda: True)
    assert choose_backend(photo, weights_dir=tmp_path) == "rembg"
    monkeypatch.setattr(rembg_backend, "rembg_installed", lambda: False)
    assert choose_backend(photo, weights_dir=tmp_path) == "grabcut"


def test_grabcut_is_deterministic_and_keeps_rgb():
    photo, disc = _disc_photo(seed=3)
    backend = get_backend("grabcut")
    a, b = backend.segment(photo), backend.segment(photo)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a)[..., :3], np.asarray(photo))
    assert _iou(np.asarray(a)[..., 3] > 0, disc) > 0.95


def test_grabcut_finds_nothing_in_a_featureless_picture():
    rng = np.random.default_rng(1)
    noise = Image.fromarray(np.clip(rng.normal(230, 3, (80, 100, 3)), 0, 255).astype(np.uint8))
    with pytest.raises(InputImageError, match="no foreground found by --background grabcut"):
        remove_background(noise, "grabcut")
    with pytest.raises(InputImageError, match="single flat colour"):
        remove_background(Image.new("RGB", (50, 40), (9, 9, 9)), "auto")


def test_alpha_and_none_backends():
    photo, _ = _disc_photo()
    with pytest.raises(InputImageError, match="no alpha channel"):
        remove_background(photo, "alpha")
    with pytest.raises(InputImageError, match="fully transparent"):
        remove_background(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), "auto")
    none = remove_background(photo, "none")
    assert none.backend == "none" and np.asarray(none.rgba)[..., 3].min() == 255
    with pytest.raises(UserError, match="unknown --background 'magic'"):
        remove_background(photo, "magic")


def test_clean_matte_drops_haze_and_specks_keeps_soft_edges():
    alpha = np.zeros((100, 100), np.uint8)
    alpha[20:80, 20:80] = 255
    alpha[19, 20:80] = 90  # a soft edge attached to the object: kept
    alpha[90:92, 90:92] = 255  # a 4-pixel speck (0.1% of the object): removed
    alpha[0:10, 0:50] = 5  # faint haze below the floor: removed
    out = clean_matte(alpha)
    assert (out[20:80, 20:80] == 255).all() and (out[19, 20:80] == 90).all()
    assert out[90:92, 90:92].max() == 0 and out[0:10, 0:50].max() == 0


class _FakeHiInterface:
    """Stand-in for carvekit.api.high.HiInterface: records its parameters, returns a fixed matte."""

    instances: list[_FakeHiInterface] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list[list[Image.Image]] = []
        _FakeHiInterface.instances.append(self)

    def __call__(self, images):
        self.calls.append(images)
        out = []
        for im in images:
            rgba = im.convert("RGBA")
            alpha = np.zeros((im.height, im.width), np.uint8)
            alpha[10:30, 20:50] = 255
            rgba.putalpha(Image.fromarray(alpha))
            out.append(rgba)
        return out


@pytest.fixture
def fake_carvekit(monkeypatch):
    _FakeHiInterface.instances.clear()
    high = types.ModuleType("carvekit.api.high")
    high.HiInterface = _FakeHiInterface
    api = types.ModuleType("carvekit.api")
    api.high = high
    root = types.ModuleType("carvekit")
    root.api = api
    for name, mod in (("carvekit", root), ("carvekit.api", api), ("carvekit.api.high", high)):
        monkeypatch.setitem(sys.modules, name, mod)
    return _FakeHiInterface


def test_carvekit_adapter_uses_official_parameters(fake_carvekit):
    photo, _ = _disc_photo()
    prepared = prepare_input(photo, background="carvekit")
    assert prepared.background == "carvekit"
    (hi,) = fake_carvekit.instances
    expected = {
        "object_type": "object",
        "batch_size_seg": 5,
        "batch_size_matting": 1,
        "seg_mask_size": 640,
        "matting_mask_size": 2048,
        "trimap_prob_threshold": 231,
        "trimap_dilation": 30,
        "trimap_erosion_iters": 5,
    }
    assert {k: hi.kwargs[k] for k in expected} == expected == OFFICIAL_PARAMETERS
    assert hi.kwargs["device"] in ("cpu", "cuda") and hi.kwargs["fp16"] == (hi.kwargs["device"] == "cuda")
    (batch,) = hi.calls
    assert len(batch) == 1 and batch[0].mode == "RGB" and batch[0].size == photo.size
    assert prepared.crop_box == (20, 10, 49, 29)  # the fake's matte, recentred with the official rule


def test_carvekit_missing_is_one_line_dependency_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "carvekit", None)  # makes `import carvekit...` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'sd3d\[carvekit\]'"):
        remove_background(_disc_photo()[0], "carvekit")


def test_rembg_without_model_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(rembg_backend, "rembg_installed", lambda: True)
    with pytest.raises(WeightsError, match="fetch_u2netp.py"):
        remove_background(_disc_photo()[0], "rembg", weights_dir=tmp_path)
    monkeypatch.setattr(rembg_backend, "rembg_installed", lambda: False)
    with pytest.raises(MissingDependencyError, match="rembg"):
        remove_background(_disc_photo()[0], "rembg", weights_dir=tmp_path)


def test_real_rembg_u2netp_segments_a_testset_object(testset_dir, monkeypatch):
    if not rembg_backend.rembg_installed():
        pytest.skip("rembg/onnxruntime not installed (pip install 'sd3d[rembg]')")
    model = rembg_backend.model_path()
    if not model.is_file():
        pytest.skip(f"u2netp.onnx not at {model} (run scripts/fetch_u2netp.py)")
    src = Image.open(testset_dir / "alarm.png").convert("RGBA")
    truth = np.asarray(src)[..., 3] > 127
    photo = Image.alpha_composite(Image.new("RGBA", src.size, (235, 235, 230, 255)), src).convert("RGB")
    monkeypatch.setenv("U2NET_HOME", "/nonexistent/elsewhere")
    fg = remove_background(photo, "auto", weights_dir=model.parent)
    assert fg.backend == "rembg"  # auto: no alpha, rembg installed, model present
    assert os.environ["U2NET_HOME"] == "/nonexistent/elsewhere"  # restored after the session is made
    np.testing.assert_array_equal(np.asarray(fg.rgba)[..., :3], np.asarray(photo))
    assert _iou(np.asarray(fg.rgba)[..., 3] > 127, truth) > 0.95


_THREADS_PROBE = """
import sys
import torch
torch.set_num_threads(1)
assert torch.get_num_threads() == 1  # read once before, as any torch work would (the count moves only then)
if sys.argv[1] == "import":
    import rembg  # noqa: F401  (the plain import, without the backend's guard)
else:
    from PIL import Image, ImageDraw
    from sd3d.background import remove_background
    photo = Image.new("RGB", (64, 48), (235, 235, 230))
    ImageDraw.Draw(photo).ellipse((16, 8, 48, 40), fill=(200, 30, 30))
    remove_background(photo, "rembg", weights_dir=sys.argv[2])
print(torch.get_num_threads())
"""


def test_rembg_keeps_torch_thread_count(tmp_path):
    """numba's OpenMP pool (started by rembg's import of pymatting) shares PyTorch's OpenMP runtime and
    resets its thread count to numba's: the CI suite's torch went from 1 to 2 threads after the first
    rembg test, and thread-time bars of later tests on that worker read 4 s for 0.25 s of work (spin
    waits on the oversubscribed cores). Fresh processes, since this one may have rembg imported."""
    import subprocess

    if not rembg_backend.rembg_installed():
        pytest.skip("rembg/onnxruntime not installed (pip install 'sd3d[rembg]')")
    model = rembg_backend.model_path()
    if not model.is_file():
        pytest.skip(f"u2netp.onnx not at {model} (run scripts/fetch_u2netp.py)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2"}

    def threads_after(*args: str) -> int:
        out = subprocess.run(
            [sys.executable, "-c", _THREADS_PROBE, *args], env=env, capture_output=True, text=True, check=True
        )
        return int(out.stdout.split()[-1])

    assert threads_after("import") == 2  # the library's behaviour that the backend guards against
    assert threads_after("backend", str(model.parent)) == 1
