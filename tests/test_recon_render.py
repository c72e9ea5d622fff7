"""Rays, visual hull, occupancy band and NeuS compositing, checked on an analytic sphere."""

from __future__ import annotations

import math

import numpy as np
import torch

from recon.hull import visual_hull
from recon.render import OccupancyGrid, camera_rays, neus_alpha, render_rays, render_samples, sample_rays
from sd3d.core.cameras import orbit_camera, target_cameras

# The reconstruction's hull: dilated masks, one miss allowed, one voxel of slack.
GENEROUS = {"dilate_px": 3, "allowed_misses": 1, "dilate_voxels": 1}

CPU = torch.device("cpu")
RADIUS = 0.3


class _SphereSDF:
    """A stand-in for the SDF network: exact sphere distance, unit gradient, constant feature."""

    def __call__(self, x, with_grad=True):
        n = x.norm(dim=-1, keepdim=True)
        return n[:, 0] - RADIUS, torch.zeros(x.shape[0], 4), x / n.clamp_min(1e-9)

    def sdf(self, x):
        return x.norm(dim=-1) - RADIUS


class _SphereField:
    sdf_net = _SphereSDF()

    def color_net(self, feat, normal, d):
        return torch.full((feat.shape[0], 3), 0.25)

    def inv_s(self):
        return torch.tensor(2000.0)


def _sphere_masks(cameras, size):
    """Exact silhouettes: a pixel is covered when its centre ray hits the sphere."""
    masks = []
    for cam in cameras:
        o, d = camera_rays(cam)
        b = (o * d).sum(-1)
        c = (o * o).sum(-1) - RADIUS**2
        masks.append((b * b - c > 0).astype(np.float32))
    return np.stack(masks)


def test_rays_go_through_pixel_centres():
    cam = orbit_camera(30.0, 45.0, 1.5, size=64)
    origins, dirs = camera_rays(cam)
    assert np.allclose(origins, cam.center)
    assert np.allclose(np.linalg.norm(dirs, axis=-1), 1.0, atol=1e-6)
    for row, col in [(0, 0), (10, 50), (63, 63)]:
        uv, z = cam.project((origins[row, col] + 0.7 * dirs[row, col])[None].astype(np.float64))
        assert np.allclose(uv[0], [col + 0.5, row + 0.5], atol=1e-4) and z[0] > 0
    # stride 2: the ray of a 2x2 block goes through the block's centre
    _, d2 = camera_rays(cam, stride=2)
    uv, _ = cam.project((origins[0, 0] + d2[3, 5]).astype(np.float64)[None])
    assert np.allclose(uv[0], [11.0, 7.0], atol=1e-4)


def test_visual_hull_contains_sphere_and_is_tight():
    cams = target_cameras(size=64)
    masks = _sphere_masks(cams, 64)
    hull = visual_hull(masks, cams, 48, 0.6, CPU, dilate_px=0, allowed_misses=0, dilate_voxels=0)
    grid = OccupancyGrid(hull, 0.6)
    centres = grid.centres()
    r = centres.norm(dim=-1).view(48, 48, 48)
    voxel = 1.2 / 48
    assert bool(hull[r < RADIUS - 2 * voxel].all())  # nothing of the sphere is carved
    assert not bool(hull[r > 0.5].any())  # the hull of 16 views is close to the sphere
    assert grid.lookup(torch.tensor([[0.0, 0.0, 0.0], [0.59, 0.59, 0.59], [2.0, 0.0, 0.0]])).tolist() == [
        True,
        False,
        False,
    ]


def test_neus_alpha_saturates_across_surface_and_vanishes_leaving_it():
    dirs = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    grad = torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # entering / leaving the solid
    a = neus_alpha(torch.zeros(2), grad, dirs, 0.01, torch.tensor(2000.0), 1.0)
    assert a[0] > 0.99 and a[1] == 0.0


def test_render_sphere_opacity_depth_and_background():
    cam = orbit_camera(30.0, 0.0, 1.5, size=32)
    origins, dirs = camera_rays(cam)
    o, d = torch.from_numpy(origins.reshape(-1, 3)), torch.from_numpy(dirs.reshape(-1, 3))
    mask = _sphere_masks([cam], 32)[0].reshape(-1)
    hull = visual_hull(_sphere_masks(target_cameras(32), 32), target_cameras(32), 48, 0.6, CPU, **GENEROUS)
    grid = OccupancyGrid(hull, 0.6)
    out = render_rays(_SphereField(), grid, o, d, dt=0.004)
    assert out.num_rays == o.shape[0]
    hit = mask > 0.5
    # pixels whose centre ray hits the sphere well inside the silhouette are opaque, with the
    # sphere's colour; misses render the white background
    b = (o * d).sum(-1)
    disc = (b * b - ((o * o).sum(-1) - RADIUS**2)).numpy()
    core = disc > 0.01
    assert torch.all(out.opacity[core] > 0.98)
    torch.testing.assert_close(out.rgb[core], torch.full_like(out.rgb[core], 0.25), atol=0.02, rtol=0)
    assert torch.all(out.opacity[~hit] < 0.02) and torch.all(out.rgb[~hit] > 0.98)
    depth = (-b - torch.from_numpy(np.sqrt(np.maximum(disc, 0))))[core]
    torch.testing.assert_close(out.depth[core] / out.opacity[core], depth, atol=0.005, rtol=0)


def test_band_narrows_around_surface_and_falls_back_without_one():
    cams = target_cameras(size=64)
    hull = visual_hull(_sphere_masks(cams, 64), cams, 64, 0.6, CPU, **GENEROUS)
    grid = OccupancyGrid(hull, 0.6)
    kept = grid.update_band(_SphereSDF().sdf, inv_s=1000.0, outside_margin=0.0)
    assert 0.0 < kept < 0.8
    r = grid.centres(grid.occupied).norm(dim=-1)
    assert float((r - RADIUS).abs().max()) < 6 * grid.voxel_size  # surface voxel + 2-voxel cube dilation
    assert not bool(grid.lookup(torch.zeros(1, 3)))  # the deep interior is skipped
    # an SDF with no zero crossing (e.g. a diverged field) must not empty the grid: all positive
    # falls back to the hull, all negative keeps a shell at the hull's boundary
    kept = grid.update_band(lambda x: torch.full_like(x[:, 0], 1.0), inv_s=1000.0, outside_margin=0.0)
    assert kept == 1.0 and torch.equal(grid.occupied, grid.hull)
    kept = grid.update_band(lambda x: torch.full_like(x[:, 0], -1.0), inv_s=1000.0, outside_margin=0.0)
    assert 0.2 < kept < 1.0 and not bool(grid.lookup(torch.zeros(1, 3)))
    # the flood fill of the free space: inside the band's shell is "inside", beyond it "outside"
    grid.update_band(_SphereSDF().sdf, inv_s=1000.0, outside_margin=0.0)
    sign = grid.free_space_sign()
    assert grid.lookup_values(sign, torch.tensor([[0.0, 0.0, 0.0], [0.55, 0.0, 0.0]])).tolist() == [-1.0, 1.0]


def test_max_per_ray_and_sample_budget():
    cam = orbit_camera(30.0, 0.0, 1.5, size=16)
    origins, dirs = camera_rays(cam)
    o, d = torch.from_numpy(origins.reshape(-1, 3)), torch.from_numpy(dirs.reshape(-1, 3))
    grid = OccupancyGrid(torch.ones(16, 16, 16, dtype=torch.bool), 0.6)
    s = sample_rays(o, d, grid, 0.01, max_per_ray=7)
    assert int(torch.bincount(s.ray_idx).max()) == 7
    s = sample_rays(o, d, grid, 0.01, max_samples=500)
    assert s.ray_idx.shape[0] <= 500 and s.num_rays < o.shape[0]


def test_bbox_is_kept_until_the_occupied_voxels_change():
    """The bounds are cached (every step asks, the voxels change every ``occupancy_every`` steps),
    but a new band, or an edit in place, is seen at once."""
    from recon.render import OccupancyGrid

    hull = torch.zeros(8, 8, 8, dtype=torch.bool)
    hull[2:5, 3:6, 1:7] = True
    grid = OccupancyGrid(hull, 0.8)  # voxel 0.2
    lo, hi = grid.bbox()
    torch.testing.assert_close(lo, torch.tensor([-0.4, -0.2, -0.6]))
    torch.testing.assert_close(hi, torch.tensor([0.2, 0.4, 0.6]))
    lo.fill_(9.0)  # a caller's edit does not reach the cache
    torch.testing.assert_close(grid.bbox()[0], torch.tensor([-0.4, -0.2, -0.6]))
    band = torch.zeros_like(hull)
    band[3, 4, 2] = True
    grid.occupied = band  # a new band (update_band assigns one)
    torch.testing.assert_close(grid.bbox()[0], torch.tensor([-0.2, 0.0, -0.4]))
    grid.occupied[7, 7, 7] = True  # an edit in place
    torch.testing.assert_close(grid.bbox()[1], torch.tensor([0.8, 0.8, 0.8]))
    grid.occupied = torch.zeros_like(hull)
    torch.testing.assert_close(grid.bbox()[1], torch.full((3,), 0.8))


def test_free_space_sign_by_component():
    """0 in the band, +1 for free voxels joined (6-connected) to the cube's border, -1 for enclosed ones;
    band voxels on the border stay 0, and a pocket joined to the border only diagonally is enclosed."""
    from recon.render import OccupancyGrid

    band = torch.zeros(9, 9, 9, dtype=torch.bool)
    band[1:8, 1:8, 1:8] = True
    band[2:7, 2:7, 2:7] = False  # a cavity ...
    band[4, 4, 4] = True  # ... split around a band voxel: still one enclosed component
    band[0, 0, :] = True  # band on the border
    band[1, 1, 1] = False  # a pocket in the shell's corner, its faces closed by band voxels ...
    band[0, 1, 1] = band[1, 0, 1] = band[1, 1, 0] = True  # ... it touches free border voxels diagonally
    sign = OccupancyGrid(band, 0.9).free_space_sign()
    assert sign.dtype == torch.float32
    assert bool((sign[band] == 0).all())
    assert sign[3, 3, 3] == -1 and sign[5, 5, 5] == -1  # the cavity
    assert sign[1, 1, 1] == -1 and sign[0, 0, 1] == 0 and sign[0, 2, 2] == 1  # the pocket, shut off
    assert sign[8, 8, 8] == 1 and sign[0, 4, 4] == 1 and sign[0, 1, 0] == 1  # outside


def test_transmittance_cumprod_has_the_exact_gradient_and_never_waits():
    from recon.render import _PositiveCumprod

    def host_waits_in_backward(cumprod, x, grad) -> int:
        # the profiler, not a dispatch mode: torch.cumprod's wait is an .item() inside its C++ backward
        y = cumprod(x)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            (dx,) = torch.autograd.grad(y, x, grad)
        return sum(e.name == "aten::_local_scalar_dense" for e in prof.events()), dx

    x = (torch.rand(5, 7, dtype=torch.float64) * 0.9 + 1e-7).requires_grad_(True)
    assert torch.autograd.gradcheck(_PositiveCumprod.apply, (x,))
    assert torch.equal(_PositiveCumprod.apply(x), torch.cumprod(x, 1))
    grad = torch.rand(5, 7, dtype=torch.float64)
    waits, mine = host_waits_in_backward(_PositiveCumprod.apply, x, grad)
    torch_waits, reference = host_waits_in_backward(lambda t: torch.cumprod(t, 1), x, grad)
    assert waits == 0 and torch_waits >= 1  # torch's backward first asks whether x holds a zero
    torch.testing.assert_close(mine, reference, rtol=1e-12, atol=0)


def test_first_sample_of_each_ray_without_waiting():
    from support.host_waits import HostWaits

    from recon.render import _first_sample_values

    ray_idx = torch.tensor([1, 1, 1, 3, 4, 4])  # rays 0, 2 and 5 have no samples
    values = torch.tensor([10.0, 11.0, 12.0, 30.0, 40.0, 41.0], requires_grad=True)
    with HostWaits() as waits:
        first = _first_sample_values(values, ray_idx, 6)
    assert waits.seen == []
    torch.testing.assert_close(
        first, torch.tensor([math.nan, 10.0, math.nan, 30.0, 40.0, math.nan]), equal_nan=True
    )
    first.nan_to_num(0.0).sum().backward()
    assert values.grad.tolist() == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    empty = _first_sample_values(torch.zeros(0), torch.zeros(0, dtype=torch.long), 3)
    assert empty.shape == (3,) and bool(torch.isnan(empty).all())


def test_extra_points_share_the_samples_pass_and_change_nothing_else():
    """The eikonal term's random points go through the grid and the MLP with the samples (one pass,
    half the kernels): the render, the points' SDF gradients and the parameters' gradients are the
    same as with a separate pass for the points."""
    from recon.fields import FieldConfig, HashGridConfig, NeuSField

    cfg = FieldConfig(
        grid=HashGridConfig(n_levels=4, log2_hashmap_size=12, base_resolution=8, max_resolution=64)
    )
    field = NeuSField(cfg, CPU, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the geometric init gives the grid's features zero weight: give them some
        w = field.sdf_net.layers[0].weight
        w[:, 3:] = torch.randn(w[:, 3:].shape, generator=torch.Generator().manual_seed(2)) * 0.1
        field.sdf_net.encoding.table.uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(3))
    cams = target_cameras(32)
    grid = OccupancyGrid(visual_hull(_sphere_masks(cams, 32), cams, 32, 0.6, CPU, **GENEROUS), 0.6)
    origins, dirs = camera_rays(cams[3])
    o, d = torch.from_numpy(origins.reshape(-1, 3)), torch.from_numpy(dirs.reshape(-1, 3))
    extra = (torch.rand(64, 3, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 0.5

    def loss_and_grads(merged: bool):
        field.zero_grad(set_to_none=True)
        if merged:
            out = render_samples(field, sample_rays(o, d, grid, 0.01), o, d, 0.01, extra_points=extra)
        else:
            out = render_rays(field, grid, o, d, dt=0.01)
        extra_grad = out.all_grad[out.num_samples :] if merged else field.sdf_net(extra, with_grad=True)[2]
        grads = torch.cat([out.grad, extra_grad])
        loss = out.rgb.square().sum() + out.opacity.sum() + ((grads.norm(dim=-1) - 1) ** 2).mean()
        loss.backward()
        return out, extra_grad, {n: p.grad.clone() for n, p in field.named_parameters() if p.grad is not None}

    merged, merged_extra, merged_params = loss_and_grads(True)
    apart, apart_extra, apart_params = loss_and_grads(False)
    assert merged.num_samples > 1000 and merged.all_grad.shape == (merged.num_samples + 64, 3)
    for a, b in ((merged.rgb, apart.rgb), (merged.opacity, apart.opacity), (merged.grad, apart.grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(merged_extra, apart_extra, rtol=1e-5, atol=1e-6)
    assert merged_params.keys() == apart_params.keys() and len(merged_params) > 3
    assert merged_params["sdf_net.encoding.table"].abs().max() > 0  # the grid's gradient is compared too
    for name, g in merged_params.items():
        torch.testing.assert_close(g, apart_params[name], rtol=1e-4, atol=1e-6, msg=name)
