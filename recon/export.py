"""Mesh files by extension: ``.glb`` (textured), ``.obj`` (+ ``.mtl`` + ``_texture.png``), ``.ply`` (vertex colours).

Frames: ``.obj`` and ``.ply`` are written in our world frame (+Z up, the frame of the shared
``mesh_normalized.ply`` ground truth). glTF is +Y up by specification, so ``.glb`` vertices are
rotated with :data:`WORLD_TO_GLTF` (Blender's convention: ``(x, y, z) -> (x, z, -y)``); use
:func:`gltf_to_world` to bring a loaded GLB back into our frame.

Writes are atomic: every file goes to a temporary sibling first and is renamed into place only
when all of them were written, so a failure never leaves a partial mesh (or a .obj without its
.mtl) behind. The files written next to ``NAME.obj`` are ``NAME.mtl`` and ``NAME_texture.png``
(not ``NAME.png``, which is so often the photo the mesh was made from); they replace only files
sd3d wrote (the MTL's first line and the PNG's ``Software`` text say so), never a user's file.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np

from sd3d.errors import OutputPathError
from sd3d.io import atomic_path, check_writable_location

FORMATS = (".glb", ".obj", ".ply")
WORLD_TO_GLTF = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def gltf_to_world(vertices: np.ndarray) -> np.ndarray:
    """Inverse of the +Z-up -> +Y-up rotation applied to ``.glb`` files."""
    return np.asarray(vertices) @ WORLD_TO_GLTF  # R^-1 = R^T, applied to row vectors


_MTL_HEADER = "# sd3d reconstruction"  # the first line of every MTL write_mesh writes
_PNG_SOFTWARE = "sd3d reconstruction texture"


def obj_sidecars(path: str | Path) -> tuple[Path, Path]:
    """The material and texture files written next to an ``.obj``: ``NAME.mtl``, ``NAME_texture.png``."""
    path = Path(path)
    return path.with_suffix(".mtl"), path.with_name(f"{path.stem}_texture.png")


def _written_by_sd3d(path: Path) -> bool:
    """Whether an existing sidecar is one of ours (so it may be replaced)."""
    try:
        if path.suffix.lower() == ".mtl":
            with open(path, encoding="utf-8", errors="replace") as fh:
                return fh.readline().startswith(_MTL_HEADER)
        from PIL import Image

        with Image.open(path) as im:
            return im.info.get("Software") == _PNG_SOFTWARE
    except Exception:  # noqa: BLE001 - unreadable or not an image: not ours
        return False


def check_output_path(path: str | Path) -> Path:
    """Validate a mesh output early (before any training), as a one-line user error: the extension,
    a writable (or creatable) folder, and for ``.obj`` sidecars that would not replace a user's file."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise OutputPathError(
            f"unsupported mesh format {path.suffix or '(none)'!r} for {path}: use .glb, .obj or .ply"
        )
    if path.exists() and path.is_dir():
        raise OutputPathError(f"output path {path} is a directory")
    check_writable_location(path)
    if path.suffix.lower() == ".obj":
        for side in obj_sidecars(path):
            if os.path.lexists(side) and (side.is_dir() or not _written_by_sd3d(side)):
                raise OutputPathError(
                    f"{side} exists and was not written by sd3d; {path.name} needs that name for its "
                    f"{'material' if side.suffix == '.mtl' else 'texture'}: move it away or choose another "
                    "output name"
                )
    return path


def _texture_png(texture: np.ndarray) -> bytes:
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", _PNG_SOFTWARE)  # marks the file as ours (see _written_by_sd3d)
    buf = io.BytesIO()
    Image.fromarray(texture).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _glb_bytes(vertices, faces, uvs, texture, colors) -> bytes:
    import trimesh
    from PIL import Image

    verts = np.asarray(vertices) @ WORLD_TO_GLTF.T
    if uvs is not None and texture is not None:
        material = trimesh.visual.material.PBRMaterial(
            baseColorTexture=Image.fromarray(texture),
            metallicFactor=0.0,
            roughnessFactor=1.0,
            doubleSided=False,
        )
        visual = trimesh.visual.TextureVisuals(uv=uvs, material=material)
    elif colors is not None:
        visual = trimesh.visual.ColorVisuals(vertex_colors=colors)
    else:
        visual = None
    mesh = trimesh.Trimesh(verts, faces, visual=visual, process=False)
    return mesh.export(file_type="glb")


def _obj_text(vertices, faces, uvs, colors, mtl_name: str | None) -> str:
    out = io.StringIO()
    out.write("# sd3d reconstruction (+Z up)\n")
    if mtl_name:
        out.write(f"mtllib {mtl_name}\nusemtl material0\n")
    if colors is not None and uvs is None:
        c = colors[:, :3] / 255.0
        np.savetxt(out, np.hstack([vertices, c]), fmt="v %.6f %.6f %.6f %.4f %.4f %.4f")
    else:
        np.savetxt(out, vertices, fmt="v %.6f %.6f %.6f")
    f1 = faces + 1
    if uvs is not None:
        np.savetxt(out, uvs, fmt="vt %.6f %.6f")
        np.savetxt(out, np.repeat(f1, 2, axis=1), fmt="f %d/%d %d/%d %d/%d")
    else:
        np.savetxt(out, f1, fmt="f %d %d %d")
    return out.getvalue()


def _ply_bytes(vertices, faces, colors) -> bytes:
    import trimesh

    mesh = trimesh.Trimesh(vertices, faces, vertex_colors=colors, process=False)
    return mesh.export(file_type="ply")


def write_mesh(
    path: str | Path,
    vertices: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray | None = None,
    texture: np.ndarray | None = None,
    colors: np.ndarray | None = None,
) -> list[Path]:
    """Write a mesh; the format follows the extension. Returns every file written.

    ``uvs`` (V, 2) + ``texture`` (H, W, 3) uint8 give a textured mesh (.glb, .obj); ``colors``
    (V, 4) uint8 are vertex colours (.ply always uses them; .glb/.obj when there is no texture).
    """
    path = check_output_path(path)
    ext = path.suffix.lower()
    textured = uvs is not None and texture is not None
    files: dict[Path, bytes] = {}
    if ext == ".glb":
        files[path] = _glb_bytes(vertices, faces, uvs if textured else None, texture, colors)
    elif ext == ".obj":
        mtl = png = None
        if textured:
            mtl, png = obj_sidecars(path)
            files[png] = _texture_png(texture)
            files[mtl] = (
                "# sd3d reconstruction\nnewmtl material0\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\n"
                f"map_Kd {png.name}\n"
            ).encode()
        text = _obj_text(vertices, faces, uvs if textured else None, colors, mtl.name if mtl else None)
        files[path] = text.encode()
    else:
        if colors is None:
            raise ValueError(".ply export needs vertex colours")
        files[path] = _ply_bytes(vertices, faces, colors)
    with contextlib.ExitStack() as stack:  # all temporaries are renamed only if every write succeeded
        for target, data in files.items():
            tmp = stack.enter_context(atomic_path(target))
            try:
                tmp.write_bytes(data)
            except OSError as exc:
                raise OutputPathError(f"cannot write {target}: {exc.strerror}") from exc
    return list(files)
