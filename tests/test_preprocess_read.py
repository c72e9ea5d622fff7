"""read_image: formats, colour modes, 16-bit, EXIF orientation and the pixel limit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sd3d.core.errors import InputImageError
from sd3d.core.io import DEFAULT_MAX_PIXELS, read_image, to_rgb_or_rgba


def _gradient(w: int = 24, h: int = 16) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.float64)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float64)[:, None, None]
    rgb = np.concatenate(
        [np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)), 255 - (x + y) / 2], -1
    )
    return np.rint(rgb).astype(np.uint8)


def test_png_rgb_and_rgba_round_trip(tmp_path):
    rgb = _gradient()
    rgba = np.dstack([rgb, np.arange(rgb.shape[0] * rgb.shape[1], dtype=np.uint8).reshape(rgb.shape[:2])])
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    a = read_image(tmp_path / "rgb.png")
    b = read_image(tmp_path / "rgba.png")
    assert a.mode == "RGB" and b.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(a), rgb)
    np.testing.assert_array_equal(np.asarray(b), rgba)


def test_grey_and_grey_alpha(tmp_path):
    grey = _gradient()[..., 0]
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    Image.merge("LA", (Image.fromarray(grey), Image.fromarray(255 - grey))).save(tmp_path / "la.png")
    a = np.asarray(read_image(tmp_path / "l.png"))
    b = np.asarray(read_image(tmp_path / "la.png"))
    assert a.shape[-1] == 3 and b.shape[-1] == 4
    for c in range(3):
        np.testing.assert_array_equal(a[..., c], grey)
        np.testing.assert_array_equal(b[..., c], grey)
    np.testing.assert_array_equal(b[..., 3], 255 - grey)


def test_palette_with_and_without_transparency(tmp_path):
    idx = np.tile(np.arange(4, dtype=np.uint8), (6, 2))  # 6x8 image of palette indices 0..3
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12)
    im = Image.fromarray(idx, "P")
    im.putpalette(palette)
    im.save(tmp_path / "p.png")
    im.save(tmp_path / "pt.png", transparency=0)  # index 0 is transparent
    im.save(tmp_path / "pt.gif", transparency=0)
    plain = np.asarray(read_image(tmp_path / "p.png"))
    assert plain.shape == (6, 8, 3)
    np.testing.assert_array_equal(plain[0, 1], [255, 0, 0])
    for name in ("pt.png", "pt.gif"):
        out = read_image(tmp_path / name)
        assert out.mode == "RGBA", name
        alpha = np.asarray(out)[..., 3]
        np.testing.assert_array_equal(alpha == 0, idx == 0)


def test_rgb_with_trns_colour_becomes_rgba(tmp_path):
    rgb = _gradient()
    rgb[:4, :4] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "trns.png", transparency=(1, 2, 3))
    out = np.asarray(read_image(tmp_path / "trns.png"))
    assert out.shape[-1] == 4
    assert (out[:4, :4, 3] == 0).all() and out[8:, 8:, 3].min() == 255


def test_cmyk_jpeg_and_tiff(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:, :8] = (0, 255, 255, 0)  # red
    cmyk[:, 8:] = (255, 0, 255, 0)  # green
    im = Image.fromarray(cmyk, "CMYK")
    im.save(tmp_path / "c.jpg", quality=100)
    im.save(tmp_path / "c.tif")
    for name, tol in (("c.jpg", 12), ("c.tif", 0)):
        out = np.asarray(read_image(tmp_path / name)).astype(int)
        assert out.shape == (16, 16, 3), name
        assert np.abs(out[4, 2] - [255, 0, 0]).max() <= tol, name
        assert np.abs(out[4, 13] - [0, 255, 0]).max() <= tol, name


def test_16_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 32768, 65535]], np.uint16).repeat(3, 0)
    Image.fromarray(values).save(tmp_path / "g16.png")  # mode I;16
    Image.fromarray(values).save(tmp_path / "g16.tif")
    for name in ("g16.png", "g16.tif"):
        with Image.open(tmp_path / name) as raw:
            assert raw.mode.startswith("I"), raw.mode  # really a 16-bit file
        out = np.asarray(read_image(tmp_path / name))
        np.testing.assert_array_equal(out[0, :, 0], [0, 100, 128, 255])


def test_webp_lossless_rgba(tmp_path):
    rgba = np.dstack([_gradient(), np.full((16, 24), 200, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "x.webp", lossless=True)
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path / "x.webp")), rgba)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied(tmp_path, suffix):
    # 40 wide x 20 high, a white block at the top-left; orientation 6 = "rotate 90 degrees clockwise
    # to display", so the upright image is 20 wide x 40 high with the block at the top-right.
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:8, :8] = 255
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / f"o{suffix}", exif=exif.tobytes(), **({"quality": 100} if suffix == ".jpg" else {}))
    out = np.asarray(read_image(tmp_path / f"o{suffix}").convert("L"))
    assert out.shape == (40, 20)
    assert out[2:6, 14:18].min() > 200 and out[2:6, 2:6].max() < 50


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    Image.new("RGB", (100, 50), "red").save(tmp_path / "r.png")
    assert read_image(tmp_path / "r.png", max_pixels=5000).size == (100, 50)
    with pytest.raises(InputImageError, match="5,000 pixels, more than the limit of 4,999"):
        read_image(tmp_path / "r.png", max_pixels=4999)
    with pytest.raises(InputImageError, match="limit"):
        read_image(Image.new("RGB", (100, 50)), max_pixels=100)
    assert DEFAULT_MAX_PIXELS == 50_000_000


def test_pil_input_is_not_modified_and_result_is_loaded():
    src = Image.new("LA", (4, 3), (10, 20))
    out = read_image(src)
    assert src.mode == "LA" and out.mode == "RGBA" and out is not src
    np.testing.assert_array_equal(np.asarray(out)[0, 0], [10, 10, 10, 20])


def test_other_modes_normalise(tmp_path):
    assert to_rgb_or_rgba(Image.new("1", (3, 3), 1)).mode == "RGB"
    assert to_rgb_or_rgba(Image.new("YCbCr", (3, 3))).mode == "RGB"
    assert to_rgb_or_rgba(Image.new("RGBa", (3, 3))).mode == "RGBA"
    assert to_rgb_or_rgba(Image.new("PA", (3, 3))).mode == "RGBA"
    f = to_rgb_or_rgba(Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F"))
    np.testing.assert_array_equal(np.asarray(f)[0, :, 1], [0, 128, 255])
