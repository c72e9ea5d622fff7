"""``sd3d preprocess`` end to end: outputs, and bad input -> exit 2, one stderr line, no output file."""

from __future__ import annotations

import io
import re
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sd3d.preprocess import prepare_input


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` grey pixels (a decompression bomb shape)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _object_png(path: Path, size: tuple[int, int] = (64, 48)) -> Path:
    w, h = size
    arr = np.zeros((h, w, 4), np.uint8)
    arr[..., :3] = (30, 90, 200)
    arr[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4, 3] = 255
    Image.fromarray(arr, "RGBA").save(path)
    return path


def _photo_png(path: Path) -> Path:
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(225, 5, (90, 120, 3)), 0, 255).astype(np.uint8)
    img[25:65, 40:90] = (20, 120, 40)
    Image.fromarray(img).save(path)
    return path


# --------------------------------------------------------------------------------------------------
# malformed input: each case builds its input in `src` and returns the CLI arguments
# (the output goes to out/x.png unless the case is about the output path)
# --------------------------------------------------------------------------------------------------
def _bytes(src: Path, name: str, data: bytes) -> Path:
    (src / name).write_bytes(data)
    return src / name


def _truncated(src: Path, fmt: str, keep: float) -> Path:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, fmt)
    data = buf.getvalue()
    return _bytes(src, f"trunc.{fmt.lower()}", data[: int(len(data) * keep)])


def _bad_crc(src: Path) -> Path:
    data = bytearray(_object_png(src / "ok.png").read_bytes())
    at = data.find(b"IDAT") + 8
    data[at] ^= 0xFF  # corrupt the compressed pixels: the chunk CRC no longer matches
    return _bytes(src, "crc.png", bytes(data))


def _flat(src: Path, mode: str, colour) -> Path:
    Image.new(mode, (40, 30), colour).save(src / f"flat-{mode}.png")
    return src / f"flat-{mode}.png"


def _noise(src: Path) -> Path:
    rng = np.random.default_rng(1)
    Image.fromarray(np.clip(rng.normal(230, 3, (60, 80, 3)), 0, 255).astype(np.uint8)).save(src / "n.png")
    return src / "n.png"


def _single_pixel(src: Path) -> Path:
    arr = np.zeros((20, 20, 4), np.uint8)
    arr[7, 9] = (255, 0, 0, 255)
    Image.fromarray(arr, "RGBA").save(src / "dot.png")
    return src / "dot.png"


def _a_file(src: Path, name: str) -> Path:
    (src / name).write_text("not a folder")
    return src / name


def _a_dir(src: Path, name: str) -> Path:
    (src / name).mkdir()
    return src / name


OUT = "{out}/x.png"
O = _object_png  # an RGBA object with a proper alpha mask
P = _photo_png  # an RGB photo (no alpha)
# case -> (what the error line must say, builder of the CLI arguments)
MALFORMED = {
    "missing-file": ("input image not found", lambda s: [s / "nope.png", "-o", OUT]),
    "directory-as-input": ("is a folder, not an image file", lambda s: [_a_dir(s, "d.png"), "-o", OUT]),
    "zero-byte-file": ("empty (0 bytes)", lambda s: [_bytes(s, "empty.png", b""), "-o", OUT]),
    "not-an-image": ("is not an image", lambda s: [_bytes(s, "t.png", b"plain text\n" * 40), "-o", OUT]),
    "truncated-png": ("truncated or corrupt", lambda s: [_truncated(s, "PNG", 0.5), "-o", OUT]),
    "truncated-jpeg": ("truncated or corrupt", lambda s: [_truncated(s, "JPEG", 0.4), "-o", OUT]),
    "corrupt-png-crc": ("truncated or corrupt", lambda s: [_bad_crc(s), "-o", OUT]),
    "decompression-bomb": (
        "more than the limit of 50,000,000",
        lambda s: [_bytes(s, "bomb.png", _png_claiming(10_000, 10_000)), "-o", OUT],
    ),
    "beyond-pillow-hard-limit": (
        "hard safety limit",
        lambda s: [
            _bytes(s, "huge.png", _png_claiming(20_000, 20_000)),
            "-o",
            OUT,
            "--max-pixels",
            "1000000000",
        ],
    ),
    "over-max-pixels": (
        "more than the limit of 1,000",
        lambda s: [O(s / "o.png"), "-o", OUT, "--max-pixels", "1000"],
    ),
    "fully-transparent-alpha": ("fully transparent", lambda s: [_flat(s, "RGBA", (255, 0, 0, 0)), "-o", OUT]),
    "flat-colour-photo": ("single flat colour", lambda s: [_flat(s, "RGB", (200, 200, 200)), "-o", OUT]),
    "empty-foreground-after-grabcut": (
        "no foreground found by --background grabcut",
        lambda s: [_noise(s), "-o", OUT, "--background", "grabcut"],
    ),
    "single-pixel-foreground": ("nothing to recentre", lambda s: [_single_pixel(s), "-o", OUT]),
    "alpha-backend-without-alpha": ("no alpha channel", lambda s: [P(s / "p.png"), "-o", OUT, "-b", "alpha"]),
    "unknown-background": (
        "unknown --background 'magic'",
        lambda s: [O(s / "o.png"), "-o", OUT, "-b", "magic"],
    ),
    "crop-size-zero": (
        "--crop-size must be between 1 and 256",
        lambda s: [O(s / "o.png"), "-o", OUT, "--crop-size", "0"],
    ),
    "crop-size-too-large": (
        "--crop-size must be between 1 and 256",
        lambda s: [O(s / "o.png"), "-o", OUT, "--crop-size", "300"],
    ),
    "crop-size-not-integer": (
        "--crop-size must be an integer",
        lambda s: [O(s / "o.png"), "-o", OUT, "--crop-size", "big"],
    ),
    "max-pixels-negative": (
        "--max-pixels must be positive",
        lambda s: [O(s / "o.png"), "-o", OUT, "--max-pixels", "-5"],
    ),
    "output-not-an-image-extension": ("(got .txt)", lambda s: [O(s / "o.png"), "-o", "{out}/x.txt"]),
    "output-format-without-alpha": (
        "must end in one of .png, .webp, .tif, .tiff (got .jpg)",
        lambda s: [O(s / "o.png"), "-o", "{out}/x.jpg"],
    ),
    "output-is-a-directory": ("is a folder", lambda s: [O(s / "o.png"), "-o", "{out}/existing-dir.png"]),
    "unwritable-output-path": ("is not a folder", lambda s: [O(s / "o.png"), "-o", "{out}/a-file/x.png"]),
    "model-input-bad-extension": (
        "(got .gif)",
        lambda s: [O(s / "o.png"), "-o", OUT, "--save-model-input", "{out}/m.gif"],
    ),
    "model-input-same-as-output": (
        "must differ from the output path",
        lambda s: [O(s / "o.png"), "-o", OUT, "--save-model-input", OUT],
    ),
    "rembg-model-missing": (  # rembg installed: the model is missing; not installed: the extra is
        "u2netp.onnx not found|needs rembg",
        lambda s: [P(s / "p.png"), "-o", OUT, "-b", "rembg", "--weights-dir", _a_dir(s, "empty-weights")],
    ),
    "carvekit-not-installed": ("needs carvekit", lambda s: [P(s / "p.png"), "-o", OUT, "-b", "carvekit"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_input_exits_2_with_one_line_and_no_output(case, tmp_path, run_cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "carvekit", None)  # carvekit is absent for these tests, always
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    (out / "existing-dir.png").mkdir()
    (out / "a-file").write_text("I am a file, not a folder")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    reason, build = MALFORMED[case]
    args = [str(a).format(out=out) for a in build(src)]

    result = run_cli("preprocess", *args)

    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result
    assert re.search(reason if "|" in reason else re.escape(reason), lines[0]), result  # the intended failure
    assert "Traceback" not in result.err and result.out == ""
    after = sorted(p.relative_to(out) for p in out.rglob("*"))
    assert after == before, f"output folder changed: {after}"  # no output, no temp file left


def test_at_least_15_distinct_malformed_cases():
    assert len(MALFORMED) >= 15


def test_messages_name_the_problem(tmp_path, run_cli):
    (tmp_path / "e.png").write_bytes(b"")
    assert "empty (0 bytes)" in run_cli("preprocess", tmp_path / "e.png", "-o", tmp_path / "x.png").err
    (tmp_path / "b.png").write_bytes(_png_claiming(10_000, 10_000))
    err = run_cli("preprocess", tmp_path / "b.png", "-o", tmp_path / "x.png").err
    assert "100,000,000 pixels" in err and "--max-pixels" in err
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------------------------------
# successful runs
# --------------------------------------------------------------------------------------------------
def test_writes_rgba_and_model_input(tmp_path, run_cli):
    src = _object_png(tmp_path / "obj.png", (90, 60))
    out, model = tmp_path / "res" / "input.png", tmp_path / "res" / "rgb.png"
    result = run_cli("preprocess", src, "-o", out, "--crop-size", "150", "--save-model-input", model)
    assert result.code == 0, result
    assert "background: alpha" in result.out
    expected = prepare_input(src, crop_size=150)
    with Image.open(out) as im:
        assert im.mode == "RGBA" and im.size == (256, 256)
        np.testing.assert_array_equal(np.asarray(im), expected.rgba)
    with Image.open(model) as im:
        assert im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), expected.model_rgb_uint8())
    assert sorted(p.name for p in out.parent.iterdir()) == ["input.png", "rgb.png"]  # no temp files


def test_photo_without_alpha_through_grabcut_and_webp(tmp_path, run_cli):
    src = _photo_png(tmp_path / "photo.png")  # a 50x40 green block on a light backdrop
    out = tmp_path / "input.webp"
    result = run_cli("preprocess", src, "-o", out, "--background", "grabcut")
    assert result.code == 0, result
    with Image.open(out) as im:
        rgba = np.asarray(im.convert("RGBA"))
    ys, xs = np.nonzero(rgba[..., 3] > 0)
    # the block's longer side (about 50 px after the exclusive crop) is scaled to ~200 px and centred
    assert 190 <= xs.max() - xs.min() + 1 <= 200
    assert abs((xs.min() + xs.max()) / 2 - 127.5) <= 2 and abs((ys.min() + ys.max()) / 2 - 127.5) <= 2
    assert tuple(rgba[128, 128, :3]) == (20, 120, 40) and rgba[0, 0, 3] == 0


def test_no_crop_keeps_the_whole_frame(tmp_path, run_cli):
    src = _object_png(tmp_path / "obj.png", (64, 64))
    out = tmp_path / "x.png"
    assert run_cli("preprocess", src, "-o", out, "--crop-size", "-1").code == 0
    with Image.open(out) as im:
        alpha = np.asarray(im)[..., 3]
    ys, xs = np.nonzero(alpha > 0)  # the object spans the middle half of the frame, as in the source
    assert 60 <= xs.min() <= 68 and 187 <= xs.max() <= 195
