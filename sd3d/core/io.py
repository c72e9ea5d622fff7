"""File formats and safe writes.

* Atomic writes: every output is written to a temporary sibling and renamed into place, so a crash
  or Ctrl-C never leaves a half-written file (or views folder) behind.
* The views-folder format shared by ``generate`` and ``reconstruct``: ``000.png ... 015.png``
  (RGBA, or RGB on white), ``cameras.json`` (our camera record, the same layout as the shared
  ground-truth renders), ``transforms.json`` (nerfstudio / instant-ngp), ``grid.png`` and
  ``input.png``. The official 4096x256 strip image is accepted as input too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from sd3d.core import cameras as cam
from sd3d.core.errors import InputImageError, OutputPathError, UserError, ViewsFolderError


# --------------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------------
def _check_parent(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputPathError(f"cannot create output folder {parent}: {exc.strerror}") from exc
    if not parent.is_dir():
        raise OutputPathError(f"output folder {parent} is not a directory")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"output folder {parent} is not writable")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the extension (writers such as Pillow or trimesh pick the format from
    it). On any exception (KeyboardInterrupt included) the temporary file is removed.
    """
    path = Path(path)
    _check_parent(path)
    if path.exists() and path.is_dir():
        raise OutputPathError(f"output path {path} is a directory")
    suffix = path.suffix if suffix is None else suffix
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{suffix}", dir=path.parent)
    except OSError as exc:
        raise OutputPathError(f"cannot write to {path.parent}: {exc.strerror}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with contextlib.suppress(OSError):  # mkstemp makes 0600 files; give outputs the usual mode
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; it replaces ``path`` only if the block succeeds.

    An existing ``path`` is replaced as a whole (so stale views from an earlier run never mix with
    new ones); on failure the old content is untouched and the temporary folder is removed.
    """
    path = Path(path)
    _check_parent(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"output path {path} exists and is not a folder")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    except OSError as exc:
        raise OutputPathError(f"cannot write to {path.parent}: {exc.strerror}") from exc
    try:
        yield tmp
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=1) + "\n").encode())


def save_image_atomic(path: str | os.PathLike, image: np.ndarray | Image.Image) -> None:
    """Save uint8 HxW[xC] (or a PIL image) atomically; the format follows the extension."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    with atomic_path(path) as tmp:
        img.save(tmp)


# --------------------------------------------------------------------------------------------------
# views folder
# --------------------------------------------------------------------------------------------------
VIEW_FILES = [f"{i:03d}.png" for i in range(cam.NUM_VIEWS)]


@dataclass(frozen=True)
class ViewSet:
    """16 views at known cameras.

    ``images``: (N, H, W, 3) float32 in [0, 1], composited on white.
    ``alphas``: (N, H, W) float32 in [0, 1] coverage, or ``None`` when the views are RGB only
    (generated views are RGB on white; masks are then derived downstream).
    ``input_elevation_deg``: the input view's elevation the views were generated for (if known).
    """

    images: np.ndarray
    cameras: list[cam.Camera]
    alphas: np.ndarray | None = None
    input_elevation_deg: float | None = None
    seed: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be (N,H,W,3), got {self.images.shape}")
        if len(self.cameras) != self.images.shape[0]:
            raise ValueError("one camera per view is required")

    @property
    def num_views(self) -> int:
        return int(self.images.shape[0])


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0,1] float -> uint8 with rounding (the official code truncates; ``generate`` does that itself)."""
    return np.clip(np.rint(np.asarray(x, np.float64) * 255.0), 0, 255).astype(np.uint8)


def cameras_record(cameras: list[cam.Camera], files: list[str], extra: dict[str, Any] | None = None) -> dict:
    """``cameras.json`` content: the layout of the shared ground-truth renders' ``cameras.json``."""
    K = cameras[0].K
    rec: dict[str, Any] = {
        "world": "Z up; camera at d*(cos el cos az, cos el sin az, sin el) looking at the origin, up hint +Z",
        "pose_convention": "w2c [R|t] 3x4, OpenCV axes (x right, y down, z forward): x_cam = R x_world + t",
        "pixel_convention": "K maps to continuous pixel coords with the image's top-left corner at (0,0)",
        "image_size": [cameras[0].width, cameras[0].height],
        "K": K.tolist(),
        "views": [
            {
                "file": f,
                "azimuth_deg": c.azimuth_deg,
                "elevation_deg": c.elevation_deg,
                "distance": c.distance,
                "K": c.K.tolist(),
                "w2c": c.w2c.tolist(),
            }
            for f, c in zip(files, cameras, strict=True)
        ],
    }
    if extra:
        rec.update(extra)
    return rec


def transforms_record(cameras: list[cam.Camera], files: list[str]) -> dict:
    """nerfstudio / instant-ngp ``transforms.json`` (OpenGL camera-to-world, per-frame intrinsics)."""
    c0 = cameras[0]
    return {
        "camera_model": "OPENCV",
        "fl_x": float(c0.K[0, 0]),
        "fl_y": float(c0.K[1, 1]),
        "cx": float(c0.K[0, 2]),
        "cy": float(c0.K[1, 2]),
        "w": int(c0.width),
        "h": int(c0.height),
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "aabb_scale": 1,
        "frames": [
            {
                "file_path": f,
                "fl_x": float(c.K[0, 0]),
                "fl_y": float(c.K[1, 1]),
                "cx": float(c.K[0, 2]),
                "cy": float(c.K[1, 2]),
                "w": int(c.width),
                "h": int(c.height),
                "transform_matrix": c.c2w_opengl().tolist(),
            }
            for f, c in zip(files, cameras, strict=True)
        ],
    }


def contact_sheet(images: list[np.ndarray], columns: int = 4) -> np.ndarray:
    """Tile equally sized uint8 images (H,W,C) into a grid, white where empty."""
    h, w, c = images[0].shape
    rows = (len(images) + columns - 1) // columns
    sheet = np.full((rows * h, columns * w, c), 255, np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, columns)
        sheet[r * h : (r + 1) * h, q * w : (q + 1) * w] = im
    return sheet


def write_views_into(
    folder: Path, views_u8: list[np.ndarray], cameras: list[cam.Camera], extra: dict | None = None
) -> None:
    """Write the views-folder files into an existing (temporary) folder."""
    files = VIEW_FILES[: len(views_u8)]
    for f, im in zip(files, views_u8, strict=True):
        Image.fromarray(im).save(folder / f)
    Image.fromarray(contact_sheet(views_u8)).save(folder / "grid.png")
    (folder / "cameras.json").write_text(json.dumps(cameras_record(cameras, files, extra), indent=1) + "\n")
    (folder / "transforms.json").write_text(json.dumps(transforms_record(cameras, files), indent=1) + "\n")


def write_transforms_json(views_dir: str | os.PathLike) -> Path:
    """Write ``transforms.json`` for an existing views folder from its cameras (or the defaults)."""
    vs = read_views(views_dir)
    out = Path(views_dir) / "transforms.json"
    write_json_atomic(out, transforms_record(vs.cameras, VIEW_FILES[: vs.num_views]))
    return out


def _camera_from_record(v: dict, K_default: list, size: tuple[int, int]) -> cam.Camera:
    return cam.Camera(
        K=np.asarray(v.get("K", K_default), np.float64),
        w2c=np.asarray(v["w2c"], np.float64),
        width=size[0],
        height=size[1],
        azimuth_deg=v.get("azimuth_deg"),
        elevation_deg=v.get("elevation_deg"),
        distance=v.get("distance"),
    )


def _load_rgba(path: Path) -> np.ndarray:
    """A view as float32 HxWx3 (RGB) or HxWx4 (RGBA) in [0, 1].

    8-bit files are divided by 255 (generated views round-trip exactly). 16-bit PNGs are decoded at
    full precision and divided by 65535: Pillow keeps only the high byte of 16-bit colour and
    turns 16-bit grey white when converting it, so they are read with OpenCV instead. Grey (and
    grey + alpha) becomes RGB(A). A PNG whose chunk checksums fail is refused: damaged pixel data
    can decode without an error into a wrong picture.
    """
    try:
        verify_png(path)
        if _png_bit_depth(path) == 16:
            return _load_png16(path)
        with Image.open(path) as im:
            im.load()
            rgb = to_rgb_or_rgba(im)
            return np.asarray(rgb, dtype=np.float32) / np.float32(255.0)
    except ViewsFolderError:
        raise
    except (OSError, ValueError, SyntaxError, InputImageError, Image.DecompressionBombError) as exc:
        raise ViewsFolderError(f"cannot read view {path}: {_one_line(exc)}") from exc


def _png_bit_depth(path: Path) -> int | None:
    """The bit depth in a PNG's IHDR chunk, or ``None`` for any other file."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return head[24]


def _load_png16(path: Path) -> np.ndarray:
    """A 16-bit PNG as float32 RGB(A) in [0, 1] (value / 65535)."""
    import cv2

    raw = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16:
        raise ViewsFolderError(f"cannot read view {path}: not a decodable 16-bit PNG")
    if raw.ndim == 2:
        raw = np.repeat(raw[..., None], 3, axis=-1)
    elif raw.shape[-1] == 3:
        raw = raw[..., ::-1]  # OpenCV is BGR
    elif raw.shape[-1] == 4:
        raw = raw[..., [2, 1, 0, 3]]
    else:
        raise ViewsFolderError(f"cannot read view {path}: {raw.shape[-1]} channels")
    return (raw.astype(np.float32) / np.float32(65535.0)).astype(np.float32)


def read_views(source: str | os.PathLike, expected_size: int | None = None) -> ViewSet:
    """Read a views folder (or the official 4096x256 strip image) into a :class:`ViewSet`.

    Validates: all 16 views present, no extra numbered views, all the same square size, readable.
    ``cameras.json`` (if present) gives the cameras; otherwise the 16 default target cameras.
    """
    source = Path(source)
    if not source.exists():
        raise ViewsFolderError(f"views not found: {source}")
    if source.is_file():
        return _read_strip(source)
    present = sorted(p.name for p in source.glob("[0-9][0-9][0-9].png"))
    missing = [f for f in VIEW_FILES if f not in present]
    extra = [f for f in present if f not in VIEW_FILES]
    if missing:
        raise ViewsFolderError(
            f"views folder {source} is missing {len(missing)} view(s): {', '.join(missing[:4])}"
        )
    if extra:
        raise ViewsFolderError(f"views folder {source} has unexpected extra view(s): {', '.join(extra[:4])}")
    arrays = [_load_rgba(source / f) for f in VIEW_FILES]
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) != 1:
        raise ViewsFolderError(f"views in {source} have different sizes: {sorted(sizes)}")
    (h, w) = sizes.pop()
    if h != w:
        raise ViewsFolderError(f"views in {source} must be square, got {w}x{h}")
    if expected_size is not None and h != expected_size:
        raise ViewsFolderError(f"views in {source} must be {expected_size}x{expected_size}, got {w}x{h}")
    cams_path = source / "cameras.json"
    if cams_path.exists():
        try:
            rec = json.loads(cams_path.read_text())
            by_file = {v["file"]: v for v in rec["views"]}
            size = tuple(rec.get("image_size", [w, h]))
            cams = [_camera_from_record(by_file[f], rec["K"], size) for f in VIEW_FILES]
        except (KeyError, ValueError, TypeError) as exc:
            raise ViewsFolderError(f"{cams_path} is not a valid cameras file: {exc}") from exc
        if size != (w, h):
            raise ViewsFolderError(f"{cams_path} is for {size[0]}x{size[1]} images but the views are {w}x{h}")
        extra_rec = {k: rec[k] for k in ("input_elevation_deg", "seed") if k in rec}
    else:
        cams = cam.target_cameras(size=w)
        extra_rec = {}
    images, alphas = _split_alpha(arrays)
    return ViewSet(
        images=images,
        cameras=cams,
        alphas=alphas,
        input_elevation_deg=extra_rec.get("input_elevation_deg"),
        seed=extra_rec.get("seed"),
        provenance={"source": str(source)},
    )


def _split_alpha(arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """Composite float [0,1] RGBA on white; alphas are kept only if every view has them."""
    has_alpha = all(a.shape[-1] == 4 for a in arrays)
    rgbs, alphas = [], []
    for x in arrays:
        if x.shape[-1] == 4:
            alpha = x[..., 3:4]
            rgb = x[..., :3] * alpha + (1.0 - alpha)
            alphas.append(alpha[..., 0])
        else:
            rgb = x
        rgbs.append(rgb)
    return np.stack(rgbs).astype(np.float32), (np.stack(alphas).astype(np.float32) if has_alpha else None)


def _read_strip(path: Path) -> ViewSet:
    arr = _load_rgba(path)
    h, w = arr.shape[:2]
    if w != h * cam.NUM_VIEWS:
        raise ViewsFolderError(
            f"{path} is not a views folder nor a {cam.NUM_VIEWS}-view strip image ({w}x{h}; expected {h * 16}x{h})"
        )
    arrays = [arr[:, i * h : (i + 1) * h] for i in range(cam.NUM_VIEWS)]
    images, alphas = _split_alpha(arrays)
    return ViewSet(
        images=images, cameras=cam.target_cameras(size=h), alphas=alphas, provenance={"source": str(path)}
    )


# --------------------------------------------------------------------------------------------------
# reading input images (with limits)
# --------------------------------------------------------------------------------------------------
DEFAULT_MAX_PIXELS = 50_000_000
"""Refuse larger inputs unless the caller raises the limit: a 50 MP photo is already ~200 MB as RGBA,
and a tiny file that claims a huge size (a decompression bomb) must fail before any pixel is decoded."""

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _one_line(text: object) -> str:
    return " ".join(str(text).split()) or "unknown error"


def check_max_pixels(value: int | None) -> int | None:
    """``--max-pixels``: ``None`` (the default limit) or a positive number of pixels."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise UserError(f"--max-pixels must be positive, got {value}")
    return int(value)


def verify_png(path: str | os.PathLike) -> None:
    """Check every chunk checksum of a PNG file (other formats pass untouched).

    Pillow checks the CRC of the header chunks when it opens a PNG, but not of the pixel data
    (``IDAT``) when it decodes it, so a file damaged there can load without an error into a wrong
    picture. ``verify()`` reads every chunk and raises on a mismatch; it needs a fresh open.
    """
    with Image.open(path) as fresh:
        if fresh.format == "PNG":
            fresh.verify()


def _check_pixel_limit(size: tuple[int, int], limit: int, name: str) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise InputImageError(f"{name} has an empty size ({w}x{h})")
    if w * h > limit:
        raise InputImageError(
            f"{name} is {w}x{h} = {w * h:,} pixels, more than the limit of {limit:,} "
            "(possible decompression bomb; raise it with --max-pixels)"
        )


def _has_transparency(im: Image.Image) -> bool:
    bands = im.getbands()
    if "A" in bands or "a" in bands or im.info.get("transparency") is not None:
        return True
    return im.mode == "P" and im.palette is not None and im.palette.mode == "RGBA"


def _sixteen_bit_to_l(im: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer / float) grey to 8-bit by *scaling*, not clipping.

    Pillow's own ``convert("L")`` clips I;16 values above 255, which turns almost every 16-bit
    photo white. Integer modes are taken as 0..65535 (what 16-bit PNG and TIFF hold), float as 0..1.
    """
    arr = np.asarray(im)
    if im.mode == "F":
        scaled = np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0
    else:
        scaled = np.clip(arr.astype(np.float64), 0.0, 65535.0) / 257.0
    return Image.fromarray(np.rint(scaled).astype(np.uint8), mode="L")


def to_rgb_or_rgba(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> ``RGB`` or ``RGBA`` (``RGBA`` exactly when the image carries transparency).

    Covers 1, L, LA, La, P (with or without a transparent index or RGBA palette), PA, RGB with a
    ``tRNS`` colour, RGBX, RGBa, CMYK (Adobe-inverted JPEGs are handled by Pillow), YCbCr, HSV,
    I;16 / I / F. No colour management: ICC profiles are ignored, as in the official pipeline.
    """
    mode = im.mode
    if mode == "RGBA":
        return im
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        grey = _sixteen_bit_to_l(im)
        trns = im.info.get("transparency")
        if isinstance(trns, int):
            alpha = Image.fromarray(np.where(np.asarray(im) == trns, 0, 255).astype(np.uint8), mode="L")
            return Image.merge("RGBA", (grey, grey, grey, alpha))
        return grey.convert("RGB")
    if _has_transparency(im):
        return im.convert("RGBA")
    if mode == "RGB":
        return im
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise InputImageError(f"unsupported colour mode {mode}: {_one_line(exc)}") from exc


def read_image(source: str | os.PathLike | Image.Image, max_pixels: int | None = None) -> Image.Image:
    """Read an input photo into a decoded ``RGB``/``RGBA`` PIL image, upright per its EXIF orientation.

    Anything Pillow reads is accepted (PNG, JPEG, WebP, TIFF, ...; see :func:`to_rgb_or_rgba` for
    modes); animated files give their first frame. ``max_pixels`` (default
    :data:`DEFAULT_MAX_PIXELS`) is checked on the header *before* decoding. Every way a file can be
    wrong (missing, a folder, empty, not an image, truncated, corrupt, too large) raises
    :class:`~sd3d.core.errors.InputImageError` with one line; a PIL image passed in is not modified.
    """
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else int(max_pixels)
    if limit <= 0:
        raise InputImageError(f"the pixel limit must be positive, got {limit}")
    if isinstance(source, Image.Image):
        _check_pixel_limit(source.size, limit, "input image")
        return _upright(source, "input image")
    path = Path(source)
    name = str(path)
    if not path.exists():
        raise InputImageError(f"input image not found: {name}")
    if path.is_dir():
        raise InputImageError(f"{name} is a folder, not an image file")
    if not path.is_file():
        raise InputImageError(f"{name} is not a regular file")
    if path.stat().st_size == 0:
        raise InputImageError(f"{name} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own limit applies; Pillow's warning threshold (~89 MP) would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_pixel_limit(im.size, limit, name)
                verify_png(path)
                im.load()
                return _upright(im, name)
    except InputImageError:
        raise
    except Image.DecompressionBombError as exc:
        hard_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        raise InputImageError(
            f"{name} is larger than Pillow's hard safety limit of {hard_limit:,} pixels"
        ) from exc
    except Image.UnidentifiedImageError as exc:
        raise InputImageError(f"{name} is not an image (format not recognised)") from exc
    except PermissionError as exc:
        raise InputImageError(f"cannot read {name}: permission denied") from exc
    except MemoryError as exc:
        raise InputImageError(f"{name} is too large to decode in the available memory") from exc
    except Exception as exc:  # noqa: BLE001 - a decoder fed hostile bytes can raise nearly anything
        raise InputImageError(f"{name} is truncated or corrupt: {_one_line(exc)}") from exc


def _upright(im: Image.Image, name: str) -> Image.Image:
    """Apply the EXIF orientation, then normalise the mode (always returns a new, loaded image)."""
    try:
        upright = ImageOps.exif_transpose(im)
    except Exception as exc:  # noqa: BLE001 - broken EXIF blocks raise a variety of errors
        raise InputImageError(f"{name} has an unreadable EXIF orientation: {_one_line(exc)}") from exc
    out = to_rgb_or_rgba(upright if upright is not None else im)
    return out.copy() if out is im else out
