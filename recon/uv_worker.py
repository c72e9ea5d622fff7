"""The xatlas child process of :func:`recon.texture.unwrap_uv`: ``python recon/uv_worker.py IN.npz OUT.npz``.

xatlas is a C++ extension that can crash the interpreter on some meshes, so it runs in a process of
its own. That process is started once per exported mesh, on the export's critical path, so this file
imports only numpy (and xatlas when it runs): importing torch and the reconstruction modules would
cost the child seconds of start-up on a cold machine. It is run by path, not as ``-m recon...``, so
not even the package's ``__init__`` is imported.

Why the mesh is cut into parts: xatlas's chart growing costs more than linearly in the faces of one
mesh (about 0.4 s for 7.5k faces, 1.4 s for 15k, 3.5 s for 30k on the 2-core development machine),
while the meshes of one atlas are charted as separate tasks on xatlas's own thread pool and then
packed together into one texture. So cutting a 30k-face surface into a few spatial blocks (recursive median cuts of
the face centres along the longest side) charts every block fast, in parallel where there are cores,
and the packer still places every chart of every block in one shared atlas at one texel density.
The cuts add seams along the block borders, where the texture is dilated like any other chart edge.
"""

from __future__ import annotations

import sys

import numpy as np


def split_faces(vertices: np.ndarray, faces: np.ndarray, parts: int) -> list[np.ndarray]:
    """Face indices of ``parts`` spatial blocks of about equal face counts (every face in one block).

    The largest block is cut at the median of its face centres along the axis where it is longest,
    until there are ``parts`` blocks (fewer when there are fewer faces). Deterministic."""
    centres = vertices[faces].mean(axis=1)
    blocks = [np.arange(len(faces))]
    while len(blocks) < parts:
        largest = max(range(len(blocks)), key=lambda i: len(blocks[i]))
        block = blocks[largest]
        if len(block) < 2:
            break
        c = centres[block]
        axis = int(np.argmax(c.max(axis=0) - c.min(axis=0)))
        ordered = block[np.argsort(c[:, axis], kind="stable")]
        half = len(ordered) // 2
        blocks[largest : largest + 1] = [ordered[:half], ordered[half:]]
    return blocks


def unwrap(in_path: str, out_path: str) -> None:
    """Read the mesh and the atlas options from ``in_path``; write vmap, faces and uvs to ``out_path``.

    ``vmap`` indexes the input vertices (one output vertex per input vertex and chart it lies in);
    the output faces are grouped by block (the caller must not rely on the input's face order)."""
    import xatlas

    data = np.load(in_path)
    vertices = data["vertices"].astype(np.float32)
    faces = data["faces"].astype(np.int64)
    parts = int(data["parts"])
    atlas = xatlas.Atlas()
    block_vertices = []
    for block in split_faces(vertices, faces, parts):
        used, local = np.unique(faces[block], return_inverse=True)
        atlas.add_mesh(vertices[used], local.reshape(-1, 3).astype(np.uint32))
        block_vertices.append(used)
    chart = xatlas.ChartOptions()
    chart.max_iterations = int(data["max_iterations"])
    pack = xatlas.PackOptions()
    pack.resolution = int(data["resolution"])
    pack.padding = int(data["padding"])
    pack.bilinear = True
    atlas.generate(chart, pack)
    vmaps, out_faces, uvs, offset = [], [], [], 0
    for i, used in enumerate(block_vertices):
        vmap, indices, block_uvs = atlas[i]
        vmaps.append(used[vmap.astype(np.int64)])
        out_faces.append(indices.astype(np.int64) + offset)
        uvs.append(block_uvs.astype(np.float32))
        offset += len(vmap)
    np.savez(out_path, vmap=np.concatenate(vmaps), faces=np.concatenate(out_faces), uvs=np.concatenate(uvs))


if __name__ == "__main__":
    unwrap(sys.argv[1], sys.argv[2])
