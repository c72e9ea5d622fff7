"""Bad input is refused or flagged before it turns into a bad result.

``--max-pixels`` on every command that reads a photo; PNGs whose pixel data fails its checksum;
16-bit views read at full precision; faint alpha that shrinks the object; the background backend
found outside the clone and always named.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sd3d.core.io
from sd3d.core.errors import InputImageError, ViewsFolderError
from sd3d.core.io import read_image, read_views
from sd3d.preprocess import faint_alpha_warning, prepare_input


def _object_rgba(h: int = 96, w: int = 128) -> np.ndarray:
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[20:80, 30:100] = (40, 160, 220, 255)
    rgba[40:60, 50:70, :3] = (250, 30, 30)
    return rgba


@pytest.fixture(scope="module")
def sync_ckpt(tmp_path_factory):
    from sd3d.models.configs import tiny_config
    from sd3d.models.synthetic import make_synthetic_checkpoint

    return make_synthetic_checkpoint(tmp_path_factory.mktemp("w") / "tiny.ckpt", tiny_config())


# --------------------------------------------------------------------------------------------------
# --max-pixels everywhere
# --------------------------------------------------------------------------------------------------
def _photo_commands(photo: Path, out: Path, ckpt: Path) -> dict[str, list]:
    """Each photo-reading command, ready to run (without --max-pixels)."""
    return {
        "run": ["run", photo, "-o", out, "--weights", ckpt],
        "generate": ["generate", photo, "-o", out, "--weights", ckpt],
        "novel-view": ["novel-view", photo, "-o", out / "v.png", "--device", "cpu"],
        "elevation": ["elevation", photo, "--views", out],
    }


@pytest.mark.parametrize("command", ["run", "generate", "novel-view", "elevation"])
def test_max_pixels_reaches_the_reader_of_every_command(run_cli, cutout_photo, sync_ckpt, tmp_path, command):
    out = tmp_path / "out"
    args = _photo_commands(cutout_photo, out, sync_ckpt)[command]
    res = run_cli(*args, "--max-pixels", "1000")  # the photo is 128x96 = 12,288 pixels
    assert res.code == 2, res
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and "12,288 pixels, more than the limit of 1,000" in lines[0], res.err
    assert "--max-pixels" in lines[0] and not out.exists()
    res = run_cli(*args, "--max-pixels", "0")
    assert res.code == 2 and res.err.strip() == "error: --max-pixels must be positive, got 0", res.err


def test_batch_records_the_limit_per_image(run_cli, cutout_photo, sync_ckpt, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.png").write_bytes(cutout_photo.read_bytes())
    out = tmp_path / "out"
    res = run_cli("-q", "batch", photos, "-o", out, "--weights", sync_ckpt, "--max-pixels", "1000")
    assert res.code == 1, res
    (item,) = json.loads((out / "batch.json").read_text())["items"]
    assert item["status"] == "failed" and "more than the limit of 1,000" in item["error"]


def test_raising_max_pixels_admits_a_photo_over_the_default(
    run_cli, cutout_photo, zero123_ckpt, tmp_path, monkeypatch
):
    monkeypatch.setattr(sd3d.core.io, "DEFAULT_MAX_PIXELS", 10_000)  # the photo has 12,288 pixels
    args = ["novel-view", cutout_photo, "--weights", zero123_ckpt, "--steps", "2", "--device", "cpu"]
    refused = run_cli(*args, "-o", tmp_path / "a.png")
    assert refused.code == 2 and "more than the limit of 10,000" in refused.err
    res = run_cli("-q", *args, "-o", tmp_path / "b.png", "--max-pixels", "20000")
    assert res.code == 0, res
    assert Image.open(tmp_path / "b.png").size == (256, 256)


def test_run_settings_carry_max_pixels(cutout_photo, sync_ckpt, tmp_path):
    from sd3d.core.errors import UserError
    from sd3d.workflows.run import RunSettings, run_photo

    with pytest.raises(UserError, match="--max-pixels must be positive"):
        RunSettings(max_pixels=-1).check()
    with pytest.raises(InputImageError, match="more than the limit of 1,000"):
        run_photo(cutout_photo, tmp_path / "out", RunSettings(max_pixels=1000), weights=sync_ckpt)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------
# corrupt PNG data
# --------------------------------------------------------------------------------------------------
def _silently_corrupt_png(folder: Path, rgba: np.ndarray) -> Path:
    """A PNG whose IDAT bytes were damaged in a way Pillow's plain load does not notice.

    Flipping a byte near the end of the compressed stream leaves it decodable; only the chunk CRC
    tells. The loop finds such a byte (the deflate stream is deterministic for these pixels).
    """
    buf = io.BytesIO()
    Image.fromarray(rgba).save(buf, "PNG")
    good = buf.getvalue()
    at = good.index(b"IDAT")
    length = struct.unpack(">I", good[at - 4 : at])[0]
    for offset in range(length - 1, 0, -1):
        bad = bytearray(good)
        bad[at + 4 + offset] ^= 0x01
        try:
            with Image.open(io.BytesIO(bytes(bad))) as im:
                im.load()
                decoded = np.asarray(im)
        except Exception:  # noqa: BLE001 - this flip breaks the stream: try another byte
            continue
        if not np.array_equal(decoded, rgba):
            path = folder / "damaged.png"
            path.write_bytes(bytes(bad))
            return path
    pytest.fail("no silently decodable corruption found")


def test_png_with_bad_checksum_is_refused_not_decoded(run_cli, tmp_path):
    rgba = _object_rgba()
    path = _silently_corrupt_png(tmp_path, rgba)
    with Image.open(path) as im:  # the hazard: Pillow alone decodes it without complaint
        im.load()
        assert not np.array_equal(np.asarray(im), rgba)
    with pytest.raises(InputImageError, match="corrupt.*checksum|corrupt.*CRC|corrupt.*broken PNG"):
        read_image(path)
    res = run_cli("preprocess", path, "-o", tmp_path / "out.png")
    assert res.code == 2 and len(res.err.strip().splitlines()) == 1 and "damaged.png" in res.err
    assert not (tmp_path / "out.png").exists()


def test_views_folder_with_a_damaged_view_is_refused(tmp_path):
    rgba = _object_rgba(64, 64)
    for i in range(16):
        Image.fromarray(rgba).save(tmp_path / f"{i:03d}.png")
    damaged = _silently_corrupt_png(tmp_path, rgba)
    damaged.replace(tmp_path / "007.png")
    with pytest.raises(ViewsFolderError, match="007.png"):
        read_views(tmp_path)


# --------------------------------------------------------------------------------------------------
# 16-bit views
# --------------------------------------------------------------------------------------------------
def png16(array: np.ndarray) -> bytes:
    """A 16-bit PNG (grey, grey+alpha, RGB or RGBA by the channel count) from uint16 values."""
    h, w = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _views16(folder: Path, channels: int, seed: int = 0) -> np.ndarray:
    """16 random 16-bit views (values that are not 8-bit values scaled up); returns them (16,H,W,C)."""
    rng = np.random.default_rng(seed)
    shape = (16, 32, 32) if channels == 1 else (16, 32, 32, channels)
    values = rng.integers(0, 65536, size=shape, dtype=np.uint16)
    folder.mkdir()
    for i in range(16):
        (folder / f"{i:03d}.png").write_bytes(png16(values[i]))
    return values.astype(np.float64) / 65535.0


def test_16bit_rgba_views_are_read_at_full_precision(tmp_path):
    expected = _views16(tmp_path / "rgba", 4)
    views = read_views(tmp_path / "rgba")
    alpha = expected[..., 3]
    np.testing.assert_allclose(views.alphas, alpha, atol=1e-6)
    on_white = expected[..., :3] * alpha[..., None] + (1.0 - alpha[..., None])
    np.testing.assert_allclose(views.images, on_white, atol=1e-6)
    # Pillow alone keeps only the high byte: up to 1/255 off, which we do not accept
    with Image.open(tmp_path / "rgba" / "000.png") as im:
        high_byte = np.asarray(im, np.float64)[..., 3] / 255.0
    assert np.abs(high_byte - alpha[0]).max() > 1e-3


def test_16bit_rgb_and_grey_views_are_not_white(tmp_path):
    rgb = _views16(tmp_path / "rgb", 3, seed=1)
    np.testing.assert_allclose(read_views(tmp_path / "rgb").images, rgb, atol=1e-6)
    grey = _views16(tmp_path / "grey", 1, seed=2)
    views = read_views(tmp_path / "grey")
    assert views.alphas is None
    np.testing.assert_allclose(views.images, np.repeat(grey[..., None], 3, axis=-1), atol=1e-6)
    assert views.images.mean() < 0.6  # Pillow's own conversion made these all white


def test_8bit_views_read_exactly_as_before(tmp_path):
    rng = np.random.default_rng(3)
    arrays = rng.integers(0, 256, size=(16, 16, 16, 4), dtype=np.uint8)
    for i in range(16):
        Image.fromarray(arrays[i]).save(tmp_path / f"{i:03d}.png")
    views = read_views(tmp_path)
    x = arrays.astype(np.float32) / 255.0
    np.testing.assert_array_equal(views.alphas, x[..., 3])
    np.testing.assert_array_equal(views.images, x[..., :3] * x[..., 3:] + (1.0 - x[..., 3:]))


# --------------------------------------------------------------------------------------------------
# faint alpha
# --------------------------------------------------------------------------------------------------
def _soft_matte_photo(path: Path) -> Path:
    """An object whose mask has a soft, faint skirt (alpha 40) over the left half of the frame."""
    rgba = np.zeros((200, 300, 4), np.uint8)
    rgba[:, :, :3] = (120, 120, 120)
    rgba[:, :150, 3] = 40
    rgba[80:140, 180:240] = (200, 60, 30, 255)
    Image.fromarray(rgba, "RGBA").save(path)
    return path


def test_faint_alpha_rule():
    alpha = np.zeros((100, 100), np.uint8)
    alpha[40:60, 40:60] = 255
    assert faint_alpha_warning(alpha) is None  # a clean mask
    alpha[38:62, 38:62] = np.maximum(alpha[38:62, 38:62], 60)  # soft edges next to the object
    assert faint_alpha_warning(alpha) is None  # widen the box by 20 %: the object still fills 83 %
    alpha[0:2, 0:2] = alpha[98:, 98:] = 3  # haze in two corners: the crop box becomes the whole frame
    message = faint_alpha_warning(alpha)
    assert message is not None and "from 20x20 to 100x100 px" in message and "fills only 20%" in message
    assert message.startswith("32% of the foreground is faint alpha")  # (8 + 24*24 - 400) / (8 + 24*24)
    assert "faint everywhere" in faint_alpha_warning(np.full((10, 10), 100, np.uint8))


def test_faint_alpha_rule_on_the_official_test_images(shared_dir):
    """Only the aircraft, whose matte has ~600k pixels of alpha 1..7 haze around it, is flagged."""
    flagged = {}
    for path in sorted((shared_dir / "data" / "testset").glob("*.png")):
        with Image.open(path) as im:
            if "A" in im.getbands():
                flagged[path.name] = faint_alpha_warning(np.asarray(im.getchannel("A")))
    assert len(flagged) == 12
    assert [name for name, message in flagged.items() if message] == ["aircraft.png"]
    assert "from 1192x584 to 1521x925 px" in flagged["aircraft.png"]


def test_faint_alpha_warns_once_and_is_recorded(run_cli, tmp_path):
    photo = _soft_matte_photo(tmp_path / "soft.png")
    with pytest.warns(UserWarning, match="faint alpha") as caught:
        prepared = prepare_input(photo)
    assert len(caught) == 1 and prepared.warnings == (str(caught[0].message),)
    assert prepared.background == "alpha"  # the file's own matte is used as is: only a warning
    res = run_cli("preprocess", photo, "-o", tmp_path / "out.png")
    assert res.code == 0, res
    warnings = [line for line in res.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "faint alpha" in warnings[0] and "clean the mask" in warnings[0]
    assert prepare_input(photo, crop_size=-1).warnings == ()  # no crop, nothing shrinks


# --------------------------------------------------------------------------------------------------
# background backend: found outside the clone, always named
# --------------------------------------------------------------------------------------------------
def _opaque_photo(path: Path) -> Path:
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(225, 6, (120, 160, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:120, :160]
    img[(yy - 60) ** 2 + (xx - 88) ** 2 < 36**2] = (190, 40, 30)
    Image.fromarray(img).save(path)
    return path


def test_auto_finds_the_rembg_model_from_another_folder(tmp_path, monkeypatch):
    from sd3d.background import choose_backend, remove_background
    from sd3d.background import rembg_u2netp as rembg_backend
    from sd3d.weights import cache, locate, require

    checkout = tmp_path / "clone" / "weights"
    checkout.mkdir(parents=True)
    (checkout / "u2netp.onnx").write_bytes(b"placeholder")
    elsewhere = tmp_path / "somewhere-else"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no ./weights here
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SD3D_WEIGHTS", raising=False)
    monkeypatch.setattr(cache, "clone_weights_dir", lambda: checkout)
    monkeypatch.setattr(rembg_backend, "rembg_installed", lambda: True)

    order = [(place.source, place.path) for place in cache.search_order("u2netp")]
    assert order == [
        ("~/.cache/sd3d", tmp_path / "home" / ".cache" / "sd3d" / "u2netp.onnx"),
        ("the clone's weights/", checkout / "u2netp.onnx"),
    ]
    assert locate("u2netp").source == "the clone's weights/"
    assert require("u2netp") == checkout / "u2netp.onnx"
    assert locate("u2netp", elsewhere) is None  # an explicit folder is the only one
    photo = Image.open(_opaque_photo(tmp_path / "p.png"))
    assert choose_backend(photo) == "rembg"
    assert choose_backend(photo, weights_dir=elsewhere) == "grabcut"  # an explicit folder is the only one
    fg = remove_background(photo, "auto", weights_dir=elsewhere)
    assert fg.backend == "grabcut"
    assert fg.note.startswith("auto: no alpha channel; rembg model u2netp.onnx not found in ")
    assert str(elsewhere) in fg.note and "sd3d weights download u2netp" in fg.note


def test_commands_name_the_backend_that_ran(run_cli, tmp_path, monkeypatch):
    from sd3d.background import rembg_u2netp as rembg_backend

    monkeypatch.setattr(rembg_backend, "rembg_installed", lambda: False)
    photo = _opaque_photo(tmp_path / "p.png")
    res = run_cli("-q", "preprocess", photo, "-o", tmp_path / "out.png")
    assert res.code == 0, res
    (line,) = [line for line in res.err.splitlines() if line.startswith("background:")]
    assert (
        line
        == "background: grabcut (auto: no alpha channel; rembg is not installed (pip install 'sd3d[rembg]'))"
    )
    cut = tmp_path / "cut.png"
    Image.fromarray(_object_rgba(), "RGBA").save(cut)
    res = run_cli("elevation", cut, "--max-pixels", "1")
    assert res.code == 2 and "background:" not in res.err  # a failing command prints only its error
