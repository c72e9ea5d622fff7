"""What other tools see in our mesh files: normals, materials, face counts, OBJ side files, progress.

The GLB is read with plain ``json`` + ``struct`` (the glTF 2.0 binary layout), not through trimesh,
so the checks see exactly what a viewer reads. The field is analytic (a sphere with a colour
gradient), so export runs in a second without training.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from recon import pipeline as recon_pipeline
from recon.export import WORLD_TO_GLTF
from recon.mesh import vertex_normals
from recon.pipeline import ReconResult, export_mesh
from recon.presets import get_preset
from sd3d.core.progress import Progress

RADIUS = 0.3

_COMPONENTS = {5121: np.uint8, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}


class _SphereSDF(torch.nn.Module):
    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        return points.norm(dim=-1) - RADIUS


class _SphereField:
    """A sphere of radius 0.3 whose colour is its position (shifted into [0, 1])."""

    sdf_net = _SphereSDF()

    def surface_color(self, points: torch.Tensor):
        return (points + 0.5).clamp(0, 1), torch.zeros_like(points)


def _result(uv_max_faces: int = 1500) -> ReconResult:
    preset = replace(get_preset("draft"), mesh_res=48, texture_size=128, uv_max_faces=uv_max_faces)
    return ReconResult(
        field=_SphereField(),
        grid=None,
        preset=preset,
        device=torch.device("cpu"),
        seed=0,
        mask_source="test",
        final_loss=0.0,
    )


def read_glb(path: Path) -> tuple[dict, bytes]:
    """(JSON chunk, BIN chunk) of a GLB file."""
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<4sII", data, 0)
    assert magic == b"glTF" and version == 2 and length == len(data)
    json_len, json_type = struct.unpack_from("<I4s", data, 12)
    assert json_type == b"JSON"
    tree = json.loads(data[20 : 20 + json_len])
    bin_at = 20 + json_len
    bin_len, bin_type = struct.unpack_from("<I4s", data, bin_at)
    assert bin_type == b"BIN\x00"
    return tree, data[bin_at + 8 : bin_at + 8 + bin_len]


def accessor(tree: dict, blob: bytes, index: int) -> np.ndarray:
    acc = tree["accessors"][index]
    view = tree["bufferViews"][acc["bufferView"]]
    dtype = np.dtype(_COMPONENTS[acc["componentType"]])
    width = _WIDTH[acc["type"]]
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    assert view.get("byteStride", dtype.itemsize * width) == dtype.itemsize * width  # tightly packed
    flat = np.frombuffer(blob, dtype, count=acc["count"] * width, offset=start)
    return flat.reshape(acc["count"], width) if width > 1 else flat


def _primitive(tree: dict) -> dict:
    (mesh,) = tree["meshes"]
    (prim,) = mesh["primitives"]
    return prim


def test_vertex_normals_are_unit_and_smooth():
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    n = vertex_normals(sphere.vertices, sphere.faces)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-12)
    radial = sphere.vertices / np.linalg.norm(sphere.vertices, axis=1, keepdims=True)
    assert np.einsum("ij,ij->i", n, radial).min() > 0.99  # a sphere's smooth normal is radial
    lonely = vertex_normals(np.vstack([sphere.vertices, [[9.0, 9.0, 9.0]]]), sphere.faces)
    np.testing.assert_allclose(lonely[-1], [0.0, 0.0, 1.0])  # unused vertex: still unit length


def test_textured_glb_has_outward_unit_normals_and_a_matte_material(tmp_path):
    out = export_mesh(_result(), tmp_path / "mesh.glb")
    assert out.textured
    tree, blob = read_glb(tmp_path / "mesh.glb")
    prim = _primitive(tree)
    assert {"POSITION", "NORMAL", "TEXCOORD_0"} <= set(prim["attributes"])
    pos = accessor(tree, blob, prim["attributes"]["POSITION"]).astype(np.float64)
    nrm = accessor(tree, blob, prim["attributes"]["NORMAL"]).astype(np.float64)
    assert nrm.shape == pos.shape
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-5)
    # glTF is +Y up: positions and normals were rotated together, so normals still point outwards
    radial = pos / np.linalg.norm(pos, axis=1, keepdims=True)
    assert np.einsum("ij,ij->i", nrm, radial).min() > 0.95
    material = tree["materials"][prim["material"]]["pbrMetallicRoughness"]
    assert material["metallicFactor"] == 0.0 and material["roughnessFactor"] == 1.0


def test_vertex_colour_fallback_glb_is_not_metallic(tmp_path, monkeypatch):
    monkeypatch.setattr(
        recon_pipeline, "unwrap_uv", lambda *a, **k: (None, "xatlas unavailable in this test")
    )
    with pytest.warns(UserWarning, match="writing vertex colours"):
        out = export_mesh(_result(), tmp_path / "mesh.glb")
    assert not out.textured and out.fallback_reason == "xatlas unavailable in this test"
    tree, blob = read_glb(tmp_path / "mesh.glb")
    prim = _primitive(tree)
    assert {"POSITION", "NORMAL", "COLOR_0"} <= set(prim["attributes"])
    assert "material" in prim, "without a material glTF viewers use the default, fully metallic one"
    pbr = tree["materials"][prim["material"]]["pbrMetallicRoughness"]
    assert pbr["metallicFactor"] == 0.0 and pbr["roughnessFactor"] == 1.0
    assert pbr.get("baseColorFactor", [1, 1, 1, 1]) == [1.0, 1.0, 1.0, 1.0]  # colours shown as they are
    colors = accessor(tree, blob, prim["attributes"]["COLOR_0"])
    pos = accessor(tree, blob, prim["attributes"]["POSITION"]).astype(np.float64)
    world = pos @ WORLD_TO_GLTF  # back to +Z up, where the colour was computed
    expected = np.clip(np.rint((world + 0.5) * 255), 0, 255)
    assert np.abs(colors[:, :3].astype(int) - expected).max() <= 1


def test_every_format_gets_the_same_face_budget(tmp_path):
    result = _result(uv_max_faces=1500)
    full = recon_pipeline.extract_mesh(result.field, None, result.preset.mesh_res, result.device)
    assert full.num_faces > 2 * 1500  # the budget really decimates here
    glb, ply, obj = (export_mesh(result, tmp_path / f"m.{ext}") for ext in ("glb", "ply", "obj"))
    tree, _ = read_glb(tmp_path / "m.glb")
    glb_faces = tree["accessors"][_primitive(tree)["indices"]]["count"] // 3
    ply_header = (tmp_path / "m.ply").read_bytes().split(b"end_header")[0].decode()
    ply_faces = int(ply_header.split("element face ")[1].split()[0])
    assert glb_faces == glb.num_faces == ply_faces == ply.num_faces == obj.num_faces <= 1500
    assert "property float nx" in ply_header  # PLY carries the normals too
    explicit = export_mesh(result, tmp_path / "n.ply", faces=800)
    assert explicit.num_faces <= 800


def test_obj_in_a_path_with_spaces_has_parseable_side_files(tmp_path):
    import trimesh

    folder = tmp_path / "my results"
    folder.mkdir()
    out = export_mesh(_result(), folder / "my mesh.obj")
    names = sorted(p.name for p in out.paths)
    assert names == ["my mesh.obj", "my_mesh.mtl", "my_mesh.png"]
    lines = (folder / "my mesh.obj").read_text().splitlines()
    (mtllib,) = [line for line in lines if line.startswith("mtllib ")]
    keyword, *mtl_names = mtllib.split()  # the OBJ spec: whitespace-separated file names
    assert mtl_names == ["my_mesh.mtl"] and (folder / mtl_names[0]).is_file()
    (map_kd,) = [
        line for line in (folder / "my_mesh.mtl").read_text().splitlines() if line.startswith("map_Kd")
    ]
    assert map_kd.split()[1:] == ["my_mesh.png"]
    v = sum(line.startswith("v ") for line in lines)
    vn = sum(line.startswith("vn ") for line in lines)
    faces = [line for line in lines if line.startswith("f ")]
    assert vn == v > 0 and faces[0].count("/") == 6  # f v/vt/vn x3
    loaded = trimesh.load(folder / "my mesh.obj", process=False)
    assert loaded.visual.kind == "texture" and loaded.visual.material.image.size == (128, 128)


def test_export_progress_prints_plain_lines_when_not_a_terminal(tmp_path):
    stream = io.StringIO()  # not a terminal
    export_mesh(_result(), tmp_path / "mesh.glb", progress=Progress(stream=stream))
    lines = stream.getvalue().splitlines()
    for stage in ("meshing (48^3)", "UV unwrapping (xatlas)", "baking texture"):
        assert f"{stage}: started" in "\n".join(lines), lines
        assert any(line.startswith(f"{stage}: finished") for line in lines), lines
    meshing = [line for line in lines if line.startswith("meshing")]
    assert meshing[-1].startswith("meshing (48^3): finished 48/48")
    assert all("\r" not in line and "\x1b" not in line for line in lines)  # no bar redraws, no colours


def test_plain_progress_lines_every_tenth_and_every_few_seconds(monkeypatch):
    from sd3d.core import progress as progress_mod

    stream = io.StringIO()
    with Progress(stream=stream).task("training", 200) as advance:
        for step in range(200):
            advance(1, info=f"loss {1.0 / (step + 1):.3f}")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "training: started (200 steps)"
    middle = lines[1:-1]
    assert [line.split(": ")[1].split(" ")[0] for line in middle] == [f"{20 * k}/200" for k in range(1, 10)]
    assert middle[4].startswith("training: 100/200 (50%), ") and "s left, loss 0.010" in middle[4]
    assert lines[-1].startswith("training: finished 200/200 in ") and lines[-1].endswith("s, loss 0.005")

    clock = iter(np.arange(0.0, 1000.0, 3.0))  # each call: 3 s later
    monkeypatch.setattr(progress_mod.time, "perf_counter", lambda: float(next(clock)))
    stream = io.StringIO()
    with Progress(stream=stream).task("UV unwrapping", None) as advance:
        for _ in range(4):
            advance(0)
    lines = stream.getvalue().splitlines()
    # no total: a line only when 5 s passed since the last one (calls at 3, 6, 9, 12 s after the start)
    assert lines == [
        "UV unwrapping: started",
        "UV unwrapping: running, 6 s",
        "UV unwrapping: running, 12 s",
        "UV unwrapping: finished in 15.0 s",
    ]


def test_progress_on_a_terminal_is_a_bar_and_quiet_is_silent():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    with Progress(stream=stream).task("training", 10) as advance:
        advance(10)
    assert "training: started" not in stream.getvalue() and "training" in stream.getvalue()
    silent = io.StringIO()
    with Progress(enabled=False, stream=silent).task("training", 10) as advance:
        advance(10)
    assert silent.getvalue() == ""
