"""Input preprocessing: photo -> object mask -> the official recentred 256x256 model input.

``prepare_input`` reads any image (:func:`sd3d.core.io.read_image`), finds the object with a background
backend (:mod:`sd3d.background`) and recentres it exactly like the official ``prepare_inputs``
(docs/reference/syncdreamer.md §2.1, quirk Q12), so the same RGBA file gives bit-identical model input:

* crop to the bounding box of ``alpha > 0`` with Pillow's right/bottom-exclusive box (the last
  foreground row and column are dropped), scale the longer side to ``crop_size`` with ``int()``
  truncation and Pillow BICUBIC (which resizes RGBA premultiplied), paste centred with ``//2`` on a
  transparent 256x256 canvas; or, with ``crop_size = -1``, pad the whole image to a centred square
  and resize that to 256x256;
* composite on white in float32, evaluated as officially: ``rgb * a + 1 - a`` (i.e. ``(rgb*a + 1) - a``,
  which rounds differently from ``rgb*a + (1-a)``), and map to [-1, 1] with ``x * 2 - 1``.
"""

from __future__ import annotations

import os
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sd3d.background import check_backend_name, remove_background
from sd3d.core import defaults
from sd3d.core.errors import InputImageError, OutputPathError, UserError
from sd3d.core.io import atomic_path, check_max_pixels, read_image

MODEL_SIZE = 256
DEFAULT_CROP_SIZE = defaults.CROP_SIZE
NO_CROP = -1

# Formats that keep the alpha channel losslessly (the RGBA "record" output), and those fine for RGB.
RGBA_SUFFIXES = (".png", ".webp", ".tif", ".tiff")
RGB_SUFFIXES = (*RGBA_SUFFIXES, ".jpg", ".jpeg", ".bmp")


@dataclass(frozen=True)
class PreparedInput:
    """The conditioning image, as the model sees it and as it is kept for the record.

    ``rgba``: (256, 256, 4) uint8, the recentred object with its mask (what ``sd3d preprocess``
    writes). ``model_rgb``: (256, 256, 3) float32 in [-1, 1], ``rgba`` composited on white (HWC; the
    model input is this permuted to (1, 3, 256, 256)). ``crop_box``: (left, top, right, bottom) of
    the source region that was recentred, in source pixels after EXIF orientation, right/bottom
    exclusive (the whole image for ``crop_size = -1``). ``background``: the backend actually used.
    ``source``: the file read, or ``None`` for an in-memory image. ``background_note``: how the
    backend was chosen and what it used (see :class:`sd3d.background.Foreground`). ``warnings``:
    problems worth a look that did not stop the work (e.g. :func:`faint_alpha_warning`). Both arrays
    are read-only.
    """

    rgba: np.ndarray
    model_rgb: np.ndarray
    crop_box: tuple[int, int, int, int]
    background: str
    source: Path | None
    crop_size: int = DEFAULT_CROP_SIZE
    source_size: tuple[int, int] = (0, 0)
    background_note: str = ""
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.rgba.shape != (MODEL_SIZE, MODEL_SIZE, 4) or self.rgba.dtype != np.uint8:
            raise ValueError(f"rgba must be (256,256,4) uint8, got {self.rgba.shape} {self.rgba.dtype}")
        if self.model_rgb.shape != (MODEL_SIZE, MODEL_SIZE, 3) or self.model_rgb.dtype != np.float32:
            raise ValueError(f"model_rgb must be (256,256,3) float32, got {self.model_rgb.shape}")
        for arr in (self.rgba, self.model_rgb):
            arr.setflags(write=False)

    def rgba_image(self) -> Image.Image:
        return Image.fromarray(np.array(self.rgba), "RGBA")

    def model_rgb_uint8(self) -> np.ndarray:
        """``model_rgb`` rounded back to 8 bits (exact where alpha is 0 or 255)."""
        return np.clip(np.rint((self.model_rgb.astype(np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def check_crop_size(crop_size: int) -> int:
    """-1 (no crop) or 1..256; anything else is a one-line UserError."""
    if isinstance(crop_size, bool) or not isinstance(crop_size, (int, np.integer)):
        raise UserError(f"--crop-size must be an integer, got {crop_size!r}")
    crop_size = int(crop_size)
    if crop_size != NO_CROP and not 1 <= crop_size <= MODEL_SIZE:
        raise UserError(f"--crop-size must be between 1 and {MODEL_SIZE}, or -1 for no crop; got {crop_size}")
    return crop_size


def _add_margin(image: Image.Image, size: int) -> Image.Image:
    """The official ``add_margin(color=0)``: same mode, filled with 0, image pasted centred (``//2``)."""
    canvas = Image.new(image.mode, (size, size), 0)
    canvas.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return canvas


def recenter_with_box(rgba: Image.Image, crop_size: int = DEFAULT_CROP_SIZE) -> tuple[Image.Image, tuple]:
    """:func:`recenter`, also returning the source box that was used (left, top, right, bottom)."""
    if rgba.mode != "RGBA":
        raise ValueError(f"recenter needs an RGBA image (alpha = object mask), got mode {rgba.mode}")
    crop_size = check_crop_size(crop_size)
    if crop_size == NO_CROP:
        box = (0, 0, rgba.width, rgba.height)
        square = _add_margin(rgba, max(rgba.size))
        return square.resize((MODEL_SIZE, MODEL_SIZE), resample=Image.BICUBIC), box
    alpha = np.asarray(rgba.getchannel("A"))
    ys, xs = np.nonzero(alpha > 0)
    if xs.size == 0:
        raise InputImageError("the image is fully transparent: no foreground to recentre")
    # Official quirk: PIL crop boxes exclude right/bottom, so the last foreground column/row is dropped.
    box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))
    if box[2] == box[0] or box[3] == box[1]:
        line = "column" if box[2] == box[0] else "row"
        raise InputImageError(f"the foreground is a single {line} of pixels; nothing to recentre")
    crop = rgba.crop(box)
    scale = crop_size / max(crop.height, crop.width)
    # int() truncation as officially; the max(1, .) only guards sizes where the official code crashes.
    new_size = (max(1, int(scale * crop.width)), max(1, int(scale * crop.height)))
    resized = crop.resize(new_size, resample=Image.BICUBIC)
    return _add_margin(resized, MODEL_SIZE), box


def recenter(rgba: Image.Image, crop_size: int = DEFAULT_CROP_SIZE) -> Image.Image:
    """The official recentering of an RGBA image to 256x256 RGBA (see the module docstring)."""
    return recenter_with_box(rgba, crop_size)[0]


FAINT_ALPHA = 128
"""Alpha values in ``(0, FAINT_ALPHA)`` are "faint": less than half opaque."""
FAINT_FILL_LIMIT = 0.8
"""Warn when faint alpha alone shrinks the object below this fraction of ``--crop-size``."""


def faint_alpha_warning(alpha: np.ndarray) -> str | None:
    """One line when faint alpha decides the crop, else ``None``.

    The official recentering crops to the bounding box of ``alpha > 0``, so faint alpha away from
    the object (a matte with soft edges over half of the frame, a faint shadow, haze) widens the box
    and the object silently comes out small in the 256x256 input. Rule: the longer side of the box of
    all non-zero alpha is compared with that of the pixels at least half opaque
    (``alpha >= FAINT_ALPHA``); when the object then fills less than :data:`FAINT_FILL_LIMIT` of
    ``--crop-size``, or when no pixel is half opaque at all, say so (the crop itself is unchanged:
    it is the official one).
    """
    alpha = np.asarray(alpha)
    present = alpha > 0
    if not present.any():
        return None
    solid = alpha >= FAINT_ALPHA
    faint_share = 1.0 - float(solid.sum()) / float(present.sum())
    if not solid.any():
        return (
            "the alpha channel is faint everywhere (no pixel is at least half opaque): the object may be "
            "hard to see; check the mask or use another --background"
        )
    (ah, aw), (sh, sw) = _box_size(present), _box_size(solid)
    fill = max(sh, sw) / max(ah, aw)
    if fill >= FAINT_FILL_LIMIT:
        return None
    return (
        f"{faint_share:.0%} of the foreground is faint alpha (0 < alpha < {FAINT_ALPHA}) and it widens the "
        f"crop from {sw}x{sh} to {aw}x{ah} px, so the object fills only {fill:.0%} of --crop-size; "
        "clean the mask (or use --background rembg or grabcut)"
    )


def _box_size(mask: np.ndarray) -> tuple[int, int]:
    """(height, width) of the bounding box of a non-empty boolean mask."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def to_model_rgb(rgba: Image.Image | np.ndarray) -> np.ndarray:
    """RGBA (or RGB) uint8 -> float32 HxWx3 in [-1, 1], composited on white with the official float ops."""
    image = np.asarray(rgba, dtype=np.float32) / 255.0
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"expected an HxWx3 or HxWx4 image, got shape {image.shape}")
    if image.shape[-1] == 4:
        alpha = image[:, :, 3:]
        # Evaluated left to right as officially: (rgb * a + 1) - a. Writing ``+ (1 - a)`` instead
        # rounds differently (1-2 float32 ulps on ~20% of values) and breaks bit-exact parity.
        image = image[:, :, :3] * alpha + 1 - alpha
    return (image * 2 - 1).astype(np.float32, copy=False)


def prepare_input(
    source: str | os.PathLike | Image.Image,
    crop_size: int = DEFAULT_CROP_SIZE,
    background: str = "auto",
    max_pixels: int | None = None,
    *,
    weights_dir: str | os.PathLike | None = None,
) -> PreparedInput:
    """Read ``source``, find the object, recentre it: the one call the generator needs.

    ``background``: ``auto|alpha|rembg|carvekit|grabcut|none`` (:mod:`sd3d.background`).
    ``max_pixels``: input size limit (default :data:`sd3d.core.io.DEFAULT_MAX_PIXELS`).
    ``weights_dir``: where rembg's ``u2netp.onnx`` is looked up (default: the weights folder).
    Every user-caused problem raises a one-line :class:`~sd3d.core.errors.UserError`; faint alpha that
    shrinks the object (:func:`faint_alpha_warning`) is a ``UserWarning``, also kept in ``warnings``.
    """

    crop_size = check_crop_size(crop_size)
    check_backend_name(background)
    image = read_image(source, max_pixels=check_max_pixels(max_pixels))
    foreground = remove_background(image, background, weights_dir=weights_dir)
    notes = []
    if crop_size != NO_CROP:
        faint = faint_alpha_warning(np.asarray(foreground.rgba.getchannel("A")))
        if faint is not None:
            warnings.warn(faint, UserWarning, stacklevel=2)
            notes.append(faint)
    recentred, box = recenter_with_box(foreground.rgba, crop_size)
    rgba = np.array(recentred, dtype=np.uint8)
    return PreparedInput(
        rgba=rgba,
        model_rgb=to_model_rgb(rgba),
        crop_box=tuple(int(v) for v in box),
        background=foreground.backend,
        source=None if isinstance(source, Image.Image) else Path(source),
        crop_size=crop_size,
        source_size=(image.width, image.height),
        background_note=foreground.note,
        warnings=tuple(notes),
    )


# --------------------------------------------------------------------------------------------------
# writing (used by ``sd3d preprocess``)
# --------------------------------------------------------------------------------------------------
def check_output_path(path: str | os.PathLike, suffixes: tuple[str, ...], what: str) -> Path:
    """Refuse an output path early (before any work) with one line; nothing is created here."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        shown = path.suffix or "no extension"
        raise OutputPathError(f"{what} {path} must end in one of {', '.join(suffixes)} (got {shown})")
    if path.is_dir():
        raise OutputPathError(f"{what} {path} is a folder")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(f"cannot write {path}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK):
        raise OutputPathError(f"cannot write {path}: {ancestor} is not writable")
    return path


def _save(image: Image.Image, path: Path) -> None:
    if path.suffix.lower() == ".webp":
        image.save(path, lossless=True)  # lossy WebP would change the recentred pixels
    elif path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=95)
    else:
        image.save(path)


def save_prepared(
    prepared: PreparedInput, output: str | os.PathLike, model_input: str | os.PathLike | None = None
) -> None:
    """Write the RGBA record (and optionally the white-composited RGB) atomically, both or neither."""

    output = check_output_path(output, RGBA_SUFFIXES, "output")
    targets = [(output, prepared.rgba_image())]
    if model_input is not None:
        model_input = check_output_path(model_input, RGB_SUFFIXES, "model input image")
        if model_input.resolve() == output.resolve():
            raise OutputPathError(f"--save-model-input must differ from the output path ({output})")
        targets.append((model_input, Image.fromarray(prepared.model_rgb_uint8(), "RGB")))
    with ExitStack() as stack:
        for path, image in targets:
            _save(image, stack.enter_context(atomic_path(path)))
