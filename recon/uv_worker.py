"""The xatlas child process of :func:`recon.texture.unwrap_uv`: ``python recon/uv_worker.py IN.npz OUT.npz``.

xatlas is a C++ extension that can crash the interpreter on some meshes, so it runs in a process of
its own. That process is started once per exported mesh, on the export's critical path, so this file
imports only numpy (and xatlas when it runs): importing torch and the reconstruction modules would
cost the child seconds of start-up on a cold machine. It is run by path, not as ``-m recon...``, so
not even the package's ``__init__`` is imported.
"""

from __future__ import annotations

import sys

import numpy as np


def unwrap(in_path: str, out_path: str) -> None:
    """Read the mesh and the atlas options from ``in_path``; write vmap, faces and uvs to ``out_path``."""
    import xatlas

    data = np.load(in_path)
    atlas = xatlas.Atlas()
    atlas.add_mesh(data["vertices"].astype(np.float32), data["faces"].astype(np.uint32))
    chart = xatlas.ChartOptions()
    chart.max_iterations = int(data["max_iterations"])
    pack = xatlas.PackOptions()
    pack.resolution = int(data["resolution"])
    pack.padding = int(data["padding"])
    pack.bilinear = True
    atlas.generate(chart, pack)
    vmap, indices, uvs = atlas[0]
    np.savez(out_path, vmap=vmap.astype(np.int64), faces=indices.astype(np.int64), uvs=uvs.astype(np.float32))


if __name__ == "__main__":
    unwrap(sys.argv[1], sys.argv[2])
