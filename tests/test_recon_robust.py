"""Robustness to inconsistent views: per-view colour correction, geometry terms, soft mask edges and
textures baked from the views.

Scenes are rendered with :mod:`recon.raster` without shading (ambient 1), so a view's colour is the
surface's colour and a known colour function is the ground truth of what baking should recover.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation
from support.host_waits import HostWaits
from torch import nn

from recon.appearance import ViewAppearance, to_canonical
from recon.bake import BakeSettings, ViewProjector
from recon.masks import edge_weights, inner_edge_weight
from recon.mesh import vertex_normals
from recon.poses import ViewPoses, corrected_cameras, rotate, rotation_matrices
from recon.presets import PRESETS, ROBUSTNESS_OFF, Preset
from recon.raster import Lighting, RenderMesh, render_mesh
from recon.render import camera_rays
from recon.texture import UVMesh, bake_texture, rasterize_uv
from recon.train import (
    _adam,
    _draw_smoothing_points,
    _level_weights,
    _smoothness_loss,
    _ViewResiduals,
    prepare_rays,
    train,
)
from sd3d.core.cameras import target_cameras
from sd3d.core.io import ViewSet, read_views

CPU = torch.device("cpu")
UNSHADED = Lighting(ambient=1.0, directions=(), weights=())
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "spot"
PERTURBED = [2, 6, 10, 14]  # every fourth view: no smooth function of the view direction
GAIN = np.array([1.25, 0.8, 1.0])


def _render(vertices, faces, colors, size, supersample=2, corrections=None):
    """The target cameras at ``size`` px and the unshaded renders, from the cameras as corrected
    by ``corrections`` (N, 3, 4) (:func:`recon.poses.corrected_cameras`; ``None``: as they are)."""
    mesh = RenderMesh(
        vertices=np.asarray(vertices, np.float64),
        faces=np.asarray(faces),
        face_color=np.ones((len(faces), 3)),
        vertex_colors=np.asarray(colors, np.float64),
    )
    cameras = target_cameras(size)
    seen_from = corrected_cameras(cameras, corrections)
    return cameras, render_mesh(mesh, seen_from, supersample=supersample, lighting=UNSHADED)


def _small_scene_preset(**changes) -> Preset:
    """The plain draft preset sized for a 64 px scene, full-resolution rays, with ``changes``."""
    plain = replace(PRESETS["draft"], **ROBUSTNESS_OFF)
    return replace(plain, init_steps=30, image_stride=1, occupancy_res=32, occupancy_every=10, **changes)


def _on_white(rgb, alpha, cameras) -> ViewSet:
    images = np.clip(rgb * alpha + (1 - alpha), 0, 1).astype(np.float32)
    return ViewSet(images=images, cameras=cameras, alphas=alpha[..., 0])


def _normal_smoothness(field_, out, preset: Preset, gen: torch.Generator) -> torch.Tensor:
    """The normal smoothing term of points drawn from ``out``, both normals from a pass of their
    own (training takes the first from the render's samples: the same values)."""
    points = _draw_smoothing_points(out, preset, gen)
    if points is None:
        return out.grad.new_zeros(())
    here = out.points[points.pick].detach()
    _, _, grad = field_.sdf_net(torch.cat([here, points.near]), with_grad=True)
    return _smoothness_loss(*grad.chunk(2), points.has_mass)


def _tiny(preset: Preset, **changes) -> Preset:
    return replace(
        preset,
        steps=12,
        init_steps=10,
        rays_per_batch=128,
        occupancy_res=32,
        occupancy_every=4,
        **changes,
    )


def _state(result) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in result.field.state_dict().items()}


# ------------------------------------------------------------------------------------------------
# presets and switches
# ------------------------------------------------------------------------------------------------


def test_presets_switch_the_methods_on_and_robustness_off_restores_the_plain_fields():
    plain = Preset(**{f: getattr(PRESETS["draft"], f) for f in ("name", "steps", "rays_per_batch")},
                   max_samples_per_batch=1, image_stride=1, step_size=0.01, field=PRESETS["draft"].field,
                   occupancy_res=8, mesh_res=8, texture_size=8, uv_max_faces=8)  # fmt: skip
    for name, preset in PRESETS.items():
        assert preset.appearance != "none" and preset.texture_source == "views", name
        assert preset.w_normal_smooth > 0 and preset.level_ramp > 0 and preset.view_weight_power > 0, name
        assert preset.pose_refine and preset.average_window > 0, name
        assert preset.mask_edge_px > 0 or name == "draft", name
        off = replace(preset, **ROBUSTNESS_OFF)
        for key in ROBUSTNESS_OFF:
            assert getattr(off, key) == getattr(plain, key), (name, key)  # the dataclass defaults
    with pytest.raises(ValueError, match="appearance"):
        replace(PRESETS["draft"], appearance="curves")
    with pytest.raises(ValueError, match="texture_source"):
        replace(PRESETS["draft"], texture_source="photo")


def test_appearance_starts_at_identity_and_adds_exact_zeros():
    for mode in ("gain", "affine"):
        for anchor in ("mean", "first"):
            app = ViewAppearance(5, mode, anchor, CPU)
            np.testing.assert_array_equal(app.matrices(), np.tile(np.eye(3, 4), (5, 1, 1)))
            rgb = torch.rand(64, 3)
            opacity = torch.rand(64)
            view = torch.randint(5, (64,))
            assert torch.equal(app.apply(rgb, opacity, view), rgb)
            assert float(app.penalty().detach()) == 0.0


def test_anchors_pin_the_canonical_colour():
    app = ViewAppearance(4, "affine", "mean", CPU)
    with torch.no_grad():
        app.delta.copy_(torch.randn(4, 3, 3) * 0.1)
        app.bias.copy_(torch.randn(4, 3) * 0.1)
    m = app.matrices()
    np.testing.assert_allclose(m.mean(0), np.eye(3, 4), atol=1e-6)  # the mean transform is identity
    app.anchor = "first"
    m = app.matrices()
    np.testing.assert_array_equal(m[0], np.eye(3, 4))  # view 0 is the canonical colour
    assert np.abs(m[1:] - np.eye(3, 4)).max() > 0.01
    # the background (opacity 0) stays white whatever the transform
    white = app.apply(torch.ones(3, 3), torch.zeros(3), torch.tensor([1, 2, 3]))
    torch.testing.assert_close(white, torch.ones(3, 3))
    # undoing the transforms on images recovers the canonical colours
    canonical = np.random.default_rng(0).uniform(0.2, 0.7, (4, 2, 2, 3))
    seen = np.einsum("nij,nhwj->nhwi", m[:, :, :3], canonical) + m[:, None, None, :, 3]
    np.testing.assert_allclose(to_canonical(seen, m), canonical, atol=1e-6)


@pytest.mark.parametrize(
    "inert",
    [
        # the colour transform on, but frozen at the identity
        {"appearance": "affine", "appearance_lr": 0.0, "w_appearance": 0.0},
        {"appearance": "gain", "appearance_anchor": "first", "appearance_lr": 0.0},
        # hash levels "ramped" in within one step: the hard switch
        {"level_ramp": 1e-9},
        # camera corrections learned, but frozen at zero
        {"pose_refine": True, "pose_lr": 0.0, "w_pose": 0.0},
    ],
    ids=["affine-frozen", "gain-frozen", "ramp-of-one-step", "poses-frozen"],
)
def test_switched_off_features_train_bit_for_bit_like_the_plain_path(inert):
    """A method that is on but does nothing gives exactly the training with it off: the new code
    paths add exact zeros / ones and draw no random numbers of the training's stream."""
    views = read_views(EXAMPLE)
    plain = _tiny(replace(PRESETS["draft"], **ROBUSTNESS_OFF))
    a = train(views, plain, CPU, seed=3)
    b = train(views, replace(plain, **inert), CPU, seed=3)
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert a.appearance is None and (b.appearance is None) == ("appearance" not in inert)


def test_the_field_ends_with_the_average_of_its_last_weights():
    """From ``average_from`` on, an exponential moving average with each step's share 1 / (window *
    steps); the field takes it at the end. Off (window 0), the weights are the last step's."""
    from recon.train import _WeightAverage

    net = nn.Linear(2, 1)
    preset = replace(PRESETS["draft"], steps=10, average_from=0.5, average_window=0.2)  # share 1/2
    average = _WeightAverage(net, preset)
    history = []
    for step in range(10):
        with torch.no_grad():
            net.weight.fill_(float(step))
        history.append(float(step))
        average.update(step)
    expected = 5.0  # from step 5 on: 5, then halfway towards 6, 7, 8, 9
    for value in history[6:]:
        expected += 0.5 * (value - expected)
    assert float(net.weight.detach()[0, 0]) == 9.0  # training's own weights until the end
    average.apply()
    torch.testing.assert_close(net.weight, torch.full((1, 2), expected))
    off = _WeightAverage(net, replace(preset, average_window=0.0))
    for step in range(10):
        off.update(step)
    off.apply()
    torch.testing.assert_close(net.weight, torch.full((1, 2), expected))  # untouched
    with pytest.raises(ValueError, match="average_window"):
        replace(preset, average_window=-1.0)


class _Slab(nn.Module):
    """The exact SDF of the slab |z| <= half: (sdf, no feature, gradient), as SDFNetwork returns them."""

    def __init__(self, half: float) -> None:
        super().__init__()
        self.half = half

    def forward(self, x: torch.Tensor, with_grad: bool = True):
        grad = torch.zeros_like(x)
        grad[:, 2] = torch.sign(x[:, 2])
        return x[:, 2].abs() - self.half, x[:, :0], grad


def test_tangent_smoothing_does_not_penalise_a_thin_sheet():
    """On a flat sheet thinner than twice the smoothing step, a step in any direction can reach the
    far face, whose normal is opposite (squared difference 4); a step in the tangent plane or out of
    the surface stays on the near face, so the flat sheet, perfectly smooth, costs nothing."""
    half = 0.004  # sheet 0.008 thick, step 0.01
    n = 4096
    gen = torch.Generator().manual_seed(0)
    points = torch.cat([torch.rand(n, 2, generator=gen) - 0.5, torch.full((n, 1), half)], 1)
    grad = torch.zeros(n, 3)
    grad[:, 2] = 1.0
    out = type("Render", (), {"weights": torch.ones(n), "points": points, "grad": grad, "valid": None})()
    field_ = type("Field", (), {"sdf_net": _Slab(half)})()
    costs = {}
    for offset in ("sphere", "outward", "tangent"):
        preset = replace(
            PRESETS["draft"], normal_smooth_offset=offset, normal_smooth_eps=0.01, normal_smooth_points=n
        )
        costs[offset] = float(_normal_smoothness(field_, out, preset, torch.Generator().manual_seed(1)))
    assert costs["tangent"] == 0.0 and costs["outward"] == 0.0
    # the normal flips where the step crosses the mid-plane: z-component of a uniform direction
    # < -half / eps = -0.4, probability 0.3; so the mean is 4 * 0.3 (binomial std over n: 0.03)
    assert abs(costs["sphere"] - 1.2) < 0.15, costs
    with pytest.raises(ValueError, match="normal_smooth_offset"):
        replace(PRESETS["draft"], normal_smooth_offset="normal")


def test_robust_draft_trains_and_reports_its_terms():
    views = read_views(EXAMPLE)
    out = train(views, _tiny(PRESETS["draft"]), CPU, seed=0)
    last = out.history[-1]
    assert np.isfinite(last["loss"]) and last["normal_smooth"] > 0 and last["appearance"] >= 0
    assert out.history[0]["normal_smooth"] > 0  # drawn from each step's own render, from the first
    assert out.appearance.shape == (views.num_views, 3, 4)
    np.testing.assert_allclose(out.appearance.mean(0), np.eye(3, 4), atol=1e-5)  # "mean" anchor


# ------------------------------------------------------------------------------------------------
# per-view colour correction learns a known gain
# ------------------------------------------------------------------------------------------------


def test_learned_gains_approach_the_known_gains_of_four_views():
    sphere = trimesh.creation.icosphere(3, radius=0.3)
    p = sphere.vertices
    colors = np.stack(
        [0.45 + 0.2 * np.sin(6 * p[:, 2]), 0.5 + 0.15 * np.cos(5 * p[:, 0]), np.full(len(p), 0.4)], 1
    )
    cameras, renders = _render(p, sphere.faces, colors, 64)
    rgb, alpha = renders.rgba[..., :3].copy(), renders.rgba[..., 3:]
    rgb[PERTURBED] *= GAIN  # an exposure / white-balance drift of four views (object only)
    views = _on_white(rgb, alpha, cameras)
    preset = _small_scene_preset(steps=60, rays_per_batch=256, appearance="affine", appearance_lr=2e-2)
    out = train(views, preset, CPU, seed=0)
    clean = [i for i in range(16) if i not in PERTURBED]
    c = (rgb[clean] * alpha[clean]).sum((0, 1, 2)) / alpha[clean].sum()  # the object's mean colour

    def apparent_gain(m):  # what the view's transform does to that colour, per channel
        return (m[:, :3] @ c + m[:, 3]) / c

    reference = np.mean([apparent_gain(out.appearance[i]) for i in clean], axis=0)
    for i in PERTURBED:
        ratio = apparent_gain(out.appearance[i]) / reference
        assert abs(ratio[0] - GAIN[0]) < abs(ratio[0] - 1.0), (i, ratio)
        assert abs(ratio[1] - GAIN[1]) < abs(ratio[1] - 1.0), (i, ratio)
        assert abs(ratio[2] - 1.0) < 0.1, (i, ratio)


# ------------------------------------------------------------------------------------------------
# per-view camera corrections (recon.poses)
# ------------------------------------------------------------------------------------------------


def test_rotation_matches_scipy_and_zero_changes_no_bit():
    gen = torch.Generator().manual_seed(0)
    rotvec = (torch.rand(64, 3, generator=gen, dtype=torch.float64) * 2 - 1) * 0.17  # |w| < 0.3 rad
    x = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    want = Rotation.from_rotvec(rotvec.numpy()).apply(x.numpy())
    np.testing.assert_allclose(rotate(rotvec, x).numpy(), want, rtol=0, atol=1e-9)
    x32 = x.float()
    assert torch.equal(rotate(torch.zeros_like(x32), x32), x32)
    # the matrices that apply the corrections to rays: the same rotations, the identity at zero
    mats = rotation_matrices(rotvec)
    np.testing.assert_allclose((mats @ x[:, :, None])[..., 0].numpy(), want, rtol=0, atol=1e-9)
    assert torch.equal(rotation_matrices(torch.zeros(4, 3)), torch.eye(3).expand(4, 3, 3))
    poses = ViewPoses(_centres(target_cameras(32)), CPU)
    o, d = torch.randn(50, 3, generator=gen), torch.randn(50, 3, generator=gen)
    o2, d2 = poses.apply(o, d, torch.randint(16, (50,), generator=gen))
    assert torch.equal(o2, o) and torch.equal(d2, d)  # zero corrections change no bit of a ray


def _centres(cameras) -> torch.Tensor:
    return torch.from_numpy(np.stack([c.center for c in cameras]))


def test_matrices_are_the_applied_corrections_and_cameras_cast_the_corrected_rays():
    cameras = target_cameras(32)
    poses = ViewPoses(_centres(cameras), CPU)
    with torch.no_grad():
        poses.rotvec.copy_(torch.randn(16, 3, generator=torch.Generator().manual_seed(1)) * 0.04)
        poses.shift.copy_(torch.randn(16, 3, generator=torch.Generator().manual_seed(2)) * 0.01)
    m = poses.matrices()
    rot = m[:, :, :3]
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rot.shape), atol=1e-6)
    np.testing.assert_allclose(m[:, :, 3].mean(0), 0.0, atol=1e-7)  # the "mean" anchor
    fixed = corrected_cameras(cameras, m)
    for v in (0, 5, 11):
        o, d = (torch.from_numpy(a.reshape(-1, 3)) for a in camera_rays(cameras[v]))
        view = torch.full((o.shape[0],), v)
        with torch.no_grad():
            o2, d2 = poses.apply(o, d, view)
        fo, fd = camera_rays(fixed[v])
        np.testing.assert_allclose(o2.numpy(), fo.reshape(-1, 3), atol=1e-5)
        np.testing.assert_allclose(d2.numpy(), fd.reshape(-1, 3), atol=1e-5)
    assert corrected_cameras(cameras, None) == cameras


def test_corrections_that_move_all_cameras_alike_are_anchored_away():
    """A common rotation, a common shift, or every camera moving towards the object by the same
    distance changes nothing but the object's place and size: none of them survives the anchor,
    while a correction of one view alone mostly does."""
    centres = _centres(target_cameras(32))
    poses = ViewPoses(centres, CPU)
    radial = centres.float() / centres.float().norm(dim=1, keepdim=True)
    with torch.no_grad():
        poses.rotvec.copy_(torch.tensor([0.01, -0.02, 0.03]).expand(16, 3))
        poses.shift.copy_(torch.tensor([0.02, 0.01, -0.03]) + 0.05 * radial)
    with torch.no_grad():
        rotvec, shift = poses.offsets()
    assert float(rotvec.abs().max()) < 1e-8 and float(shift.abs().max()) < 1e-7
    with torch.no_grad():
        poses.rotvec.zero_()
        poses.shift.zero_()
        poses.shift[3] = torch.tensor([0.0, 0.02, 0.0])
        _, shift = poses.offsets()
    assert float(shift[3, 1]) > 0.015 and float(shift[torch.arange(16) != 3].abs().max()) < 0.005


def test_training_recovers_known_camera_offsets():
    """Every view rendered from a camera turned by 2 degrees about the object and shifted by 1.5 %
    (in the anchor's gauge: the offsets average to zero): with the learned corrections the surface
    projects much closer to where the true cameras put it than with the nominal cameras."""
    blob = trimesh.creation.icosphere(3, radius=1.0)
    blob.vertices *= [0.32, 0.22, 0.26]  # no symmetry a rotation could hide in
    p = blob.vertices
    colors = np.stack(
        [0.5 + 0.3 * np.sin(14 * p[:, 2]), 0.5 + 0.3 * np.cos(12 * p[:, 0]), 0.4 + 0 * p[:, 1]], 1
    )
    gen = np.random.default_rng(3)
    rotvecs = gen.normal(size=(16, 3))
    rotvecs *= np.radians(2.0) / np.linalg.norm(rotvecs, axis=1, keepdims=True)
    shifts = gen.normal(size=(16, 3)) * 0.015 / np.sqrt(3)
    rotvecs, shifts = rotvecs - rotvecs.mean(0), shifts - shifts.mean(0)  # in the anchor's gauge
    truth = np.concatenate([Rotation.from_rotvec(rotvecs).as_matrix(), shifts[:, :, None]], axis=2)
    nominal, renders = _render(p, blob.faces, colors, 64, corrections=truth)
    views = _on_white(renders.rgba[..., :3], renders.rgba[..., 3:], nominal)
    preset = _small_scene_preset(steps=120, rays_per_batch=512, pose_refine=True, pose_lr=3e-3)
    out = train(views, preset, CPU, seed=0)
    fixed = corrected_cameras(nominal, out.poses)
    true_cams = corrected_cameras(nominal, truth)
    surface = np.asarray(p, np.float64)

    def pixels(cam):
        x = surface @ cam.R.T + cam.t
        uv = x @ cam.K.T
        return uv[:, :2] / uv[:, 2:]

    before = np.array(
        [np.linalg.norm(pixels(nominal[v]) - pixels(true_cams[v]), axis=1).mean() for v in range(16)]
    )
    after = np.array(
        [np.linalg.norm(pixels(fixed[v]) - pixels(true_cams[v]), axis=1).mean() for v in range(16)]
    )
    # mean reprojection error of the surface, in pixels of the 64 px views (measured: 0.61 -> 0.27)
    assert after.mean() <= 0.6 * before.mean(), (before, after)
    assert (after <= before + 0.05).all(), (before, after)


# ------------------------------------------------------------------------------------------------
# geometry terms
# ------------------------------------------------------------------------------------------------


def test_soft_mask_weights_are_low_only_near_the_edge():
    mask = np.zeros((40, 40), np.float32)
    mask[10:30, 12:28] = 1.0
    w = edge_weights(mask, 3.0)
    hard = mask > 0.5
    from scipy.ndimage import distance_transform_edt

    dist = np.where(hard, distance_transform_edt(hard), distance_transform_edt(~hard))  # to the other side
    assert w[dist <= 1].max() <= 1 / 6 + 1e-6  # the pixels on either side of the edge: 0.5 px / 3 px
    assert np.all(w[dist >= 4] == 1.0)  # interior and far background are fully trusted
    assert np.all(w[dist <= 3] < 1.0)
    # the rays get the weights averaged over their pixel blocks, and none without the option
    views = read_views(EXAMPLE)
    masks = np.stack([(im < 0.96).any(-1).astype(np.float32) for im in views.images])
    pool = prepare_rays(views, masks, 2, CPU, edge_px=2.0)
    assert pool.edge_weight is not None and pool.edge_weight.shape == pool.mask.shape
    fuzzy = (pool.mask > 0.05) & (pool.mask < 0.95)  # blocks the mask edge cuts through
    assert float(pool.edge_weight[fuzzy].max()) < 0.8 and float(pool.edge_weight.max()) == 1.0
    assert prepare_rays(views, masks, 2, CPU).edge_weight is None
    # the baking variant: nothing outside the mask
    inner = inner_edge_weight(mask, 3.0)
    assert np.all(inner[~hard] == 0.0) and np.all(inner[hard & (dist >= 4)] == 1.0)


def test_level_weights_ramp_each_new_level_in():
    ramp = [_level_weights(s, 6, 2, 10, 5, CPU) for s in range(0, 60)]
    for s, w in enumerate(ramp):
        assert torch.all(w[:2] == 1.0)  # the first levels are always on
        active = 2 + s // 10
        assert torch.all(w[active:] == 0.0)  # not yet switched on
    assert ramp[10][2] == pytest.approx(0.2) and ramp[14][2] == 1.0  # level 2 on at step 10, full at 14
    assert torch.all(torch.stack(ramp).diff(dim=0) >= 0)  # never fades out again


def test_view_residual_weights_down_weight_only_the_disagreeing_views():
    res = _ViewResiduals(4, power=1.0, floor=0.3, device=CPU)
    view = torch.arange(4).repeat(10)
    residual = torch.tensor([0.1, 0.1, 0.2, 1.0]).repeat(10)
    res.update(residual, view, torch.ones(40, dtype=torch.bool))
    w = res.weights()
    median = float(torch.tensor([0.1, 0.1, 0.2, 1.0]).median())  # torch's lower median: 0.1
    torch.testing.assert_close(w, torch.tensor([1.0, 1.0, median / 0.2, 0.3]))
    # rays off the object do not count, and unseen views keep full weight
    res = _ViewResiduals(3, power=1.0, floor=0.3, device=CPU)
    res.update(torch.tensor([0.1, 5.0]), torch.tensor([0, 1]), torch.tensor([True, False]))
    torch.testing.assert_close(res.weights(), torch.ones(3))


def test_view_weights_and_normal_smoothing_never_wait_for_the_device():
    """Both run mid-step: a wait there would stop the host queueing the step's remaining work until
    the GPU has finished the forward pass (``benchmarks/step_ops.py`` counts the waits per step)."""
    res = _ViewResiduals(4, power=1.0, floor=0.3, device=CPU)
    with HostWaits() as waits:
        before = res.weights()
        res.update(torch.tensor([0.1, 0.4, 0.2]), torch.tensor([0, 1, 3]), torch.ones(3, dtype=torch.bool))
        w = res.weights()
    assert waits.seen == []
    torch.testing.assert_close(before, torch.ones(4))  # nothing seen yet: all ones
    torch.testing.assert_close(w, torch.tensor([1.0, 0.5, 1.0, 1.0]))  # median of the seen 0.1/0.4/0.2

    class Out:
        pass

    class Net:
        def __call__(self, x, with_grad=True):
            return x.norm(dim=-1) - 0.3, None, x * 2

    field = type("F", (), {"sdf_net": Net()})()
    preset = replace(PRESETS["draft"], normal_smooth_points=16)
    for weights in (torch.rand(50), torch.zeros(50)):
        out = Out()
        out.points = torch.randn(50, 3)
        out.grad = (out.points * 2).requires_grad_(True)
        out.weights = weights
        out.valid = None  # not padded (the static step's samples are: tests/test_train_static.py)
        with HostWaits() as waits:
            value = _normal_smoothness(field, out, preset, torch.Generator().manual_seed(0))
        assert waits.seen == [] and torch.isfinite(value)
        if not bool(weights.any()):
            assert value.item() == 0.0  # no sample carries weight: no term


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
        ),
    ],
)
def test_adam_is_fused_on_cuda_and_steps_like_adam(device):
    """Fused on CUDA (one kernel per parameter group: the step is launch-bound), PyTorch's default
    on the CPU (whose results the tests and tables were made with); the same update either way."""
    p = nn.Parameter(torch.zeros(3, device=device))
    opt = _adam([{"params": [p], "lr": 1e-2}])
    assert opt.fused == (device == "cuda")
    p.grad = torch.tensor([1.0, -2.0, 0.5], device=device)
    opt.step()  # Adam's first step is -lr * sign(grad) (bias-corrected moments g and g^2)
    torch.testing.assert_close(p.detach().cpu(), torch.tensor([-1e-2, 1e-2, -1e-2]))


def test_the_smoothing_compares_the_samples_own_normals_and_moves_the_camera_corrections():
    """The training's smoothing term takes its first normals from the render's own samples: the
    same values as a pass of their own at those points, but with the gradient that reaches the
    camera corrections through the sample positions (session 8: dropping that gradient, as session
    7's one-step-ahead form did, cost 0.5 dB of texture PSNR on the robustness benchmark)."""
    import recon.train as T

    preset = replace(_tiny(PRESETS["draft"]), w_normal_smooth=1.0)
    views = read_views(EXAMPLE)
    masks, _ = T.view_masks(views)
    grid = T._skipping_grid(views, masks, preset, CPU)
    rays = prepare_rays(views, masks, preset.image_stride, CPU)
    field_ = T.NeuSField(preset.field, CPU, generator=torch.Generator().manual_seed(0))
    opt = T._Optimiser(field_, preset, _centres(views.cameras), CPU)
    sched = T._Schedule(preset, preset.field.grid.n_levels, 64.0)
    step = preset.steps - 1  # the camera corrections move
    opt.follow_schedule(field_, sched, step, CPU)
    with torch.no_grad():
        opt.poses.rotvec.normal_(0.0, 0.01, generator=torch.Generator().manual_seed(1))
    knobs = T._StepKnobs.at(sched, step)
    _, parts, out, _ = T._step_loss(field_, grid, grid.bbox(), rays, opt, knobs, torch.Generator(), CPU)
    assert float(parts["normal_smooth"].detach()) > 0
    (pose_grad,) = torch.autograd.grad(parts["normal_smooth"], opt.poses.rotvec)
    assert float(pose_grad.abs().max()) > 0
    # drawn alike, the training's term is the helper's (both normals from a pass of their own)
    in_training = T._normal_smoothness(field_, out, preset, torch.Generator().manual_seed(7))
    apart = _normal_smoothness(field_, out, preset, torch.Generator().manual_seed(7))
    torch.testing.assert_close(in_training, apart, rtol=1e-5, atol=1e-7)


def test_normal_smoothness_is_small_on_a_sphere_and_large_on_a_bumpy_one():
    class Net:
        def __init__(self, bumps: float):
            self.bumps = bumps

        def __call__(self, x, with_grad=True):
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                r = x.norm(dim=-1)
                sdf = r - 0.3 - self.bumps * torch.sin(60 * x[:, 0]) * torch.sin(60 * x[:, 1])
                (g,) = torch.autograd.grad(sdf.sum(), x)
            return sdf, None, g

    class Out:
        pass

    gen = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(2000, 3, generator=gen), dim=-1)
    preset = replace(PRESETS["draft"], normal_smooth_points=512, normal_smooth_eps=0.01)
    values = []
    for bumps in (0.0, 0.01):
        field = type("F", (), {"sdf_net": Net(bumps)})()
        out = Out()
        out.points = dirs * 0.3
        _, _, out.grad = field.sdf_net(out.points)
        out.weights = torch.ones(2000)
        out.valid = None
        values.append(float(_normal_smoothness(field, out, preset, torch.Generator().manual_seed(1))))
    assert values[0] < 2e-3  # a sphere's normals turn by eps / r over eps: tiny
    assert values[1] > 20 * values[0]


# ------------------------------------------------------------------------------------------------
# baking from the views
# ------------------------------------------------------------------------------------------------


def _pattern(p: np.ndarray) -> np.ndarray:
    """Sharp stripes and a half-and-half split; no green, so the occluder's green is recognisable."""
    stripes = np.floor((p[:, 2] + 1) * 12) % 2
    return np.stack([0.2 + 0.6 * stripes, np.full(len(p), 0.15), 0.3 + 0.4 * (p[:, 0] > 0)], 1)


@pytest.fixture(scope="module")
def occluded_sphere():
    """A patterned sphere and a small green ball between it and camera 0, rendered at 16 views."""
    sphere = trimesh.creation.icosphere(3, radius=0.3)
    ball = trimesh.creation.icosphere(2, radius=0.08)
    centre0 = target_cameras(96)[0].center
    ball_at = centre0 / np.linalg.norm(centre0) * 0.45
    ball.apply_translation(ball_at)
    vertices = np.concatenate([sphere.vertices, ball.vertices])
    faces = np.concatenate([sphere.faces, ball.faces + len(sphere.vertices)])
    colors = np.concatenate([_pattern(sphere.vertices), np.tile([[0.0, 1.0, 0.0]], (len(ball.vertices), 1))])
    cameras, renders = _render(vertices, faces, colors, 96, supersample=3)
    return {
        "sphere": sphere,
        "vertices": vertices,
        "faces": faces,
        "cameras": cameras,
        "images": renders.on_white(),
        "masks": renders.rgba[..., 3],
        "ball": (ball_at, 0.08),
    }


def _field_grey(points: np.ndarray) -> np.ndarray:
    return np.full((len(points), 3), 0.5, np.float32)


def test_baked_texture_recovers_a_known_texture(occluded_sphere):
    s = occluded_sphere
    sphere = s["sphere"]
    uv_mesh = _atlas(sphere)
    normals = vertex_normals(sphere.vertices, sphere.faces)[uv_mesh.vmap]
    projector = ViewProjector(s["images"], s["masks"], s["cameras"], None, s["vertices"], s["faces"], CPU)

    class GreyField:  # the fallback where no view sees the surface
        def surface_color(self, points):
            return torch.full((points.shape[0], 3), 0.5), torch.zeros_like(points)

    size = 256
    texture = bake_texture(GreyField(), uv_mesh, size, CPU, projector=projector, normals=normals)
    rows, cols, face, bary = rasterize_uv(uv_mesh.uvs, uv_mesh.faces, size)
    truth = np.einsum("kc,kcd->kd", bary, _pattern(uv_mesh.vertices)[uv_mesh.faces[face]])
    points = np.einsum("kc,kcd->kd", bary, uv_mesh.vertices[uv_mesh.faces[face]])
    seen = points[:, 2] > -0.1  # the cameras look down from 30 degrees: the bottom is not seen
    baked = texture[rows, cols].astype(np.float64) / 255.0
    error = np.abs(baked - truth).mean(1)[seen].mean()
    flat = np.abs(truth[seen] - truth[seen].mean(0)).mean(1).mean()  # a texture of one mean colour
    assert error < 0.02 and error < 0.1 * flat, (error, flat)
    # the unseen bottom falls back to the field's colour (grey here)
    bottom = points[:, 2] < -0.29
    np.testing.assert_allclose(baked[bottom], 0.5, atol=0.01)


def _atlas(mesh) -> UVMesh:
    """A trivial UV layout: every face its own right triangle in a grid of cells (no xatlas)."""
    faces = np.asarray(mesh.faces)
    n = len(faces)
    side = int(np.ceil(np.sqrt(n)))
    cell = 1.0 / side
    idx = np.arange(n)
    u0, v0 = (idx % side) * cell, (idx // side) * cell
    pad = 0.15 * cell
    corners = np.stack(
        [
            np.stack([u0 + pad, v0 + pad], 1),
            np.stack([u0 + cell - pad, v0 + pad], 1),
            np.stack([u0 + pad, v0 + cell - pad], 1),
        ],
        1,
    )
    return UVMesh(
        vertices=np.asarray(mesh.vertices)[faces.reshape(-1)],
        faces=np.arange(3 * n).reshape(n, 3),
        uvs=corners.reshape(-1, 2).astype(np.float32),
        vmap=faces.reshape(-1),
    )


def _surface_samples(sphere, count: int, seed: int = 0, upper: bool = False):
    """Random points on the sphere's faces, their smooth normals and their true (rendered) colour."""
    rng = np.random.default_rng(seed)
    face = rng.integers(0, len(sphere.faces), count)
    bary = rng.dirichlet([1.0, 1.0, 1.0], count)
    corners = sphere.faces[face]
    points = np.einsum("kc,kcd->kd", bary, sphere.vertices[corners])
    normals = np.einsum("kc,kcd->kd", bary, vertex_normals(sphere.vertices, sphere.faces)[corners])
    truth = np.einsum("kc,kcd->kd", bary, _pattern(sphere.vertices)[corners])
    keep = points[:, 2] > 0.0 if upper else np.ones(count, bool)  # the cameras look down at 30 deg
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return points[keep], normals[keep], truth[keep]


def test_occluded_points_take_no_colour_from_the_views_that_cannot_see_them(occluded_sphere):
    s = occluded_sphere
    points, normals, truth = _surface_samples(s["sphere"], 20_000)
    projector = ViewProjector(s["images"], s["masks"], s["cameras"], None, s["vertices"], s["faces"], CPU)
    # points whose line of sight to camera 0 passes through the ball, on the side facing camera 0
    centre0 = s["cameras"][0].center
    ball_at, radius = s["ball"]
    to_point = points - centre0
    to_point /= np.linalg.norm(to_point, axis=1, keepdims=True)
    b = (to_point * (centre0 - ball_at)).sum(1)
    hidden = (b * b - ((centre0 - ball_at) ** 2).sum() + radius**2 > 0) & (
        (normals * (centre0 - points)).sum(1) > 0.3
    )
    assert hidden.sum() > 100
    seen_by, _ = projector.view_weights(torch.from_numpy(points).float(), torch.from_numpy(normals).float())
    assert float(seen_by[0, torch.from_numpy(hidden)].max()) == 0.0  # view 0 sees the ball there
    assert float(seen_by[1:, torch.from_numpy(hidden)].amax(0).min()) > 0.1  # its neighbours see them
    colors = projector.colors(points, normals, _field_grey)
    assert colors[hidden, 1].max() < 0.3  # no green from the ball
    assert np.abs(colors[hidden] - truth[hidden]).mean() < 0.02


def test_baking_undoes_the_views_colour_transforms(occluded_sphere):
    s = occluded_sphere
    points, normals, truth = _surface_samples(s["sphere"], 5000, seed=1, upper=True)
    rng = np.random.default_rng(4)
    transforms = np.zeros((16, 3, 4))
    transforms[:, :, :3] = np.eye(3) * rng.uniform(0.75, 1.25, (16, 1, 3)) + rng.uniform(
        -0.05, 0.05, (16, 3, 3)
    )
    transforms[:, :, 3] = rng.uniform(-0.05, 0.05, (16, 3))
    alpha = s["masks"][..., None]
    fg = (s["images"] - (1 - alpha)) / np.maximum(alpha, 1e-6)  # straight colour of the renders
    seen = np.einsum("nij,nhwj->nhwi", transforms[:, :, :3], fg) + transforms[:, None, None, :, 3]
    images = np.clip(seen * alpha + (1 - alpha), 0, 1)

    def error(imgs, tr):
        proj = ViewProjector(imgs, s["masks"], s["cameras"], tr, s["vertices"], s["faces"], CPU)
        return np.abs(proj.colors(points, normals, _field_grey) - truth).mean()

    plain = error(s["images"], None)
    assert error(images, transforms) < plain + 0.01
    assert error(images, None) > plain + 0.02  # without undoing them the colours are off


def test_best_facing_view_keeps_misaligned_views_from_blurring(occluded_sphere):
    s = occluded_sphere
    points, normals, truth = _surface_samples(s["sphere"], 8000, seed=2, upper=True)
    rng = np.random.default_rng(3)
    images, masks = s["images"].copy(), s["masks"].copy()
    for i in range(16):  # each view misaligned by up to 2 px
        dy, dx = rng.integers(-2, 3, 2)
        images[i] = np.roll(images[i], (dy, dx), (0, 1))
        masks[i] = np.roll(masks[i], (dy, dx), (0, 1))

    def error(settings):
        proj = ViewProjector(images, masks, s["cameras"], None, s["vertices"], s["faces"], CPU, settings)
        return np.abs(proj.colors(points, normals, _field_grey) - truth).mean()

    average = error(BakeSettings(cos_power=0.0, temperature=1.0, edge_px=0.0))  # every visible view alike
    assert error(BakeSettings()) < 0.6 * average


def test_export_colours_the_mesh_from_the_views_or_the_field(occluded_sphere, tmp_path):
    """``export_mesh`` wiring: vertex colours from the views with ``texture_source="views"``,
    from the field (grey here) with ``"field"`` or when the result carries no views."""
    from recon.pipeline import ReconResult, export_mesh

    class SphereSDF(torch.nn.Module):
        def sdf(self, points):
            return points.norm(dim=-1) - 0.3

    class GreyField:
        sdf_net = SphereSDF()

        def surface_color(self, points):
            return torch.full((points.shape[0], 3), 0.5), torch.zeros_like(points)

    s = occluded_sphere
    views = ViewSet(images=s["images"].astype(np.float32), cameras=s["cameras"], alphas=s["masks"])
    preset = replace(PRESETS["draft"], mesh_res=48, uv_max_faces=4000)
    result = ReconResult(GreyField(), None, preset, CPU, 0, "test", 0.0, views=views)

    def colours(res, name):
        out = export_mesh(res, tmp_path / f"{name}.ply")
        mesh = trimesh.load(out.paths[0], process=False)
        return np.asarray(mesh.vertices), np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0

    verts, from_views = colours(result, "views")
    top = verts[:, 2] > 0.1
    truth = _pattern(verts[top] / np.linalg.norm(verts[top], axis=1, keepdims=True) * 0.3)
    near_stripe_edge = np.abs(((verts[top, 2] + 1) * 12) % 1 - 0.5) > 0.35
    assert np.abs(from_views[top] - truth)[~near_stripe_edge].mean() < 0.05
    for other in (
        replace(result, preset=replace(preset, texture_source="field")),
        replace(result, views=None),
    ):
        _, grey = colours(other, "field")
        np.testing.assert_allclose(grey, 0.5, atol=1 / 255)


def test_reconstruct_keeps_what_view_baking_needs_and_robust_false_is_the_plain_field(monkeypatch):
    from recon.pipeline import reconstruct
    from recon.presets import ReconSettings

    monkeypatch.setitem(PRESETS, "draft", _tiny(PRESETS["draft"]))
    views = read_views(EXAMPLE)
    robust = reconstruct(views, ReconSettings("draft", steps=2), device="cpu")
    assert robust.preset.texture_source == "views" and robust.views is views
    assert robust.masks.shape == views.images.shape[:3] and robust.appearance.shape == (16, 3, 4)
    plain = reconstruct(views, ReconSettings("draft", steps=2), device="cpu", robust=False)
    assert plain.appearance is None
    assert all(getattr(plain.preset, k) == v for k, v in ROBUSTNESS_OFF.items())
