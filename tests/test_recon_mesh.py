"""Marching cubes, cleanup, decimation, UV unwrapping, baking and mesh files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from recon.export import WORLD_TO_GLTF, check_output_path, gltf_to_world, write_mesh
from recon.mesh import decimate, largest_component, marching_cubes, signed_volume
from recon.texture import dilate_texture, rasterize_uv, unwrap_uv
from sd3d.core.errors import OutputPathError


def _sphere_volume(res: int, centres_radii) -> np.ndarray:
    lin = np.linspace(-0.6, 0.6, res)
    x, y, z = np.meshgrid(lin, lin, lin, indexing="ij")
    p = np.stack([x, y, z], -1)
    return np.min([np.linalg.norm(p - np.array(c), axis=-1) - r for c, r in centres_radii], axis=0)


def test_marching_cubes_sphere_outward_and_accurate():
    mesh = marching_cubes(_sphere_volume(64, [((0.1, 0.0, -0.05), 0.3)]))
    r = np.linalg.norm(mesh.vertices - [0.1, 0.0, -0.05], axis=1)
    assert np.abs(r - 0.3).max() < 0.01
    assert signed_volume(mesh) == pytest.approx(4 / 3 * np.pi * 0.3**3, rel=0.03)  # > 0: faces point out
    assert trimesh.Trimesh(mesh.vertices, mesh.faces).is_watertight


def test_largest_component_drops_floater_and_decimate():
    mesh = marching_cubes(_sphere_volume(64, [((0.0, 0.0, 0.0), 0.3), ((0.45, 0.45, 0.45), 0.08)]))
    kept = largest_component(mesh)
    assert kept.num_faces < mesh.num_faces
    assert np.linalg.norm(kept.vertices, axis=1).max() < 0.32
    small = decimate(kept, 500)
    assert 250 <= small.num_faces <= 500
    assert np.abs(np.linalg.norm(small.vertices, axis=1) - 0.3).max() < 0.02
    assert decimate(small, 10_000) is small  # already below the target


def test_rasterize_uv_covers_quad_exactly_once():
    uvs = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    rows, cols, face, bary = rasterize_uv(uvs, faces, 16)
    cover = np.zeros((16, 16), int)
    np.add.at(cover, (rows, cols), 1)
    assert cover.min() >= 1 and (cover > 1).sum() <= 16  # only the diagonal may be hit twice
    np.testing.assert_allclose(bary.sum(1), 1.0, atol=1e-9)
    # row 0 is the top of the image: v = 1
    top = rows == 0
    v = (bary[top, :, None] * uvs[faces[face[top]]]).sum(1)[:, 1]
    assert np.all(v > 0.9)


def test_dilate_texture_fills_seams():
    img = np.zeros((8, 8, 3), np.float32)
    filled = np.zeros((8, 8), bool)
    img[2:4, 2:4] = [1.0, 0.5, 0.0]
    filled[2:4, 2:4] = True
    out = dilate_texture(img, filled, iterations=2)
    np.testing.assert_allclose(out[0, 0], [1.0, 0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(out[7, 7], [1.0, 0.5, 0.0], atol=1e-6)


def test_dilate_texture_matches_the_plain_neighbour_average():
    """The pooled dilation gives what the rule says, texel by texel: each pass, every empty texel
    next to a filled one takes the mean of its filled 8-neighbours; what is still empty after the
    passes takes the mean of the filled texels. Reference: that rule written as plain loops."""

    def reference(image, filled, iterations):
        img, mask = image.astype(np.float64).copy(), filled.copy()
        h, w = mask.shape
        for _ in range(iterations):
            grown = {}
            for y, x in zip(*np.nonzero(~mask), strict=True):
                ys, xs = slice(max(y - 1, 0), y + 2), slice(max(x - 1, 0), x + 2)
                if mask[ys, xs].any():
                    grown[y, x] = img[ys, xs][mask[ys, xs]].mean(0)
            for (y, x), colour in grown.items():
                img[y, x], mask[y, x] = colour, True
        if mask.any() and not mask.all():
            img[~mask] = img[mask].mean(0)
        return img

    rng = np.random.default_rng(3)
    image = rng.random((24, 20, 3)).astype(np.float32)
    filled = np.zeros((24, 20), bool)
    filled[3:7, 2:9] = True
    filled[15:18, 12:14] = True
    filled[0, 19] = True  # a chart at the border: no wrap-around, no padding counted
    image[~filled] = 0.0
    for iterations in (1, 3, 40):
        np.testing.assert_allclose(
            dilate_texture(image, filled, iterations), reference(image, filled, iterations), atol=1e-6
        )


def test_unwrap_uv_in_subprocess_and_fallback():
    sphere = trimesh.creation.icosphere(2, radius=0.3)
    uv, why = unwrap_uv(np.asarray(sphere.vertices), np.asarray(sphere.faces), 256)
    assert why == "" and uv is not None
    assert uv.faces.shape == sphere.faces.shape
    assert uv.uvs.min() >= 0.0 and uv.uvs.max() <= 1.0
    np.testing.assert_allclose(uv.vertices, sphere.vertices[uv.vmap])
    # a failure in the child (here: an index past the vertex array) is reported, not raised
    bad, why = unwrap_uv(np.zeros((3, 3)), np.array([[0, 1, 7]]), 64, timeout_s=60)
    assert bad is None and why


def test_split_faces_gives_every_face_to_one_block_of_about_equal_size():
    from recon.uv_worker import split_faces

    sphere = trimesh.creation.icosphere(3, radius=0.3)  # 1280 faces
    v, f = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    for parts in (1, 2, 3, 8):
        blocks = split_faces(v, f, parts)
        assert len(blocks) == parts
        np.testing.assert_array_equal(np.sort(np.concatenate(blocks)), np.arange(len(f)))
        assert max(map(len, blocks)) <= 2 * min(map(len, blocks))
    halves = split_faces(v, f, 2)  # cut along the longest side, at the median: two hemispheres
    centres = v[f].mean(1)
    axis = int(np.argmax(np.ptp(centres, axis=0)))
    assert centres[halves[0], axis].max() <= centres[halves[1], axis].min()
    assert [b.tolist() for b in split_faces(v, f, 8)] == [b.tolist() for b in split_faces(v, f, 8)]
    assert len(split_faces(v[:3], np.array([[0, 1, 2]]), 4)) == 1  # a lone face is not cut


def test_unwrap_in_blocks_shares_one_atlas_without_overlaps():
    """Blocks are charted apart but packed together: each input face once, and no texel of the
    texture claimed by triangles of two blocks."""
    from recon.texture import uv_parts
    from recon.uv_worker import split_faces

    sphere = trimesh.creation.icosphere(3, radius=0.3)
    v, f = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    uv, why = unwrap_uv(v, f, 256, parts=4)
    assert why == "" and uv is not None
    np.testing.assert_allclose(uv.vertices, v[uv.vmap])
    assert uv.uvs.min() >= 0.0 and uv.uvs.max() <= 1.0
    as_input = {tuple(sorted(t)) for t in uv.vmap[uv.faces].tolist()}
    assert len(uv.faces) == len(f) and as_input == {tuple(sorted(t)) for t in f.tolist()}
    sizes = np.cumsum([0] + [len(b) for b in split_faces(v, f, 4)])
    owner = np.full((256, 256), -1)
    for k in range(4):
        rows, cols, _, _ = rasterize_uv(uv.uvs, uv.faces[sizes[k] : sizes[k + 1]], 256)
        assert rows.size > 0
        assert (owner[rows, cols] == -1).all(), f"block {k} overlaps another block in the atlas"
        owner[rows, cols] = k
    assert [uv_parts(n) for n in (320, 4000, 4001, 20_000, 30_000, 10**6)] == [1, 1, 2, 8, 8, 16]


def test_a_failure_in_blocks_is_retried_in_one_piece(monkeypatch):
    """Blocks are new to xatlas's inputs: should it fail on them, the one-piece unwrap of before is
    tried before the caller falls back to vertex colours; a timeout is not retried."""
    import recon.texture as texture

    sphere = trimesh.creation.icosphere(4, radius=0.3)  # 5120 faces: 2 blocks by default
    v, f = np.asarray(sphere.vertices), np.asarray(sphere.faces)
    assert texture.uv_parts(len(f)) == 2
    real, calls = texture._unwrap_in_child, []

    def blocks_crash(*args):
        calls.append(args[-1])
        return (None, "xatlas crashed (signal 11)", False) if args[-1] > 1 else real(*args)

    monkeypatch.setattr(texture, "_unwrap_in_child", blocks_crash)
    uv, why = texture.unwrap_uv(v, f, 128)
    assert calls == [2, 1] and why == "" and uv is not None and len(uv.faces) == len(f)

    calls.clear()
    monkeypatch.setattr(texture, "_unwrap_in_child", lambda *a: calls.append(a[-1]) or (None, "boom", False))
    uv, why = texture.unwrap_uv(v, f, 128)
    assert uv is None and calls == [2, 1] and why == "boom (2 blocks); in one piece: boom"
    calls.clear()
    uv, why = texture.unwrap_uv(v, f, 128, parts=4)  # asked for: no second attempt
    assert uv is None and calls == [4] and why == "boom"

    calls.clear()
    late = "xatlas did not finish within 300 s"
    monkeypatch.setattr(texture, "_unwrap_in_child", lambda *a: calls.append(a[-1]) or (None, late, True))
    uv, why = texture.unwrap_uv(v, f, 128)
    assert uv is None and calls == [2] and why == late


def _textured_quad():
    v = np.array([[0.0, 0.0, 0.0], [0.2, 0.0, 0.0], [0.2, 0.0, 0.3], [0.0, 0.0, 0.3]])
    f = np.array([[0, 1, 2], [0, 2, 3]])
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    tex = np.zeros((4, 4, 3), np.uint8)
    tex[:2] = [255, 0, 0]  # top half red (v > 0.5)
    colors = np.tile(np.array([[10, 20, 30, 255]], np.uint8), (4, 1))
    return v, f, uv, tex, colors


def test_write_glb_is_y_up_and_textured(tmp_path):
    v, f, uv, tex, _ = _textured_quad()
    paths = write_mesh(tmp_path / "m.glb", v, f, uvs=uv, texture=tex)
    assert paths == [tmp_path / "m.glb"]
    loaded = trimesh.load(tmp_path / "m.glb", force="mesh", process=False)
    np.testing.assert_allclose(loaded.vertices, v @ WORLD_TO_GLTF.T, atol=1e-6)
    np.testing.assert_allclose(gltf_to_world(loaded.vertices), v, atol=1e-6)
    assert loaded.vertices[:, 1].max() == pytest.approx(0.3)  # our +Z (height) is glTF's +Y
    image = np.asarray(loaded.visual.material.baseColorTexture.convert("RGB"))
    assert tuple(image[0, 0]) == (255, 0, 0)
    np.testing.assert_allclose(loaded.visual.uv, uv, atol=1e-6)


def test_write_obj_with_mtl_png_and_ply(tmp_path):
    v, f, uv, tex, colors = _textured_quad()
    paths = write_mesh(tmp_path / "m.obj", v, f, uvs=uv, texture=tex)
    assert sorted(p.name for p in paths) == ["m.mtl", "m.obj", "m_texture.png"]
    assert "map_Kd m_texture.png" in (tmp_path / "m.mtl").read_text()
    loaded = trimesh.load(tmp_path / "m.obj", force="mesh", process=False)
    assert loaded.faces.shape == (2, 3)
    np.testing.assert_allclose(
        np.sort(loaded.vertices, axis=0), np.sort(v, axis=0), atol=1e-6
    )  # Z up as written
    write_mesh(tmp_path / "c.ply", v, f, colors=colors)
    ply = trimesh.load(tmp_path / "c.ply", process=False)
    np.testing.assert_array_equal(ply.visual.vertex_colors, colors)


def test_bad_output_paths_leave_nothing(tmp_path):
    with pytest.raises(OutputPathError):
        check_output_path(tmp_path / "m.fbx")
    v, f, _, _, _ = _textured_quad()
    with pytest.raises(ValueError):
        write_mesh(tmp_path / "m.ply", v, f)  # no colours for a .ply
    assert list(tmp_path.iterdir()) == []


def test_bake_texture_from_field(tmp_path):
    """Baking colours every texel from the field at the surface point it maps to."""
    from recon.texture import UVMesh, bake_texture

    class Field:
        def surface_color(self, points):
            return (points[:, :3] + 0.5).clamp(0, 1), torch.zeros_like(points)

    v, f, uv, _, _ = _textured_quad()
    mesh = UVMesh(v, f, uv.astype(np.float32), np.arange(4))
    tex = bake_texture(Field(), mesh, 8, torch.device("cpu"))
    # bottom-left texel (v ~ 0, u ~ 0) maps near vertex 0 = (0, 0, 0) -> colour ~ 0.5
    assert np.abs(tex[-1, 0].astype(int) - [128 + 0, 128, 128 + 2]).max() <= 12
    # top-right texel maps near (0.2, 0, 0.3)
    assert np.abs(tex[0, -1].astype(int) - [179, 128, 204]).max() <= 12


def test_uv_child_process_starts_without_torch_or_the_package():
    """The xatlas child runs once per export on its critical path: it must not pay torch's import."""
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).resolve().parents[1] / "recon" / "uv_worker.py"
    probe = (
        f"import runpy, sys; runpy.run_path({str(worker)!r}, run_name='probe'); "
        "print(sorted(m for m in ('torch', 'scipy', 'recon', 'sd3d') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
