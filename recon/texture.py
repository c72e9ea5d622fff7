"""UV unwrapping (xatlas, in a subprocess) and texture baking from the input views or the colour network.

xatlas can crash the interpreter on some meshes (it is a C++ extension), so it runs in a child
process (:mod:`recon.uv_worker`, which imports only numpy so that it starts fast); a crash, a
timeout or a missing module returns ``None`` with the reason, and the caller falls back to vertex
colours.

Baking: every texel centre inside a UV triangle is mapped back to the 3D surface (barycentric
interpolation) and coloured there: from the input views when a :class:`recon.bake.ViewProjector`
is given (sharp; the field's colour only where no view sees the point), else by the colour network,
seen head-on (view direction = -normal). Empty texels next to charts are then filled from their
neighbours (seam dilation) so bilinear filtering and mip-maps never pull in the background.

UVs follow the OBJ/trimesh convention: (0, 0) is the bottom-left of the image, v points up.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from recon.bake import ViewProjector
from sd3d.core.io import write_error
from sd3d.core.progress import resolve

UV_TIMEOUT_S = 300
FACES_PER_UV_PART = 4000
"""Faces per spatial block that xatlas charts on its own (see :mod:`recon.uv_worker`): chart growing
costs more than linearly in a mesh's faces, so blocks of this size chart several times faster than one
30k-face mesh, and xatlas charts them on its threads; ``benchmarks/uv_unwrap.py`` measured the time
and the baked texture against the block size."""
MAX_UV_PARTS = 16
POLL_S = 0.5
"""How often :func:`unwrap_uv` checks on the child process (and calls its ``tick``)."""
COLOR_CHUNK = 65536
"""Surface points per colour-network call when baking (bounded memory, steady progress)."""


@dataclass(frozen=True)
class UVMesh:
    """A mesh split along UV seams: ``vmap[i]`` is the source vertex of new vertex ``i``."""

    vertices: np.ndarray  # (V', 3) float64
    faces: np.ndarray  # (F, 3) int64
    uvs: np.ndarray  # (V', 2) float32 in [0, 1]
    vmap: np.ndarray  # (V',) int64


def uv_parts(num_faces: int) -> int:
    """How many blocks a mesh of ``num_faces`` faces is cut into for unwrapping (a power of two)."""
    parts = 1
    while parts < MAX_UV_PARTS and num_faces > parts * FACES_PER_UV_PART:
        parts *= 2
    return parts


def unwrap_uv(
    vertices: np.ndarray,
    faces: np.ndarray,
    resolution: int,
    padding: int = 2,
    timeout_s: float = UV_TIMEOUT_S,
    tick: Callable[[], None] | None = None,
    parts: int | None = None,
) -> tuple[UVMesh | None, str]:
    """UV-unwrap in a child process. Returns ``(UVMesh, "")`` or ``(None, reason)``.

    ``parts``: spatial blocks charted separately and packed into one atlas (``None``: one per
    :data:`FACES_PER_UV_PART` faces, a power of two, at most :data:`MAX_UV_PARTS`; should xatlas
    fail on the blocks, other than by running out of time, the mesh is unwrapped once more in one
    piece, as before blocks existed, before the caller falls back to vertex colours).

    ``tick()`` (optional) is called about every :data:`POLL_S` seconds while the child runs, so a
    progress display can show that the unwrap is still going. The exchange files live in a
    ``sd3d-uv-*`` temporary folder that is removed on every way out, Ctrl-C and SIGTERM included
    (the CLI turns SIGTERM into an exception, and the child is killed before the exception leaves).
    """
    blocks = uv_parts(len(faces)) if parts is None else parts
    started = time.monotonic()
    uv_mesh, why, timed_out = _unwrap_in_child(vertices, faces, resolution, padding, timeout_s, tick, blocks)
    if uv_mesh is None and parts is None and blocks > 1 and not timed_out:
        left = timeout_s - (time.monotonic() - started)
        whole, why_whole, _ = _unwrap_in_child(vertices, faces, resolution, padding, left, tick, 1)
        if whole is not None:
            return whole, ""
        why = f"{why} ({blocks} blocks); in one piece: {why_whole}"
    return uv_mesh, why


def _unwrap_in_child(
    vertices: np.ndarray,
    faces: np.ndarray,
    resolution: int,
    padding: int,
    timeout_s: float,
    tick: Callable[[], None] | None,
    parts: int,
) -> tuple[UVMesh | None, str, bool]:
    """One run of :mod:`recon.uv_worker`: ``(UVMesh, "", False)`` or ``(None, reason, timed out)``."""
    with tempfile.TemporaryDirectory(prefix="sd3d-uv-") as tmp:
        src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        try:
            np.savez(
                src,
                vertices=vertices,
                faces=faces,
                resolution=resolution,
                padding=padding,
                max_iterations=1,
                parts=parts,
            )
        except OSError as exc:  # a full temporary folder is the user's to fix, not a fallback
            mapped = write_error(exc, src)
            if mapped is None:
                raise
            raise mapped from exc
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("uv_worker.py")), src, dst],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    _, stderr = proc.communicate(timeout=min(POLL_S, max(0.01, deadline - time.monotonic())))
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() >= deadline:
                        proc.kill()
                        proc.communicate()
                        return None, f"xatlas did not finish within {timeout_s:.0f} s", True
                    if tick is not None:
                        tick()
        except BaseException:  # Ctrl-C or a failing tick: never leave the child running
            proc.kill()
            proc.communicate()
            raise
        if proc.returncode != 0 or not os.path.exists(dst):
            tail = stderr.decode(errors="replace").strip().splitlines()
            why = tail[-1] if tail else f"exit code {proc.returncode}"
            if proc.returncode < 0:
                why = f"xatlas crashed (signal {-proc.returncode})"
            return None, why, False
        out = np.load(dst)
        vmap = out["vmap"]
        return UVMesh(vertices[vmap], out["faces"], out["uvs"], vmap), "", False


def rasterize_uv(uvs: np.ndarray, faces: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which triangle covers each texel centre, and where.

    Returns ``(rows, cols, face, bary)`` flattened over covered texels: ``rows``/``cols`` (K,) texel
    coordinates (row 0 = top = v 1), ``face`` (K,) and barycentrics (K, 3). Triangles are processed
    in buckets of similar bounding-box size so the work stays vectorised.
    """
    tri = uvs[faces].astype(np.float64) * size  # (F, 3, 2) in pixel units, x = u*size, y = v*size
    tri[..., 1] = size - tri[..., 1]  # image rows grow downwards
    lo = np.floor(tri.min(1) - 0.5).astype(np.int64)
    hi = np.ceil(tri.max(1) - 0.5).astype(np.int64)
    extent = np.maximum(hi - lo + 1, 1)
    side = extent.max(1)
    out_r, out_c, out_f, out_b = [], [], [], []
    bucket = np.ceil(np.log2(side)).astype(np.int64)
    for b in np.unique(bucket):
        sel = np.nonzero(bucket == b)[0]
        m = int(2**b)
        for chunk in np.array_split(sel, max(1, (sel.shape[0] * m * m) // 4_000_000 + 1)):
            if chunk.shape[0] == 0:
                continue
            oy, ox = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
            cols = lo[chunk, 0, None] + ox.reshape(1, -1)  # (T, m*m)
            rows = lo[chunk, 1, None] + oy.reshape(1, -1)
            px, py = cols + 0.5, rows + 0.5
            a, b_, c = tri[chunk, 0], tri[chunk, 1], tri[chunk, 2]
            den = (b_[:, 1] - c[:, 1]) * (a[:, 0] - c[:, 0]) + (c[:, 0] - b_[:, 0]) * (a[:, 1] - c[:, 1])
            den = np.where(np.abs(den) < 1e-12, 1e-12, den)[:, None]
            l0 = (
                (b_[:, 1, None] - c[:, 1, None]) * (px - c[:, 0, None])
                + (c[:, 0, None] - b_[:, 0, None]) * (py - c[:, 1, None])
            ) / den
            l1 = (
                (c[:, 1, None] - a[:, 1, None]) * (px - c[:, 0, None])
                + (a[:, 0, None] - c[:, 0, None]) * (py - c[:, 1, None])
            ) / den
            l2 = 1.0 - l0 - l1
            eps = -1e-6
            inside = (
                (l0 >= eps)
                & (l1 >= eps)
                & (l2 >= eps)
                & (cols >= 0)
                & (cols < size)
                & (rows >= 0)
                & (rows < size)
            )
            t_idx, k_idx = np.nonzero(inside)
            out_r.append(rows[t_idx, k_idx])
            out_c.append(cols[t_idx, k_idx])
            out_f.append(chunk[t_idx])
            out_b.append(np.stack([l0[t_idx, k_idx], l1[t_idx, k_idx], l2[t_idx, k_idx]], axis=-1))
    if not out_r:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, np.zeros((0, 3))
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_f), np.concatenate(out_b)


def dilate_texture(image: np.ndarray, filled: np.ndarray, iterations: int = 16, device="cpu") -> np.ndarray:
    """Grow chart colours into empty texels (average of filled 8-neighbours), the rest gets the mean.

    Each iteration is one 3x3 average pool of (colour x coverage, coverage) on ``device``: torch
    instead of scipy's ``uniform_filter`` because the 16 full-texture passes were the largest part of
    baking a 1024 texture on the CPU (0.88 s -> 0.33 s on two cores), and on a GPU they take
    milliseconds."""
    dev = torch.device(device)
    img = torch.from_numpy(np.ascontiguousarray(image, np.float32)).to(dev).permute(2, 0, 1)
    mask = torch.from_numpy(np.ascontiguousarray(filled, np.float32)).to(dev)[None]
    for _ in range(iterations):
        empty = mask < 0.5
        if not bool(empty.any()):
            break
        # the mean over the 3x3 window of colour x coverage and of coverage (zeros beyond the border):
        # their ratio is the mean colour of the filled neighbours
        sums = F.avg_pool2d(torch.cat([img * mask, mask])[None], 3, stride=1, padding=1)[0]
        grow = empty & (sums[3:] > 1e-6)
        img = torch.where(grow, sums[:3] / sums[3:].clamp_min(1e-12), img)
        mask = torch.where(grow, torch.ones_like(mask), mask)
    out = img.permute(1, 2, 0).cpu().numpy().copy()
    covered = mask[0].cpu().numpy() > 0.5
    if covered.any() and not covered.all():
        out[~covered] = out[covered].mean(0)
    return out


def surface_colors(
    field, points: np.ndarray, device, progress=None, description: str = "colours", chunk: int = COLOR_CHUNK
) -> np.ndarray:
    """(K, 3) float32 colours of the colour network at surface points, ``chunk`` points per call.

    ``progress`` (a :class:`sd3d.core.progress.Progress`, optional) shows one step per call.
    """

    out = np.empty((points.shape[0], 3), np.float32)
    calls = max(1, -(-int(points.shape[0]) // chunk))
    with resolve(progress).task(description, calls) as advance:
        for start in range(0, points.shape[0], chunk):
            part = torch.from_numpy(np.ascontiguousarray(points[start : start + chunk], np.float32))
            colors, _ = field.surface_color(part.to(device))
            out[start : start + chunk] = colors.float().cpu().numpy()
            advance()
    return out


def _colors_at(
    field,
    points: np.ndarray,
    normals: np.ndarray | None,
    device,
    progress,
    description: str,
    projector: ViewProjector | None,
) -> np.ndarray:
    """Colours at surface points: from the views through ``projector`` (the field's where no view
    sees them), or from the field alone."""
    if projector is None:
        return surface_colors(field, points, device, progress, description)

    def fallback(pts: np.ndarray) -> np.ndarray:
        return surface_colors(field, pts, device, progress, f"{description} (unseen)")

    return projector.colors(points, normals, fallback, progress, description)


def bake_texture(
    field,
    uv_mesh: UVMesh,
    size: int,
    device,
    progress=None,
    projector: ViewProjector | None = None,
    normals: np.ndarray | None = None,
) -> np.ndarray:
    """(size, size, 3) uint8 texture of the surface points of each texel.

    With ``projector`` the colours come from the input views (``normals``: (V', 3) unit vertex
    normals of ``uv_mesh``, interpolated per texel, required then); without it from the colour
    network.
    """
    rows, cols, face, bary = rasterize_uv(uv_mesh.uvs, uv_mesh.faces, size)
    corners = uv_mesh.vertices[uv_mesh.faces[face]]  # (K, 3, 3)
    points = np.einsum("kc,kcd->kd", bary, corners)
    texel_normals = None
    if projector is not None:
        if normals is None:
            raise ValueError("baking from the views needs the vertex normals")
        texel_normals = np.einsum("kc,kcd->kd", bary, np.asarray(normals)[uv_mesh.faces[face]])
    image = np.ones((size, size, 3), np.float32)
    filled = np.zeros((size, size), bool)
    colors = _colors_at(field, points, texel_normals, device, progress, "baking texture", projector)
    if rows.shape[0]:
        image[rows, cols] = colors
        filled[rows, cols] = True
    image = dilate_texture(image, filled, device=device)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def vertex_colors(
    field,
    vertices: np.ndarray,
    device,
    progress=None,
    projector: ViewProjector | None = None,
    normals: np.ndarray | None = None,
) -> np.ndarray:
    """(V, 4) uint8 RGBA colours at the vertices (the no-UV fallback and the .ply output); from
    the views when ``projector`` is given (with the unit vertex ``normals``)."""
    if projector is not None and normals is None:
        raise ValueError("colouring from the views needs the vertex normals")
    colors = _colors_at(field, np.asarray(vertices), normals, device, progress, "vertex colours", projector)
    rgb = np.clip(np.rint(colors * 255.0), 0, 255).astype(np.uint8)
    return np.concatenate([rgb, np.full((rgb.shape[0], 1), 255, np.uint8)], axis=1)
