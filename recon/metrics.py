"""Geometry and image metrics: small pure functions with precise definitions.

Mesh metrics (``mesh_metrics`` bundles them, as ``sd3d eval mesh`` prints them):

* **Chamfer distance**: sample ``n`` points area-uniformly on each mesh's surface (same seed for
  both, so a mesh compared with itself scores exactly 0), take the Euclidean distance from every
  point to the nearest point of the *other* sample set (distances, not squared), average each
  direction, and average the two directions: ``(mean d(P->G) + mean d(G->P)) / 2``.
* **F-score at tau**: precision = fraction of predicted samples with ``d(P->G) < tau``, recall =
  fraction of ground-truth samples with ``d(G->P) < tau``, ``F = 2PR / (P + R)`` (0 when both are 0).
* **Normal angle error** (:func:`normal_angle_error`, not in ``mesh_metrics``): the mean angle between
  the face normals of the two surfaces at matched points (each sample's nearest point on the other
  surface), averaged over both directions like Chamfer; unoriented by default.
* **Volume IoU**: occupancy of each mesh on the centres of an ``n^3`` grid over ``[-b, b]^3``
  (default 128 over [-0.6, 0.6]), ``|A and B| / |A or B|``. A point is inside when the absolute
  generalized winding number of the mesh at it is ``>= 0.5`` (absolute, so a globally inverted mesh
  still counts). The winding number tolerates open meshes: a sphere with a missing face is still
  ~1 inside.

Image metrics on images composited on white, float in [0, 1], shape (H, W, C):

* **PSNR**: ``10 log10(1 / MSE)`` with the MSE over all pixels and channels of one image.
* **SSIM**: Gaussian window 11, sigma 1.5, k1 0.01, k2 0.03, images reflect-padded by 5 so the SSIM
  map has the image's size, variances clamped at 0, mean over the map (all channels), data range
  inferred as ``max(ptp(pred), ptp(gt))`` unless given -- torchmetrics' (1.9)
  ``structural_similarity_index_measure`` defaults, which SyncDreamer's ``eval_nvs.py`` used.

How the winding number is computed exactly yet fast on a grid: for a *closed* oriented surface the
winding number at ``p`` is an integer, the signed count of surface crossings along any ray from
``p`` (+1 where the ray leaves through a face whose normal points along it, -1 where it enters).
Crossings along the grid's +z columns are found per triangle with a 2-D point-in-triangle test, so
all ``n^3`` points cost about as much as rasterising the mesh once. An open mesh ``M`` is first
closed by a cone ``C`` from a point ``o`` over each boundary loop (``dC = -dM``), and then
``w_M(p) = crossings_{M+C}(p) - Omega_C(p) / 4 pi`` with ``Omega_C`` the solid angle of the cone's
few triangles: the same value as summing every triangle's solid angle. ``Omega_C`` is summed
exactly near the cone and interpolated from a coarser grid away from it, where it is smooth
(max error ~0.005 in tests, far below the 0.5 threshold).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import trimesh
from scipy.ndimage import maximum_filter
from scipy.spatial import cKDTree

# ------------------------------------------------------------------------------------------------
# surface samples, Chamfer, F-score
# ------------------------------------------------------------------------------------------------


EVAL_SEED = 0
"""The point-sampling seed of the metrics: fixed (not the generation seed), so scores stay comparable
across runs and with the figures recorded in benchmarks/RESULTS.md."""


def sample_surface(
    vertices: np.ndarray, faces: np.ndarray, num_samples: int, seed: int = EVAL_SEED
) -> np.ndarray:
    """``num_samples`` points distributed uniformly by area on a triangle mesh (float64, (n, 3)).

    Faces are drawn with probability proportional to their area, points uniformly inside each
    face (``1 - sqrt(u)`` barycentric trick). Uses only ``numpy.random.default_rng(seed)``.
    """
    return sample_surface_faces(vertices, faces, num_samples, seed)[0]


def sample_surface_faces(
    vertices: np.ndarray, faces: np.ndarray, num_samples: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sample_surface`'s points and the index of the face each lies on (same draws)."""
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    if len(f) == 0:
        raise ValueError("cannot sample the surface of a mesh without faces")
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    areas = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    total = areas.sum()
    if not total > 0:
        raise ValueError("cannot sample the surface of a mesh with zero area")
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(areas) / total
    idx = np.minimum(np.searchsorted(cdf, rng.random(num_samples), side="right"), len(f) - 1)
    r1 = np.sqrt(rng.random(num_samples))
    r2 = rng.random(num_samples)
    w0, w1, w2 = 1.0 - r1, r1 * (1.0 - r2), r1 * r2
    return w0[:, None] * a[idx] + w1[:, None] * b[idx] + w2[:, None] * c[idx], idx


def nearest_distances(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Euclidean distance from each query point to its nearest reference point (KD-tree)."""

    dist, _ = cKDTree(np.asarray(reference, np.float64)).query(np.asarray(query, np.float64), k=1)
    return dist


def chamfer_distance(pred_points: np.ndarray, gt_points: np.ndarray) -> float:
    """``(mean d(pred->gt) + mean d(gt->pred)) / 2`` with unsquared nearest-neighbour distances."""
    d_pg = nearest_distances(pred_points, gt_points)
    d_gp = nearest_distances(gt_points, pred_points)
    return float(0.5 * (d_pg.mean() + d_gp.mean()))


def fscore_from_distances(d_pred_to_gt: np.ndarray, d_gt_to_pred: np.ndarray, threshold: float) -> float:
    """F-score at ``threshold``: harmonic mean of precision ``P(d_pg < t)`` and recall ``P(d_gp < t)``."""
    precision = float(np.mean(d_pred_to_gt < threshold))
    recall = float(np.mean(d_gt_to_pred < threshold))
    if precision + recall == 0.0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


# ------------------------------------------------------------------------------------------------
# generalized winding number
# ------------------------------------------------------------------------------------------------


def weld_vertices(
    vertices: np.ndarray, faces: np.ndarray, decimals: int = 9
) -> tuple[np.ndarray, np.ndarray]:
    """Merge vertices at the same position (rounded to ``decimals``) so UV/normal seams are not holes."""
    v = np.asarray(vertices, np.float64)
    key = np.round(v, decimals)
    uniq, inverse = np.unique(key, axis=0, return_inverse=True)
    first = np.zeros(len(uniq), np.int64)
    first[inverse[::-1]] = np.arange(len(v))[::-1]
    f = inverse.reshape(-1)[np.asarray(faces, np.int64)]
    keep = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 2] != f[:, 0])
    return v[first], f[keep]


def boundary_edges(faces: np.ndarray) -> np.ndarray:
    """Directed boundary edges (m, 2) of an oriented triangle mesh, with multiplicity.

    Every face contributes its edges a->b, b->c, c->a; an interior edge shared by two consistently
    oriented faces cancels (a->b + b->a = 0). What is left is the boundary chain; an edge used twice
    in the same direction (inconsistent orientation) is left twice.
    """
    f = np.asarray(faces, np.int64)
    e = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    lo, hi = np.minimum(e[:, 0], e[:, 1]), np.maximum(e[:, 0], e[:, 1])
    sign = np.where(e[:, 0] < e[:, 1], 1, -1)
    keys, inverse = np.unique(np.stack([lo, hi], 1), axis=0, return_inverse=True)
    net = np.zeros(len(keys), np.int64)
    np.add.at(net, inverse.reshape(-1), sign)
    mask = net != 0
    keys, net = keys[mask], net[mask]
    directed = np.where((net > 0)[:, None], keys, keys[:, ::-1])
    return np.repeat(directed, np.abs(net), axis=0)


def closing_cone(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triangles ``(o, b, a)`` for each boundary edge ``a->b``: a cone whose boundary cancels the mesh's.

    Returns the cone's corners (k, 3, 3) and, row by row, the rim edge ``(a, b)`` (k, 2) it was built
    on and the index of its boundary loop (k,) (all empty for a closed mesh). The apex ``o`` of each boundary loop is the mean of that
    loop's vertices (any apex is correct; a nearby one keeps the cone small).
    """
    edges = boundary_edges(faces)
    if len(edges) == 0:
        return np.zeros((0, 3, 3)), np.zeros((0, 2), np.int64), np.zeros(0, np.int64)
    v = np.asarray(vertices, np.float64)
    # group edges into connected loops (union-find over the edges' vertex ids)
    parent = {int(i): int(i) for i in np.unique(edges)}

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in edges:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[ra] = rb
    loop = np.array([find(int(a)) for a in edges[:, 0]])
    tris, rims, ids = [], [], []
    for number, root in enumerate(np.unique(loop)):
        e = edges[loop == root]
        apex = v[np.unique(e)].mean(axis=0)
        tris.append(np.stack([np.broadcast_to(apex, (len(e), 3)), v[e[:, 1]], v[e[:, 0]]], axis=1))
        rims.append(e)
        ids.append(np.full(len(e), number))
    return np.concatenate(tris), np.concatenate(rims), np.concatenate(ids)


def triangle_solid_angles(points: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """Signed solid angle of a set of triangles seen from each point, summed over triangles: (P,).

    Van Oosterom & Strackee: ``tan(Omega/2) = A.(BxC) / (|A||B||C| + (A.B)|C| + (A.C)|B| + (B.C)|A|)``
    with ``A, B, C`` the corners relative to the point. Positive when the point is on the side the
    (right-handed) normal points away from, so a closed outward mesh gives ``4 pi`` inside.
    One vectorised pass over the points per triangle: memory stays O(P) for any number of triangles.
    """
    x, y, z = points.unbind(-1)
    total = torch.zeros_like(x)
    for tri in triangles:
        ax, ay, az = tri[0, 0] - x, tri[0, 1] - y, tri[0, 2] - z
        bx, by, bz = tri[1, 0] - x, tri[1, 1] - y, tri[1, 2] - z
        cx, cy, cz = tri[2, 0] - x, tri[2, 1] - y, tri[2, 2] - z
        la = torch.sqrt(ax * ax + ay * ay + az * az)
        lb = torch.sqrt(bx * bx + by * by + bz * bz)
        lc = torch.sqrt(cx * cx + cy * cy + cz * cz)
        num = ax * (by * cz - bz * cy) + ay * (bz * cx - bx * cz) + az * (bx * cy - by * cx)
        den = (
            la * lb * lc
            + (ax * bx + ay * by + az * bz) * lc
            + (ax * cx + ay * cy + az * cz) * lb
            + (bx * cx + by * cy + bz * cz) * la
        )
        total += 2.0 * torch.atan2(num, den)
    return total


def winding_numbers_bruteforce(vertices: np.ndarray, faces: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Generalized winding number at ``points`` as the plain sum of every triangle's solid angle / 4 pi.

    O(points x faces): the reference definition, used to test :func:`winding_numbers_grid`.
    """
    v = np.asarray(vertices, np.float64)
    tris = torch.from_numpy(v[np.asarray(faces, np.int64)])
    pts = torch.from_numpy(np.asarray(points, np.float64))
    return (triangle_solid_angles(pts, tris) / (4.0 * math.pi)).numpy()


def grid_centres(resolution: int, bound: float) -> np.ndarray:
    """Coordinates of the cell centres of ``resolution`` cells over ``[-bound, bound]`` (one axis)."""
    h = 2.0 * bound / resolution
    return -bound + (np.arange(resolution) + 0.5) * h


# A tiny irrational shift of the +z rays (in cell units) so that rays through mesh vertices or
# along edges placed exactly on grid coordinates do not happen in practice.
_RAY_JITTER = (math.sqrt(2.0) * 1e-6, math.sqrt(3.0) * 1e-6)


def _edge_function(p0x, p0y, p1x, p1y, i0, i1, qx, qy):
    """Whether ``q`` is inside (left) of the directed edge i0->i1 of a counter-clockwise triangle.

    The edge function is computed from the lower vertex id and negated exactly where that reversed
    the edge, so the two faces sharing an edge get the same number with opposite signs. ``e == 0``
    is decided as if ``q`` moved by ``(eps, eps^2)`` (simulation of simplicity): a ray exactly
    through a shared edge or vertex is counted once.
    """
    swap = i0 > i1
    ax, ay = np.where(swap, p1x, p0x), np.where(swap, p1y, p0y)
    bx, by = np.where(swap, p0x, p1x), np.where(swap, p0y, p1y)
    sign = np.where(swap, -1.0, 1.0)
    dx, dy = sign * (bx - ax), sign * (by - ay)
    e = dx * (qy - ay) - dy * (qx - ax)
    return (e > 0) | ((e == 0) & ((dy < 0) | ((dy == 0) & (dx > 0))))


def _crossing_counts(
    tris_xyz: np.ndarray, tri_ids: np.ndarray, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray
) -> np.ndarray:
    """Signed crossing count along +z for every grid point: (n, n, n) int, indices (ix, iy, iz).

    ``tris_xyz`` (F, 3, 3) triangle corners, ``tri_ids`` (F, 3) vertex ids used for consistent
    edge tests, ``xs``/``ys`` the rays' x and y coordinates (evenly spaced), ``zs`` the grid's z.
    """
    n = len(xs)
    hist = np.zeros((n, n, n + 1), np.int64)
    if len(tris_xyz) == 0:
        return hist[..., :n]
    x0, y0, step = xs[0], ys[0], xs[1] - xs[0]
    px, py, pz = tris_xyz[..., 0], tris_xyz[..., 1], tris_xyz[..., 2]
    area2 = (px[:, 1] - px[:, 0]) * (py[:, 2] - py[:, 0]) - (px[:, 2] - px[:, 0]) * (py[:, 1] - py[:, 0])
    keep = area2 != 0
    px, py, pz, ids, area2 = px[keep], py[keep], pz[keep], tri_ids[keep], area2[keep]
    # orient every projected triangle counter-clockwise; the crossing sign is the normal's z sign
    sign = np.where(area2 > 0, 1, -1)
    flip = area2 < 0
    for arr in (px, py, pz, ids):
        tmp = arr[flip, 1].copy()
        arr[flip, 1] = arr[flip, 2]
        arr[flip, 2] = tmp
    i_lo = np.clip(np.ceil((px.min(1) - x0) / step), 0, n).astype(np.int64)
    i_hi = np.clip(np.floor((px.max(1) - x0) / step), -1, n - 1).astype(np.int64)
    j_lo = np.clip(np.ceil((py.min(1) - y0) / step), 0, n).astype(np.int64)
    j_hi = np.clip(np.floor((py.max(1) - y0) / step), -1, n - 1).astype(np.int64)
    wi, wj = np.maximum(i_hi - i_lo + 1, 0), np.maximum(j_hi - j_lo + 1, 0)
    counts = wi * wj
    # bound the temporary arrays: process triangles in groups of ~4M candidate columns
    order_end = np.cumsum(counts)
    start = 0
    budget = 4_000_000
    while start < len(counts):
        stop = int(np.searchsorted(order_end, (order_end[start - 1] if start else 0) + budget, side="right"))
        stop = max(stop, start + 1)
        sl = slice(start, stop)
        c = counts[sl]
        t = np.repeat(np.arange(start, stop), c)
        if len(t):
            local = np.arange(len(t)) - np.repeat(np.cumsum(c) - c, c)
            ci = i_lo[t] + local % wi[t]
            cj = j_lo[t] + local // wi[t]
            qx, qy = xs[ci], ys[cj]
            tx, ty, tid = px[t], py[t], ids[t]
            inside = (
                _edge_function(tx[:, 0], ty[:, 0], tx[:, 1], ty[:, 1], tid[:, 0], tid[:, 1], qx, qy)
                & _edge_function(tx[:, 1], ty[:, 1], tx[:, 2], ty[:, 2], tid[:, 1], tid[:, 2], qx, qy)
                & _edge_function(tx[:, 2], ty[:, 2], tx[:, 0], ty[:, 0], tid[:, 2], tid[:, 0], qx, qy)
            )
            t, ci, cj, qx, qy = t[inside], ci[inside], cj[inside], qx[inside], qy[inside]
            tx, ty, tz = px[t], py[t], pz[t]
            # barycentric z of the hit
            d = (ty[:, 1] - ty[:, 2]) * (tx[:, 0] - tx[:, 2]) + (tx[:, 2] - tx[:, 1]) * (ty[:, 0] - ty[:, 2])
            l0 = ((ty[:, 1] - ty[:, 2]) * (qx - tx[:, 2]) + (tx[:, 2] - tx[:, 1]) * (qy - ty[:, 2])) / d
            l1 = ((ty[:, 2] - ty[:, 0]) * (qx - tx[:, 2]) + (tx[:, 0] - tx[:, 2]) * (qy - ty[:, 2])) / d
            zh = l0 * tz[:, 0] + l1 * tz[:, 1] + (1.0 - l0 - l1) * tz[:, 2]
            # grid points strictly below the hit (z_k < zh) are crossed by the hit
            k = np.searchsorted(zs, zh, side="left")
            np.add.at(hist, (ci, cj, k), sign[t])
        start = stop
    # w[k] = sum of signs of hits above z_k = sum over bins m > k  (bin m holds hits in (z_{m-1}, z_m])
    above = np.cumsum(hist[..., ::-1], axis=-1)[..., ::-1]
    return above[..., 1:]


def _interp_index(n: int, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every index 0..n-1: the lower bracketing node (position in ``nodes``) and the weight of
    the upper one, for linear interpolation from values at the node indices."""
    j = np.clip(np.searchsorted(nodes, np.arange(n), side="right") - 1, 0, len(nodes) - 2)
    return j, (np.arange(n) - nodes[j]) / (nodes[j + 1] - nodes[j])


def _interp_matrix(n: int, nodes: np.ndarray) -> np.ndarray:
    """(n, len(nodes)) linear-interpolation weights from the node indices to every index 0..n-1."""
    j, t = _interp_index(n, nodes)
    w = np.zeros((n, len(nodes)))
    w[np.arange(n), j] = 1.0 - t
    w[np.arange(n), j + 1] = t
    return w


def _trilinear_at(values: np.ndarray, j: np.ndarray, t: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of coarse ``values`` at fine grid indices ``idx`` (m, 3)."""
    ja, jb, jc = j[idx[:, 0]], j[idx[:, 1]], j[idx[:, 2]]
    ta, tb, tc = t[idx[:, 0]], t[idx[:, 1]], t[idx[:, 2]]
    out = np.zeros(len(idx))
    for da, wa in ((0, 1.0 - ta), (1, ta)):
        for db, wb in ((0, 1.0 - tb), (1, tb)):
            for dc, wc in ((0, 1.0 - tc), (1, tc)):
                out += wa * wb * wc * values[ja + da, jb + db, jc + dc]
    return out


def _near_cone_points(cone: np.ndarray, x0: np.ndarray, step: float, n: int, radius: float) -> np.ndarray:
    """Indices (m, 3) of the grid points within (at least) ``radius`` of the cone triangles.

    Samples spaced <= one cell on every triangle are marked in a sub-grid around the cone, then
    grown by a cube of half-size ``radius`` + one cell (a conservative distance test).
    """

    half = int(math.ceil(radius / step)) + 1
    lo = np.clip(np.floor((cone.reshape(-1, 3).min(0) - x0) / step).astype(np.int64) - half, 0, n)
    hi = np.clip(np.ceil((cone.reshape(-1, 3).max(0) - x0) / step).astype(np.int64) + half + 1, 0, n)
    if np.any(hi <= lo):
        return np.zeros((0, 3), np.int64)
    mark = np.zeros(tuple(hi - lo), bool)
    lengths = np.linalg.norm(cone - np.roll(cone, 1, axis=1), axis=-1).max(axis=1)
    splits = np.ceil(lengths / step).astype(np.int64).clip(1)
    for k in np.unique(splits):
        i, j = np.meshgrid(np.arange(k + 1), np.arange(k + 1), indexing="ij")
        keep = i + j <= k
        bary = np.stack([k - i[keep] - j[keep], i[keep], j[keep]], 1) / k  # (S, 3)
        pts = np.einsum("sc,tcd->tsd", bary, cone[splits == k]).reshape(-1, 3)
        idx = np.rint((pts - x0) / step).astype(np.int64) - lo
        idx = idx[np.all((idx >= 0) & (idx < hi - lo), axis=1)]
        mark[idx[:, 0], idx[:, 1], idx[:, 2]] = True
    mark = maximum_filter(mark, size=2 * half + 1, mode="constant")
    return np.argwhere(mark) + lo


def _cone_term(
    cone: np.ndarray, loops: np.ndarray, rx: np.ndarray, ry: np.ndarray, zs: np.ndarray, coarse_stride: int
) -> np.ndarray:
    """``Omega_C / 4 pi`` of the closing cone at every grid point, (n, n, n).

    Each boundary loop's cone is summed exactly at the grid points near it; elsewhere its
    contribution is trilinearly interpolated from exact values on a grid ``coarse_stride`` times
    coarser. "Near" is wider than a coarse cell's diagonal, so no interpolation cell used touches
    that cone and the interpolated function is harmonic (smooth) there; the error is far below the
    0.5 decision threshold (tested against the exact sum).
    """
    n = len(rx)
    if coarse_stride <= 1 or n < 4 * coarse_stride:
        gx, gy, gz = np.meshgrid(rx, ry, zs, indexing="ij")
        pts = torch.from_numpy(np.stack([gx, gy, gz], -1).reshape(-1, 3))
        return (triangle_solid_angles(pts, torch.from_numpy(cone)) / (4.0 * math.pi)).numpy().reshape(n, n, n)
    nodes = np.unique(np.r_[np.arange(0, n, coarse_stride), n - 1])
    weights = _interp_matrix(n, nodes)
    j_lo, t_hi = _interp_index(n, nodes)
    gx, gy, gz = np.meshgrid(rx[nodes], ry[nodes], zs[nodes], indexing="ij")
    coarse_pts = torch.from_numpy(np.stack([gx, gy, gz], -1).reshape(-1, 3))
    coarse_shape = (len(nodes),) * 3
    coarse_total = np.zeros(coarse_shape)
    step = zs[1] - zs[0]
    origin = np.array([rx[0], ry[0], zs[0]])
    corrections = []
    for loop in np.unique(loops):
        tris = cone[loops == loop]
        tris_t = torch.from_numpy(tris)
        coarse = (triangle_solid_angles(coarse_pts, tris_t) / (4.0 * math.pi)).numpy().reshape(coarse_shape)
        coarse_total += coarse
        near = _near_cone_points(tris, origin, step, n, math.sqrt(3.0) * coarse_stride * step)
        if len(near) == 0:
            continue
        pts = torch.from_numpy(np.stack([rx[near[:, 0]], ry[near[:, 1]], zs[near[:, 2]]], -1))
        exact = (triangle_solid_angles(pts, tris_t) / (4.0 * math.pi)).numpy()
        # this loop's interpolated value at the near points, to be swapped for the exact one
        interp = _trilinear_at(coarse, j_lo, t_hi, near)
        corrections.append((near, exact - interp))
    term = np.einsum("ia,abc->ibc", weights, coarse_total)
    term = np.einsum("jb,ibc->ijc", weights, term)
    term = np.einsum("kc,ijc->ijk", weights, term)
    for near, delta in corrections:
        np.add.at(term, (near[:, 0], near[:, 1], near[:, 2]), delta)
    return term


def winding_numbers_grid(
    vertices: np.ndarray, faces: np.ndarray, resolution: int = 128, bound: float = 0.6, coarse_stride: int = 4
) -> np.ndarray:
    """Generalized winding number of a mesh at the cell centres of a ``resolution^3`` grid.

    Returns float64 (n, n, n) indexed ``[ix, iy, iz]``; see the module docstring for the method.
    Closed meshes: exact, the cost of one 2-D rasterisation of the mesh. Open meshes: the closing
    cone's solid angle is summed exactly near the cone and interpolated from a grid
    ``coarse_stride`` times coarser elsewhere (``coarse_stride=1``: exact everywhere, and slow: one
    solid-angle pass per boundary edge).
    """
    v, f = weld_vertices(vertices, faces)
    xs = grid_centres(resolution, bound)
    cone, rims, loops = closing_cone(v, f)
    tris = v[f]
    ids = f
    if len(cone):
        # cone triangles' rims reuse the mesh's vertex ids (consistent edge tests along the rim);
        # each loop's apex is one new vertex
        _, apex_group = np.unique(cone[:, 0], axis=0, return_inverse=True)
        cone_ids = np.stack([len(v) + apex_group.reshape(-1), rims[:, 1], rims[:, 0]], 1)
        tris = np.concatenate([tris, cone])
        ids = np.concatenate([ids, cone_ids])
    # the rays (and so the query points) are shifted by a tiny jitter in x and y
    rx = xs + _RAY_JITTER[0] * (xs[1] - xs[0])
    ry = xs + _RAY_JITTER[1] * (xs[1] - xs[0])
    w = _crossing_counts(tris, ids, rx, ry, xs).astype(np.float64)
    if len(cone):
        w -= _cone_term(cone, loops, rx, ry, xs, coarse_stride)
    return w


def occupancy_grid(
    vertices: np.ndarray, faces: np.ndarray, resolution: int = 128, bound: float = 0.6
) -> np.ndarray:
    """Boolean (n, n, n) inside mask: ``|winding number| >= 0.5`` at the grid's cell centres."""
    return np.abs(winding_numbers_grid(vertices, faces, resolution, bound)) >= 0.5


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """``|a and b| / |a or b|`` of two boolean arrays (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)


def volume_iou(pred, gt, resolution: int = 128, bound: float = 0.6) -> float:
    """Volume IoU of two ``trimesh.Trimesh`` on a ``resolution^3`` grid over ``[-bound, bound]^3``."""
    occ_p = occupancy_grid(pred.vertices, pred.faces, resolution, bound)
    occ_g = occupancy_grid(gt.vertices, gt.faces, resolution, bound)
    return iou(occ_p, occ_g)


def mesh_metrics(
    pred, gt, *, num_samples: int = 100_000, seed: int = EVAL_SEED, grid: int = 128
) -> dict[str, float]:
    """Chamfer, F-score at 0.01 and 0.02, and volume IoU of ``pred`` against ``gt`` (trimesh meshes).

    Both meshes must be in the same frame (ours: the unit cube, +Z up). Definitions in the module
    docstring; ``num_samples`` surface points per mesh with ``seed``, IoU on a ``grid^3`` grid over
    ``[-0.6, 0.6]^3``. Keys: ``chamfer``, ``fscore_0.01``, ``fscore_0.02``, ``volume_iou``.
    """
    p = sample_surface(pred.vertices, pred.faces, num_samples, seed)
    g = sample_surface(gt.vertices, gt.faces, num_samples, seed)
    d_pg = nearest_distances(p, g)
    d_gp = nearest_distances(g, p)
    return {
        "chamfer": float(0.5 * (d_pg.mean() + d_gp.mean())),
        "fscore_0.01": fscore_from_distances(d_pg, d_gp, 0.01),
        "fscore_0.02": fscore_from_distances(d_pg, d_gp, 0.02),
        "volume_iou": volume_iou(pred, gt, resolution=grid, bound=0.6),
    }


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit normals (F, 3) (right-handed corner order) and areas (F,) of a triangle mesh."""
    tri = np.asarray(vertices, np.float64)[np.asarray(faces, np.int64)]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    length = np.linalg.norm(n, axis=1)
    return n / np.maximum(length, 1e-300)[:, None], 0.5 * length


def closest_faces(
    points: np.ndarray, vertices: np.ndarray, faces: np.ndarray, *, candidates: int = 8, seed: int = 0
) -> np.ndarray:
    """Index of the face of a mesh nearest to each point (F-indexed, (n,)).

    Exact among candidates: the faces of the ``candidates`` nearest of a reference set (every face's
    centroid plus as many area-uniform surface samples as there are points), by the exact
    point-triangle distance (``trimesh.triangles.closest_point``). The true nearest face is among
    them unless a query point is much farther from the mesh than the reference spacing and many
    faces are equally near; then the nearest candidate is a face at nearly the same distance.
    """
    v = np.asarray(vertices, np.float64)
    f = np.asarray(faces, np.int64)
    pts = np.asarray(points, np.float64)
    _, areas = face_normals(v, f)
    valid = np.flatnonzero(areas > 0)
    samples, sample_faces = sample_surface_faces(v, f, len(pts), seed)
    ref = np.concatenate([v[f[valid]].mean(1), samples])
    ref_face = np.concatenate([valid, sample_faces])
    k = min(candidates, len(ref))
    _, nn = cKDTree(ref).query(pts, k=k)
    cand = ref_face[np.asarray(nn).reshape(len(pts), k)]
    tri = v[f[cand.reshape(-1)]]
    closest = trimesh.triangles.closest_point(tri, np.repeat(pts, k, axis=0))
    dist = np.linalg.norm(closest - np.repeat(pts, k, axis=0), axis=1).reshape(len(pts), k)
    return cand[np.arange(len(pts)), dist.argmin(1)]


def normal_angle_error(
    pred, gt, *, num_samples: int = 100_000, seed: int = 0, oriented: bool = False, candidates: int = 8
) -> float:
    """Mean angle (degrees) between the surfaces' normals at matched points, both ways, averaged.

    ``num_samples`` area-uniform points on each mesh (``seed``, as :func:`mesh_metrics`); each
    point is matched to the nearest point of the other surface (:func:`closest_faces`) and the angle
    between the two faces' normals is taken. The result is ``(mean over pred points + mean over gt
    points) / 2``: 0 for identical surfaces, and it measures surface noise and wrong orientation of
    details that Chamfer distance barely sees. ``oriented=False`` (default) compares normals as lines
    (angles in [0, 90]): open surfaces and thin sheets have no consistent outside, and a point on one
    face of a thin slab may match the other face. ``pred``/``gt``: meshes with ``vertices``/``faces``.
    """

    def one_way(src, dst) -> float:
        pts, src_face = sample_surface_faces(src.vertices, src.faces, num_samples, seed)
        n_src = face_normals(src.vertices, src.faces)[0][src_face]
        n_dst = face_normals(dst.vertices, dst.faces)[0][
            closest_faces(pts, dst.vertices, dst.faces, candidates=candidates, seed=seed)
        ]
        cos = np.einsum("ij,ij->i", n_src, n_dst)
        sin = np.linalg.norm(np.cross(n_src, n_dst), axis=1)
        # atan2 keeps small angles accurate (arccos of a cosine near 1 does not) and 0 exact
        angle = np.degrees(np.arctan2(sin, np.abs(cos) if not oriented else cos))
        return float(angle.mean())

    return 0.5 * (one_way(pred, gt) + one_way(gt, pred))


# ------------------------------------------------------------------------------------------------
# image metrics
# ------------------------------------------------------------------------------------------------


def psnr(pred: np.ndarray, gt: np.ndarray) -> float:
    """``10 log10(1 / MSE)`` for images in [0, 1]; MSE over all pixels and channels (inf if equal)."""
    mse = float(np.mean((np.asarray(pred, np.float64) - np.asarray(gt, np.float64)) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def _gaussian_kernel(size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    """The normalised 1-D Gaussian; the 2-D window is its outer product with itself."""
    x = torch.arange(size, dtype=dtype) - (size - 1) / 2.0
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def ssim(
    pred: np.ndarray,
    gt: np.ndarray,
    data_range: float | None = None,
    kernel_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Mean SSIM of one (H, W, C) or (H, W) image pair in [0, 1] (torchmetrics' defaults; see module doc)."""
    p = torch.as_tensor(np.asarray(pred, np.float64))
    g = torch.as_tensor(np.asarray(gt, np.float64))
    if p.shape != g.shape:
        raise ValueError(f"image shapes differ: {tuple(p.shape)} vs {tuple(g.shape)}")
    if p.ndim == 2:
        p, g = p[..., None], g[..., None]
    p, g = p.permute(2, 0, 1)[None], g.permute(2, 0, 1)[None]
    if data_range is None:
        data_range = float(max(p.max() - p.min(), g.max() - g.min()))
    channels = p.shape[1]
    pad = (kernel_size - 1) // 2
    p = torch.nn.functional.pad(p, (pad, pad, pad, pad), mode="reflect")
    g = torch.nn.functional.pad(g, (pad, pad, pad, pad), mode="reflect")
    # the Gaussian window is separable: a column pass then a row pass is the 2-D filter (to ~1e-15)
    # at a tenth of the cost
    k = _gaussian_kernel(kernel_size, sigma, p.dtype)
    stats = torch.cat([p, g, p * p, g * g, p * g])
    stats = torch.nn.functional.conv2d(stats, k.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    stats = torch.nn.functional.conv2d(stats, k.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    mu_p, mu_g, e_pp, e_gg, e_pg = stats
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    var_p = torch.clamp(e_pp - mu_p**2, min=0.0)
    var_g = torch.clamp(e_gg - mu_g**2, min=0.0)
    cov = e_pg - mu_p * mu_g
    ssim_map = ((2 * mu_p * mu_g + c1) * (2 * cov + c2)) / ((mu_p**2 + mu_g**2 + c1) * (var_p + var_g + c2))
    return float(ssim_map.mean())


def silhouette_iou(alpha_a: np.ndarray, alpha_b: np.ndarray) -> float:
    """Soft IoU of two coverage masks in [0, 1]: ``sum(min(a, b)) / sum(max(a, b))`` (1.0 if both empty)."""
    a = np.asarray(alpha_a, np.float64)
    b = np.asarray(alpha_b, np.float64)
    union = np.maximum(a, b).sum()
    return 1.0 if union == 0 else float(np.minimum(a, b).sum() / union)
