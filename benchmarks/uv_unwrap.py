"""UV unwrapping cut into spatial blocks: xatlas time against the baked texture's quality.

    OMP_NUM_THREADS=1 python benchmarks/uv_unwrap.py [--shared ../shared] [--faces 30000] [--parts 1 2 4 8]

For each shared object (spot, bob, duck, banana) the GT surface is meshed the way the pipeline
meshes a field (winding numbers on a 192^3 grid, marching cubes, largest component, quadric
decimation to ``--faces``: 30k is the standard preset's budget, 20k draft's). For each block count
``--parts`` the mesh is unwrapped by :func:`recon.texture.unwrap_uv` (the child process, timed from
its start: what an export waits for), a ``--size`` texture is baked from the object's 16 GT views
(:class:`recon.bake.ViewProjector`, the default bake settings) and written as a GLB, and the GLB is
rendered unlit at the 16 cameras against the views (``benchmarks/robustness.py``'s ``appearance``:
PSNR over the covered pixels, SSIM on their box). Also: charts (connected UV islands are not
reported by the child; the vertex count after seam splitting is, as ``seam vertices``) and the
fraction of the texture that holds texels of the surface (``filled``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OBJECTS = ("spot", "bob", "duck", "banana")


def gt_surface(mesh_path: Path, faces: int):
    """The GT mesh re-meshed like a reconstruction (winding numbers, marching cubes, decimation)."""
    import numpy as np

    from recon.mesh import decimate, largest_component, marching_cubes
    from recon.metrics import winding_numbers_grid
    from recon.raster import load_trimesh

    gt = load_trimesh(mesh_path)
    winding = winding_numbers_grid(np.asarray(gt.vertices), np.asarray(gt.faces), resolution=192)
    return decimate(largest_component(marching_cubes(0.5 - winding)), faces)


class _GreyField:
    """Colour of the few texels no view sees (the pipeline asks the colour network): a flat grey,
    the same for every block count, so only the UV layout differs between the rows."""

    def surface_color(self, points):
        import torch

        return torch.full_like(points, 0.5), torch.zeros_like(points)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared", type=Path, default=Path(os.environ.get("SD3D_SHARED", REPO.parent / "shared"))
    )
    parser.add_argument("--objects", nargs="+", default=list(OBJECTS))
    parser.add_argument("--faces", type=int, default=30_000)
    parser.add_argument("--size", type=int, default=1024, help="texture size (standard: 1024)")
    parser.add_argument("--parts", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from benchmarks.robustness import appearance
    from recon.bake import ViewProjector
    from recon.export import write_mesh
    from recon.mesh import vertex_normals
    from recon.texture import bake_texture, rasterize_uv, unwrap_uv
    from sd3d.core.io import read_views

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    device = torch.device("cpu")
    rows = []
    with tempfile.TemporaryDirectory(prefix="sd3d-uvbench-") as tmp:
        for name in args.objects:
            folder = args.shared / "data" / "objects" / name
            views = read_views(folder / "views")
            mesh = gt_surface(folder / "mesh_normalized.ply", args.faces)
            normals = vertex_normals(mesh.vertices, mesh.faces)
            projector = ViewProjector(
                views.images, views.alphas, views.cameras, None, mesh.vertices, mesh.faces, device
            )
            for parts in args.parts:
                t0 = time.perf_counter()
                uv_mesh, why = unwrap_uv(mesh.vertices, mesh.faces, args.size, parts=parts)
                seconds = time.perf_counter() - t0
                if uv_mesh is None:
                    raise SystemExit(f"{name}, {parts} parts: unwrap failed: {why}")
                rows_px = rasterize_uv(uv_mesh.uvs, uv_mesh.faces, args.size)[0]
                texture = bake_texture(
                    _GreyField(),
                    uv_mesh,
                    args.size,
                    device,
                    projector=projector,
                    normals=normals[uv_mesh.vmap],
                )
                glb = Path(tmp) / f"{name}-{parts}.glb"
                write_mesh(
                    glb,
                    uv_mesh.vertices,
                    uv_mesh.faces,
                    uvs=uv_mesh.uvs,
                    texture=texture,
                    normals=normals[uv_mesh.vmap],
                )
                scores, _ = appearance(glb, views, "cpu")
                row = {
                    "object": name,
                    "faces": int(mesh.num_faces),
                    "parts": parts,
                    "uv_s": round(seconds, 2),
                    "seam_vertices": int(len(uv_mesh.vmap)),
                    "filled": round(len(rows_px) / args.size**2, 3),
                    "psnr": round(scores["app_psnr"], 2),
                    "ssim": round(scores["app_ssim"], 4),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)

    print(
        f"\nUV unwrapping in blocks; {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{args.faces} faces, texture {args.size}\n"
    )
    print("| object | parts | UV s | seam vertices | filled | PSNR dB | SSIM |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['object']} | {r['parts']} | {r['uv_s']:.2f} | {r['seam_vertices']} | {r['filled']:.3f} "
            f"| {r['psnr']:.2f} | {r['ssim']:.4f} |"
        )
    for parts in args.parts:
        sel = [r for r in rows if r["parts"] == parts]
        print(
            f"| **mean** | {parts} | {np.mean([r['uv_s'] for r in sel]):.2f} | "
            f"{np.mean([r['seam_vertices'] for r in sel]):.0f} | {np.mean([r['filled'] for r in sel]):.3f} | "
            f"{np.mean([r['psnr'] for r in sel]):.2f} | {np.mean([r['ssim'] for r in sel]):.4f} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
