"""Official recentering (spec 2.1, quirk 12): golden-fixture parity and the quirks one by one."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sd3d.core.errors import InputImageError, UserError
from sd3d.preprocess import PreparedInput, prepare_input, recenter, recenter_with_box, to_model_rgb

GOLDEN_CASES = [
    ("input_image_alarm_crop200", "alarm.png", 200),
    ("input_image_aircraft_crop200", "aircraft.png", 200),
    ("input_image_alarm_cropm1", "alarm.png", -1),
]


@pytest.fixture(scope="module")
def golden(reference_dir):
    return np.load(reference_dir / "syncdreamer-golden-synthetic.npz")


@pytest.mark.parametrize("key,filename,crop", GOLDEN_CASES)
def test_prepare_input_reproduces_official_prepare_inputs(golden, testset_dir, key, filename, crop):
    prepared = prepare_input(testset_dir / filename, crop_size=crop)
    expected = golden[key]
    assert prepared.background == "alpha"  # the testset is RGBA: auto keeps the official mask
    assert prepared.model_rgb.shape == expected.shape == (256, 256, 3)
    # The fixture allows 1/255 per pixel; with Pillow 13 we are bit-exact (same 8-bit RGBA from the
    # BICUBIC resize, and the official float32 evaluation order ``rgb*a + 1 - a``).
    np.testing.assert_array_equal(prepared.model_rgb, expected)


def _rgba(w: int, h: int, box_incl: tuple[int, int, int, int]) -> Image.Image:
    """Textured RGBA with alpha 255 on the inclusive box (x0, y0, x1, y1), 0 elsewhere."""
    rng = np.random.default_rng(0)
    arr = np.zeros((h, w, 4), np.uint8)
    arr[..., :3] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    x0, y0, x1, y1 = box_incl
    arr[y0 : y1 + 1, x0 : x1 + 1, 3] = 255
    return Image.fromarray(arr, "RGBA")


def _alpha_bbox(img: Image.Image) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(np.asarray(img)[..., 3] > 0)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_recenter_exclusive_crop_truncation_and_centring():
    # Foreground columns 10..60 and rows 5..102 (inclusive). The official box is (10, 5, 60, 102)
    # with PIL's exclusive right/bottom, i.e. a 50x97 crop (an inclusive crop would be 51x98).
    # scale = 200/97; int(scale*50) = int(103.09) = 103 and int(scale*97) = int(199.99999999999997) = 199
    # (truncation, not 200); pasted at ((256-103)//2, (256-199)//2) = (76, 28).
    out, box = recenter_with_box(_rgba(80, 120, (10, 5, 60, 102)), 200)
    assert box == (10, 5, 60, 102)
    assert out.size == (256, 256) and out.mode == "RGBA"
    assert _alpha_bbox(out) == (76, 28, 76 + 103, 28 + 199)
    arr = np.asarray(out)
    outside = arr[..., 3] == 0
    assert (arr[outside][:, :3] == 0).all()  # padding is transparent *black*, as add_margin(color=0)


def test_recenter_matches_pillow_bicubic_on_the_crop():
    src = _rgba(64, 48, (8, 4, 40, 30))
    # Independent of recenter's code path: crop/resize/paste spelled out with the numbers of the rule.
    crop = src.crop((8, 4, 40, 30))  # 32x26
    resized = crop.resize((int(150 / 32 * 32), int(150 / 32 * 26)), resample=Image.BICUBIC)
    canvas = Image.new("RGBA", (256, 256), 0)
    canvas.paste(resized, ((256 - resized.width) // 2, (256 - resized.height) // 2))
    np.testing.assert_array_equal(np.asarray(recenter(src, 150)), np.asarray(canvas))


def test_recenter_no_crop_pads_to_centred_square():
    arr = np.zeros((50, 100, 4), np.uint8)
    arr[..., 0] = 255
    arr[..., 3] = 255  # opaque red 100x50: padded to 100x100 with 25 transparent rows above and below
    out, box = recenter_with_box(Image.fromarray(arr, "RGBA"), -1)
    assert box == (0, 0, 100, 50)
    a = np.asarray(out)[..., 3]
    assert (a[:60] == 0).all() and (a[-60:] == 0).all()  # 25/100 of 256 = 64 rows, minus bicubic reach
    assert (a[70:186] == 255).all()
    rgb = to_model_rgb(out)
    np.testing.assert_array_equal(rgb[0, 0], [1.0, 1.0, 1.0])  # transparent -> white
    np.testing.assert_array_equal(rgb[128, 128], [1.0, -1.0, -1.0])


def test_to_model_rgb_composites_on_white_in_float32():
    arr = np.array([[[10, 20, 30, 0], [10, 20, 30, 255], [200, 100, 0, 128]]], np.uint8)
    out = to_model_rgb(arr)
    assert out.dtype == np.float32 and out.shape == (1, 3, 3)
    np.testing.assert_array_equal(out[0, 0], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(out[0, 1], np.array([10, 20, 30]) / 255 * 2 - 1, atol=1e-7)
    a = 128 / 255
    np.testing.assert_allclose(out[0, 2], (np.array([200, 100, 0]) / 255 * a + 1 - a) * 2 - 1, atol=1e-6)
    np.testing.assert_array_equal(to_model_rgb(arr[..., :3]), arr[..., :3].astype(np.float32) / 255 * 2 - 1)


def test_prepare_input_from_pil_image_fields_and_read_only_arrays():
    src = _rgba(90, 70, (20, 10, 69, 49))
    prepared = prepare_input(src, crop_size=120)
    assert isinstance(prepared, PreparedInput)
    assert prepared.source is None and prepared.source_size == (90, 70)
    assert prepared.crop_box == (20, 10, 69, 49) and prepared.crop_size == 120
    assert prepared.rgba.dtype == np.uint8 and prepared.rgba.shape == (256, 256, 4)
    np.testing.assert_array_equal(prepared.model_rgb, to_model_rgb(prepared.rgba))
    assert prepared.model_rgb.min() >= -1.0 and prepared.model_rgb.max() <= 1.0
    with pytest.raises(ValueError):
        prepared.rgba[0, 0, 0] = 1
    with pytest.raises(AttributeError):
        prepared.background = "none"  # frozen


def test_recenter_refuses_transparent_degenerate_and_bad_sizes():
    with pytest.raises(InputImageError, match="fully transparent"):
        recenter(Image.new("RGBA", (10, 10), 0), 200)
    line = np.zeros((10, 10, 4), np.uint8)
    line[2:8, 4, 3] = 255  # one column: the official exclusive crop is 0 pixels wide (it would crash)
    with pytest.raises(InputImageError, match="single column"):
        recenter(Image.fromarray(line, "RGBA"), 200)
    for bad in (0, 257, -2):
        with pytest.raises(UserError, match="crop-size"):
            recenter(_rgba(20, 20, (2, 2, 12, 12)), bad)
    with pytest.raises(ValueError, match="RGBA"):
        recenter(Image.new("RGB", (8, 8)), 200)


def test_thin_object_keeps_at_least_one_pixel():
    src = _rgba(1000, 20, (0, 5, 999, 6))  # 999x1 crop: int(200/999*1) = 0 would crash officially
    out, _ = recenter_with_box(src, 200)
    x0, y0, x1, y1 = _alpha_bbox(out)
    assert x1 - x0 == 200 and y1 - y0 >= 1
