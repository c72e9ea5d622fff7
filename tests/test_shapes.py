"""Procedural benchmark shapes: the topology, sizes and colours their docstrings claim."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from recon import shapes
from recon.metrics import boundary_edges, closing_cone


@pytest.fixture(scope="module", params=sorted(shapes.SHAPES))
def shape(request) -> shapes.Shape:
    return shapes.make_shape(request.param)


def test_topology_is_as_claimed(shape):
    mesh = trimesh.Trimesh(shape.vertices, shape.faces, process=False)
    assert mesh.is_watertight == shape.watertight
    assert mesh.euler_number == shape.euler  # V - E + F: 2 sphere-like, 0 one handle, 1 a disk
    assert mesh.body_count == 1 and mesh.is_winding_consistent
    if shape.watertight:
        assert mesh.volume > 0  # outward faces
    else:
        _, _, loops = closing_cone(shape.vertices, shape.faces)
        assert len(np.unique(loops)) == 1  # one boundary loop
    assert (len(boundary_edges(shape.faces)) == 0) == shape.watertight


def test_normalised_and_colourful(shape):
    lo, hi = shape.vertices.min(0), shape.vertices.max(0)
    assert (hi - lo).max() == pytest.approx(1.0, abs=1e-12)
    assert np.abs(lo + hi).max() < 1e-12
    assert shape.colors.shape == shape.vertices.shape
    assert shape.colors.max() <= 0.9 + 1e-12 and shape.colors.min(1).max() < 0.25  # never near white
    assert np.ptp(shape.colors, axis=0).min() > 0.5  # many hues
    render = shape.render_mesh()
    assert np.array_equal(render.vertex_colors, shape.colors)


def test_blade_has_the_stated_thickness():
    blade = shapes.blade()
    half = len(blade.vertices) // 2  # top surface first, then the bottom one
    bottom_faces = blade.faces[(blade.faces >= half).all(1)]
    top = blade.vertices[:half][::37]
    tris = blade.vertices[bottom_faces]
    # distance from each sampled top vertex to the nearest bottom triangle
    dist = np.array(
        [
            np.linalg.norm(
                trimesh.triangles.closest_point(tris, np.repeat(p[None], len(tris), 0)) - p, axis=1
            ).min()
            for p in top
        ]
    )
    extent = 1.0 + 0.02 * 0.35 / np.hypot(1.0, 0.35)  # the offset faces overhang at the tips
    assert dist.min() == pytest.approx(0.02 / extent, rel=0.01) and dist.max() == pytest.approx(
        0.02 / extent, rel=0.01
    )


def test_cup_is_deep():
    cup = shapes.cup()
    axis = np.hypot(cup.vertices[:, 0], cup.vertices[:, 1]) < 1e-9
    floor = np.sort(cup.vertices[axis, 2])  # outer and inner bottom centres
    rim = cup.vertices[:, 2].max()
    top = cup.vertices[np.abs(cup.vertices[:, 2] - rim) < 1e-9]
    opening = 2 * np.hypot(top[:, 0], top[:, 1]).min()
    assert (rim - floor[-1]) / opening == pytest.approx(0.74 / 0.54, rel=1e-6)
