"""Mesh files by extension: ``.glb`` (textured), ``.obj`` (+ ``.mtl`` + ``_texture.png``), ``.ply`` (vertex colours).

Frames: ``.obj`` and ``.ply`` are written in our world frame (+Z up, the frame of the shared
``mesh_normalized.ply`` ground truth). glTF is +Y up by specification, so ``.glb`` vertices are
rotated with :data:`WORLD_TO_GLTF` (Blender's convention: ``(x, y, z) -> (x, z, -y)``); use
:func:`gltf_to_world` to bring a loaded GLB back into our frame.

Writes are atomic: every file goes to a temporary sibling first and is renamed into place only
when all of them were written, so a failure never leaves a partial mesh (or a .obj without its
.mtl) behind. The files written next to ``NAME.obj`` are ``NAME.mtl`` and ``NAME_texture.png``
(:func:`obj_sidecars`; not ``NAME.png``, which is so often the photo the mesh was made from); they
replace only files sd3d wrote (the MTL's first line and the PNG's ``Software`` text say so), never
a user's file.

What other tools see: smooth vertex normals in every format (``NORMAL`` in glTF, ``vn`` in OBJ,
``nx ny nz`` in PLY; without them viewers shade the surface faceted); a non-metallic, fully rough
material on every GLB, the vertex-colour one included (glTF's default material is fully metallic
and renders dark); and ``.mtl`` / texture names without spaces (``mtllib`` is a list of names
separated by spaces, so a space in the name breaks OBJ readers).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from sd3d.core.errors import OutputPathError
from sd3d.core.io import atomic_path, check_writable_location

FORMATS = (".glb", ".obj", ".ply")
WORLD_TO_GLTF = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def gltf_to_world(vertices: np.ndarray) -> np.ndarray:
    """Inverse of the +Z-up -> +Y-up rotation applied to ``.glb`` files."""
    return np.asarray(vertices) @ WORLD_TO_GLTF  # R^-1 = R^T, applied to row vectors


_MTL_HEADER = "# sd3d reconstruction"  # the first line of every MTL write_mesh writes
_PNG_SOFTWARE = "sd3d reconstruction texture"


def obj_sidecars(path: str | Path) -> tuple[Path, Path]:
    """The material and texture files written next to an ``.obj``: ``NAME.mtl``, ``NAME_texture.png``.

    ``NAME`` is the OBJ's stem with every character that is not a letter, digit, ``-``, ``_`` or
    ``.`` replaced by ``_`` (``mtllib`` and many ``map_Kd`` readers split at spaces), so
    ``my mesh.obj`` gets ``my_mesh.mtl`` and ``my_mesh_texture.png``."""
    path = Path(path)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", path.stem) or "mesh"
    return path.with_name(f"{safe}.mtl"), path.with_name(f"{safe}_texture.png")


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

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", _PNG_SOFTWARE)  # marks the file as ours (see _written_by_sd3d)
    buf = io.BytesIO()
    Image.fromarray(texture).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


PLAIN_MATERIAL = {
    "name": "vertex_colour",
    "pbrMetallicRoughness": {
        "baseColorFactor": [1.0, 1.0, 1.0, 1.0],
        "metallicFactor": 0.0,
        "roughnessFactor": 1.0,
    },
    "doubleSided": False,
}
"""The material of a vertex-colour GLB: white base (``COLOR_0`` multiplies it), not metallic, rough."""


def _add_plain_material(tree: dict) -> None:
    """trimesh writes vertex colours without a material; give every primitive :data:`PLAIN_MATERIAL`."""
    materials = tree.setdefault("materials", [])
    materials.append(dict(PLAIN_MATERIAL))
    for mesh in tree.get("meshes", []):
        for primitive in mesh.get("primitives", []):
            primitive.setdefault("material", len(materials) - 1)


def _glb_bytes(vertices, faces, uvs, texture, colors, normals) -> bytes:
    import trimesh  # here, not at the top: sd3d.core.imports says why

    verts = np.asarray(vertices) @ WORLD_TO_GLTF.T
    post = None
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
        post = _add_plain_material
    else:
        visual = None
        post = _add_plain_material
    gltf_normals = None if normals is None else np.asarray(normals) @ WORLD_TO_GLTF.T
    mesh = trimesh.Trimesh(verts, faces, vertex_normals=gltf_normals, visual=visual, process=False)
    return mesh.export(file_type="glb", include_normals=normals is not None, tree_postprocessor=post)


def _obj_text(vertices, faces, uvs, colors, normals, mtl_name: str | None) -> str:
    out = io.StringIO()
    out.write("# sd3d reconstruction (+Z up)\n")
    if mtl_name:
        out.write(f"mtllib {mtl_name}\nusemtl material0\n")
    if colors is not None and uvs is None:
        c = colors[:, :3] / 255.0
        np.savetxt(out, np.hstack([vertices, c]), fmt="v %.6f %.6f %.6f %.4f %.4f %.4f")
    else:
        np.savetxt(out, vertices, fmt="v %.6f %.6f %.6f")
    if uvs is not None:
        np.savetxt(out, uvs, fmt="vt %.6f %.6f")
    if normals is not None:
        np.savetxt(out, normals, fmt="vn %.6f %.6f %.6f")
    # The same index for position, UV and normal: v/vt/vn, v/vt, v//vn or v.
    corner = {(True, True): "%d/%d/%d", (True, False): "%d/%d", (False, True): "%d//%d"}.get(
        (uvs is not None, normals is not None), "%d"
    )
    per = corner.count("%d")
    np.savetxt(out, np.repeat(faces + 1, per, axis=1), fmt="f " + " ".join([corner] * 3))
    return out.getvalue()


def _ply_bytes(vertices, faces, colors, normals) -> bytes:
    import trimesh  # here, not at the top: sd3d.core.imports says why

    mesh = trimesh.Trimesh(vertices, faces, vertex_normals=normals, vertex_colors=colors, process=False)
    return mesh.export(file_type="ply", vertex_normal=normals is not None)


def write_mesh(
    path: str | Path,
    vertices: np.ndarray,
    faces: np.ndarray,
    uvs: np.ndarray | None = None,
    texture: np.ndarray | None = None,
    colors: np.ndarray | None = None,
    normals: np.ndarray | None = None,
) -> list[Path]:
    """Write a mesh; the format follows the extension. Returns every file written.

    ``uvs`` (V, 2) + ``texture`` (H, W, 3) uint8 give a textured mesh (.glb, .obj); ``colors``
    (V, 4) uint8 are vertex colours (.ply always uses them; .glb/.obj when there is no texture);
    ``normals`` (V, 3) unit vertex normals in our frame (rotated to +Y up for .glb like the
    vertices). The ``.mtl`` and texture of an OBJ are named by :func:`obj_sidecars`.
    """
    path = check_output_path(path)
    ext = path.suffix.lower()
    textured = uvs is not None and texture is not None
    files: dict[Path, bytes] = {}
    if ext == ".glb":
        files[path] = _glb_bytes(vertices, faces, uvs if textured else None, texture, colors, normals)
    elif ext == ".obj":
        mtl = png = None
        if textured:
            mtl, png = obj_sidecars(path)
            files[png] = _texture_png(texture)
            files[mtl] = (
                "# sd3d reconstruction\nnewmtl material0\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\n"
                f"map_Kd {png.name}\n"
            ).encode()
        text = _obj_text(
            vertices, faces, uvs if textured else None, colors, normals, mtl.name if mtl else None
        )
        files[path] = text.encode()
    else:
        if colors is None:
            raise ValueError(".ply export needs vertex colours")
        files[path] = _ply_bytes(vertices, faces, colors, normals)
    with contextlib.ExitStack() as stack:  # all temporaries are renamed only if every write succeeded
        for target, data in files.items():
            tmp = stack.enter_context(atomic_path(target))
            try:
                tmp.write_bytes(data)
            except OSError as exc:
                raise OutputPathError(f"cannot write {target}: {exc.strerror}") from exc
    return list(files)
