"""The whole chain on CPU: shared GT views -> ``sd3d reconstruct --quality draft`` -> GLB -> metrics.

The one long reconstruction test (a few minutes on one core). It checks the file a user gets, read
back from disk, against the ground-truth mesh in the same frame.
"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_draft_reconstruction_of_spot_reaches_iou(run_cli, shared_dir, tmp_path):
    import trimesh

    from recon.export import gltf_to_world
    from recon.metrics import mesh_metrics

    obj = shared_dir / "data" / "objects" / "spot"
    out = tmp_path / "spot.glb"
    res = run_cli(
        "-q", "reconstruct", obj / "views", "-o", out, "--quality", "draft", "--device", "cpu", "--seed", "0"
    )
    assert res.code == 0, res
    assert "textured" in res.out and out.is_file()

    scene = trimesh.load(out, process=False)
    geom = next(iter(scene.geometry.values()))
    assert geom.visual.uv is not None and geom.visual.material.baseColorTexture is not None
    texture = np.asarray(geom.visual.material.baseColorTexture.convert("RGB"), np.float32) / 255
    assert 0.2 < texture.mean() < 0.95 and texture.std() > 0.02  # a baked texture, not a flat fill

    pred = trimesh.Trimesh(gltf_to_world(np.asarray(geom.vertices)), np.asarray(geom.faces), process=False)
    gt = trimesh.load(obj / "mesh_normalized.ply", process=False)
    metrics = mesh_metrics(pred, gt, num_samples=20_000)
    print("draft spot:", metrics)
    assert metrics["volume_iou"] >= 0.6
    assert metrics["chamfer"] < 0.03
