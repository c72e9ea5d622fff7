"""File formats and safe writes.

* Atomic writes: every output is written to a temporary sibling and renamed into place, so a crash
  or Ctrl-C never leaves a half-written file (or views folder) behind; a full disk or a read-only
  target is one :class:`~sd3d.core.errors.OutputPathError` line naming the output.
* Output folders are marked (:data:`OUTPUT_MARKER`) so sd3d knows which folders, and which files in
  them, it wrote: a folder it did not write is never emptied, and a file it did not write is never
  replaced.
* The views-folder format shared by ``generate`` and ``reconstruct``: ``000.png ... 015.png``
  (RGBA, or RGB on white), ``cameras.json`` (our camera record, the same layout as the shared
  ground-truth renders), ``transforms.json`` (nerfstudio / instant-ngp), ``grid.png`` and
  ``input.png``. The official 4096x256 strip image is accepted as input too.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import tempfile
import threading
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps

from sd3d import __version__
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


def check_writable_location(path: str | os.PathLike) -> None:
    """Raise a one-line :class:`OutputPathError` unless ``path`` can be created: its nearest existing
    ancestor is a folder we may write into (missing folders below it are created at write time)."""
    path = Path(path)
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(f"cannot write {path}: {ancestor} is not a writable folder")


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
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        mapped = write_error(exc, path)
        if mapped is not None:
            raise mapped from exc
        raise


# --------------------------------------------------------------------------------------------------
# output folders: never replace what we did not write
# --------------------------------------------------------------------------------------------------
OUTPUT_MARKER = ".sd3d-output"
"""A JSON file in every folder sd3d writes (command, version, the entries it wrote). A folder
without it is the user's: its files are never replaced or deleted."""

_TEMP_PREFIX = ".sd3d-"  # our temporary entries inside an existing output folder


def output_marker(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The marker of a folder sd3d wrote, or ``None`` (missing, unreadable or not ours)."""
    try:
        rec = json.loads((Path(folder) / OUTPUT_MARKER).read_text())
    except (OSError, ValueError):
        return None
    files = rec.get("files") if isinstance(rec, dict) else None
    if rec.get("written_by") != "sd3d" or not isinstance(files, list):
        return None
    if not all(isinstance(f, str) and f and "/" not in f and f not in (".", "..") for f in files):
        return None
    return rec


def _user_entries(folder: Path) -> list[str]:
    """Entries of an existing folder other than our marker and our own temporaries."""
    try:
        names = os.listdir(folder)
    except OSError as exc:
        raise OutputPathError(f"cannot read the output folder {folder}: {exc.strerror}") from exc
    return sorted(n for n in names if n != OUTPUT_MARKER and not n.startswith(_TEMP_PREFIX))


def stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """The temporary folders that killed commits into the existing ``folder`` left behind (a
    ``.part`` being filled, an ``.old`` holding replaced outputs); only call it while nothing writes
    into ``folder``."""
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return []
    return sorted(
        p
        for p in entries
        if p.name.startswith(_TEMP_PREFIX) and p.name.endswith((".part", ".old")) and p.is_dir()
    )


def _owned_names(folder: Path) -> set[str]:
    rec = output_marker(folder)
    return set(rec["files"]) if rec else set()


def _clashes(folder: Path, names: Iterable[str]) -> list[str]:
    """Names we are about to write that exist in ``folder`` and are not ours."""
    owned = _owned_names(folder)
    return sorted(n for n in names if n not in owned and os.path.lexists(folder / n))


def _clash_error(folder: Path, clashes: list[str]) -> OutputPathError:
    more = f" (and {len(clashes) - 1} more)" if len(clashes) > 1 else ""
    return OutputPathError(
        f"{folder / clashes[0]}{more} exists and was not written by sd3d: it is never replaced; "
        "move it away or choose another output folder"
    )


def check_output_dir(
    path: str | os.PathLike, *, overwrite: bool = False, planned: Iterable[str] = ()
) -> Path:
    """Refuse, before any work, an output folder sd3d must not write into; creates nothing.

    Writable: a new folder (its parent may be created), an empty folder, or a folder sd3d wrote
    (it has :data:`OUTPUT_MARKER`; our earlier files in it are replaced, other files are kept).
    A non-empty folder sd3d did not write is refused unless ``overwrite``, which lets sd3d add its
    files and still never replaces one of the folder's own files: ``planned`` (the entries the
    command will write) are checked for such clashes here, and again when the results move in.
    """
    path = Path(path)
    if os.path.lexists(path) and not path.is_dir():
        raise OutputPathError(f"output path {path} exists and is not a folder")
    if not path.is_dir():
        check_writable_location(path)
    else:
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputPathError(f"cannot write into the output folder {path}: it is not writable")
        if output_marker(path) is None:
            entries = _user_entries(path)
            if entries and not overwrite:
                shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
                raise OutputPathError(
                    f"output folder {path} already holds files sd3d did not write ({shown}): choose a new "
                    "folder, or pass --overwrite to add sd3d's files to it (its own files are kept)"
                )
        clashes = _clashes(path, planned)
        if clashes:
            raise _clash_error(path, clashes)
    return path


def _write_marker(folder: Path, names: Iterable[str], command: str | None) -> None:

    rec = {"written_by": "sd3d", "version": __version__, "command": command, "files": sorted(set(names))}
    write_json_atomic(folder / OUTPUT_MARKER, rec)


def mark_output(folder: str | os.PathLike, names: Iterable[str], command: str | None = None) -> None:
    """Record ``names`` (entries of the existing ``folder``) as written by sd3d, keeping earlier ones,
    for outputs written in place rather than through :func:`atomic_dir` (``sd3d batch``'s summary)."""
    folder = Path(folder)
    _write_marker(folder, _owned_names(folder) | set(names), command)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM for the few renames of a commit, so they never stop half-way."""

    signums = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.getsignal(s) for s in signums}
    # Only the main thread may set handlers; None means one installed outside Python: left alone.
    if threading.current_thread() is not threading.main_thread() or None in previous.values():
        yield
        return
    pending: list[int] = []
    for s in signums:
        signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in pending[:1]:
            signal.raise_signal(s)


def _merge_into(tmp: Path, path: Path, command: str | None, last: tuple[str, ...]) -> None:
    """Move the entries of ``tmp`` into the existing folder ``path``, replacing only our own files.

    Our earlier entries go to a trash folder first, the new ones move in (``last`` at the end, e.g.
    a report whose presence means "finished"), then the marker lists exactly the new entries. The
    marker is widened before any move, so an interrupted commit never makes our files look foreign;
    a rename that fails puts every moved entry back, so the folder is as it was.
    """
    new = sorted(e.name for e in tmp.iterdir())
    clashes = _clashes(path, new)
    if clashes:
        raise _clash_error(path, clashes)
    old = sorted(n for n in _owned_names(path) if os.path.lexists(path / n))
    _write_marker(path, set(old) | set(new), command)
    trash = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, suffix=".old", dir=path))
    moved: list[tuple[Path, Path]] = []
    try:
        for name in old:
            os.replace(path / name, trash / name)
            moved.append((path / name, trash / name))
        for name in sorted(new, key=lambda n: (n in last, n)):
            os.replace(tmp / name, path / name)
            moved.append((tmp / name, path / name))
    except OSError:
        for source, target in reversed(moved):
            with contextlib.suppress(OSError):
                os.replace(target, source)
        shutil.rmtree(trash, ignore_errors=True)
        raise
    _write_marker(path, new, command)
    shutil.rmtree(trash, ignore_errors=True)
    tmp.rmdir()


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    command: str | None = None,
    last: tuple[str, ...] = (),
) -> Iterator[Path]:
    """Yield an empty temporary folder whose entries land in ``path`` only if the block succeeds.

    A new ``path`` appears at once, whole (one rename). Into an existing folder (see
    :func:`check_output_dir`, which decides whether it may be used at all) the entries move one by
    one: our earlier outputs there are replaced (so stale views never mix with new ones) and every
    file sd3d did not write stays. On failure (Ctrl-C included) nothing changes and the temporary
    folder is removed; a full disk or a read-only folder becomes a one-line
    :class:`~sd3d.core.errors.OutputPathError` naming ``path``.
    """
    path = check_output_dir(path, overwrite=overwrite)
    existing = path.is_dir()
    if not existing:
        _check_parent(path)
    try:
        if existing:
            tmp = Path(tempfile.mkdtemp(prefix=_TEMP_PREFIX, suffix=".part", dir=path))
        else:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    except OSError as exc:
        raise OutputPathError(f"cannot write to {path if existing else path.parent}: {exc.strerror}") from exc
    try:
        yield tmp
        with _signals_deferred():
            if path.is_dir():
                _merge_into(tmp, path, command, last)
            else:
                _write_marker(tmp, (e.name for e in tmp.iterdir()), command)
                with contextlib.suppress(OSError):
                    os.chmod(tmp, 0o777 & ~_umask())
                os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        mapped = write_error(exc, path)
        if mapped is None and isinstance(exc, OutputPathError) and str(tmp) in str(exc):
            mapped = OutputPathError(str(exc).replace(str(tmp), str(path)))  # name the real output
        if mapped is not None:
            raise mapped from exc
        raise


_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


def write_error(exc: BaseException, path: str | os.PathLike) -> OutputPathError | None:
    """A full disk, quota, file-size limit, read-only or permission failure while writing ``path``
    as one-line :class:`~sd3d.core.errors.OutputPathError`; ``None`` for anything else (a bug keeps its
    traceback). Callers use it only around their own writes, so EACCES there is about the output."""
    if isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
        return OutputPathError(f"cannot write {path}: {exc.strerror or os.strerror(exc.errno)}")
    return None


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


def _matrix(value: Any, shape: tuple[int, int], what: str) -> np.ndarray:
    """A finite float64 matrix of ``shape`` (a 4x4 pose with a [0 0 0 1] last row is trimmed to 3x4)."""
    try:
        m = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} is not a numeric matrix") from None
    if shape == (3, 4) and m.shape == (4, 4) and np.array_equal(m[3], [0.0, 0.0, 0.0, 1.0]):
        m = m[:3]
    if m.shape != shape:
        raise ValueError(f"{what} must be {shape[0]}x{shape[1]}, got shape {list(m.shape)}")
    if not np.isfinite(m).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return m


def _camera_from_record(v: dict, K_default: list, size: tuple[int, int]) -> cam.Camera:
    """One view's camera, checked so that a broken file fails here, not after minutes of training."""
    name = v.get("file", "a view")
    K = _matrix(v.get("K", K_default), (3, 3), f"K of {name}")
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise ValueError(f"K of {name} must have positive focal lengths")
    w2c = _matrix(v["w2c"], (3, 4), f"w2c of {name}")
    R = w2c[:, :3]
    if np.abs(R.T @ R - np.eye(3)).max() > 1e-4 or np.linalg.det(R) < 0:
        raise ValueError(f"w2c of {name} does not hold a rotation (its 3x3 part must be orthonormal)")
    return cam.Camera(
        K=K,
        w2c=w2c,
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
        except KeyError as exc:
            raise ViewsFolderError(f"{cams_path} is not a valid cameras file: no {exc} entry") from exc
        except (ValueError, TypeError, AttributeError) as exc:
            raise ViewsFolderError(f"{cams_path} is not a valid cameras file: {_one_line(exc)}") from exc
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
