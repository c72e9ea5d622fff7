"""The NeuS training loop (its settings are the quality presets of :mod:`recon.presets`).

Schedule: the SDF is first fitted to the visual hull's distance field (samples are confined to the
hull, so NeuS' sphere initialisation would leave the rays no surface to find); hash levels are then
switched on coarse-to-fine; NeuS' sharpness ``s`` is learned but floored by a geometric ramp
(55 -> 800) so the occupancy band (visual hull at first) narrows steadily around the surface.

Losses: RGB (Charbonnier) against the views composited on white, rendered over white; mask (BCE of
the rendered opacity against the foreground coverage); eikonal on the ray samples plus random points
in the hull's box; and an "entry" hinge that keeps the SDF positive at each ray's first sample (the
skipped space before it is empty), without which the band's boundary can pose as the surface.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.ndimage import maximum_filter

from recon.fields import NeuSField
from recon.hull import hull_sdf, visual_hull
from recon.masks import view_masks
from recon.presets import Preset
from recon.render import OccupancyGrid, camera_rays, render_rays, sample_volume
from sd3d.core import defaults
from sd3d.core.errors import ViewsFolderError
from sd3d.core.io import ViewSet
from sd3d.core.progress import Progress, resolve


def prepare_rays(
    views: ViewSet, masks: np.ndarray, stride: int, device: torch.device, pool_dilate_px: int = 8
):
    """Rays of every view at ``stride``, restricted to pixels within ``pool_dilate_px`` of the mask
    (farther rays cross no hull voxel, so they would render exactly the white background)."""

    o_all, d_all, c_all, m_all = [], [], [], []
    dil = max(1, pool_dilate_px // stride)
    for image, mask, cam in zip(views.images, masks, views.cameras, strict=True):
        h, w = cam.height // stride, cam.width // stride
        if stride > 1:  # box filter = the average over each ray's s x s pixel block
            image = image[: h * stride, : w * stride].reshape(h, stride, w, stride, 3).mean((1, 3))
            mask = mask[: h * stride, : w * stride].reshape(h, stride, w, stride).mean((1, 3))
        origins, dirs = camera_rays(cam, stride)
        pool = maximum_filter(mask > 0.01, size=2 * dil + 1) > 0
        o_all.append(origins[pool])
        d_all.append(dirs[pool])
        c_all.append(image[pool])
        m_all.append(mask[pool])

    def cat(xs):
        return torch.from_numpy(np.concatenate(xs).astype(np.float32)).to(device)

    return cat(o_all), cat(d_all), cat(c_all), cat(m_all)


@dataclass(frozen=True)
class TrainResult:
    field: NeuSField
    grid: OccupancyGrid
    preset: Preset
    steps: int
    seconds: float
    final_loss: float
    history: list[dict] = field(default_factory=list)


def _lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up from 1% then exponential decay to 10% at the end."""
    w = max(1, int(total * warmup))
    if step < w:
        return 0.01 + 0.99 * step / w
    return 0.1 ** ((step - w) / max(1, total - w))


def fit_hull(
    field_: NeuSField, target: torch.Tensor, bound: float, preset: Preset, gen: torch.Generator
) -> float:
    """Pre-fit the SDF to the visual hull's (clamped) distance field.

    Why: samples are confined to the hull, so the sphere initialisation (which usually contains
    the whole hull) would leave no zero crossing for the rays to find. Starting from the hull's
    SDF puts the surface where the silhouettes say it is; rendering then carves the concavities.
    """
    device = target.device
    opt = torch.optim.Adam(field_.sdf_net.parameters(), lr=preset.lr, betas=(0.9, 0.99), eps=1e-15)
    occupied = (target.abs() < 4 * 2 * bound / target.shape[0]).nonzero().float()
    voxel = 2 * bound / target.shape[0]
    loss = torch.zeros(())
    for _ in range(preset.init_steps):
        n_uniform = preset.init_points // 2
        uniform = (torch.rand(n_uniform, 3, generator=gen, device=device) * 2 - 1) * bound
        pick = torch.randint(
            occupied.shape[0], (preset.init_points - n_uniform,), generator=gen, device=device
        )
        near = (occupied[pick] + torch.rand(pick.shape[0], 3, generator=gen, device=device)) * voxel - bound
        pts = torch.cat([uniform, near])
        want = sample_volume(target, pts, bound).clamp(-0.2, 0.2)
        sdf, _, grad = field_.sdf_net(pts, with_grad=True)
        loss = (sdf.clamp(-0.2, 0.2) - want).abs().mean() + 0.1 * ((grad.norm(dim=-1) - 1) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return float(loss.item())


def train(
    views: ViewSet,
    preset: Preset,
    device: torch.device,
    seed: int = defaults.SEED,
    progress: Progress | None = None,
    masks: np.ndarray | None = None,
) -> TrainResult:
    """Fit a NeuS field to the views; deterministic on CPU for a given seed."""
    t0 = time.perf_counter()
    if masks is None:
        masks, _ = view_masks(views)
    gen_cpu = torch.Generator().manual_seed(int(seed))
    gen = torch.Generator(device=device).manual_seed(int(seed)) if device.type == "cuda" else gen_cpu

    cfg = preset.field
    hull = visual_hull(
        masks,
        views.cameras,
        preset.occupancy_res,
        cfg.bound,
        device,
        dilate_px=preset.hull_dilate_px,
        allowed_misses=preset.hull_allowed_misses,
        dilate_voxels=1,  # a voxel of slack: the skipping grid must never cut the surface
    )
    if not bool(hull.any()):
        raise ViewsFolderError(
            "the views' masks do not agree on any common volume: cameras and views do not match"
        )
    grid = OccupancyGrid(hull, cfg.bound)
    origins, dirs, rgb, mask = prepare_rays(views, masks, preset.image_stride, device)
    field_ = NeuSField(cfg, device, generator=gen_cpu)
    enc = field_.sdf_net.encoding
    enc.set_active_levels(preset.start_levels)
    if preset.init_steps > 0:
        res = min(128, preset.occupancy_res)  # the distance transform runs on the CPU
        tight = visual_hull(
            masks,
            views.cameras,
            res,
            cfg.bound,
            device,
            dilate_px=1,
            allowed_misses=preset.hull_allowed_misses,
            dilate_voxels=0,
        )
        fit_hull(field_, hull_sdf(tight, cfg.bound), cfg.bound, preset, gen)

    grid_params = [p for n, p in field_.named_parameters() if n.startswith("sdf_net.encoding")]
    var_params = list(field_.inv_s.parameters())
    ids = {id(p) for p in grid_params + var_params}
    mlp_params = [p for p in field_.parameters() if id(p) not in ids]
    groups = [
        {"params": grid_params, "lr": preset.lr},
        {"params": mlp_params, "lr": preset.lr},
        {"params": var_params, "lr": preset.lr_variance},
    ]
    base_lrs = [g["lr"] for g in groups]
    opt = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)

    n_levels = cfg.grid.n_levels
    level_every = max(1, int(preset.steps * preset.levels_done_at / max(1, n_levels - preset.start_levels)))
    occ_start = int(preset.steps * preset.occupancy_start)
    lo, hi = grid.bbox()
    cap_from = int(preset.steps * preset.per_ray_cap_from)
    s0 = float(field_.inv_s().item())
    s1 = max(s0, preset.min_inv_s_end)
    inv_s = field_.inv_s()
    history: list[dict] = []
    loss_value = float("nan")
    prog = resolve(progress)
    with prog.task(f"reconstruct ({preset.name})", preset.steps) as advance:
        for step in range(preset.steps):
            enc.set_active_levels(preset.start_levels + step // level_every)
            f = _lr_factor(step, preset.steps, preset.warmup)
            for g, base in zip(opt.param_groups, base_lrs, strict=True):
                g["lr"] = base * f
            if step >= occ_start and (step - occ_start) % preset.occupancy_every == 0:
                grid.update_band(field_.sdf_net.sdf, float(inv_s.item()), preset.outside_margin)

            idx = torch.randint(origins.shape[0], (preset.rays_per_batch,), generator=gen, device=device)
            cos_anneal = min(1.0, step / max(1.0, preset.cos_anneal_end * preset.steps))
            inv_s = torch.maximum(
                field_.inv_s(), torch.tensor(s0 * (s1 / s0) ** (step / preset.steps), device=device)
            )
            out = render_rays(
                field_,
                grid,
                origins[idx],
                dirs[idx],
                preset.step_size,
                cos_anneal=cos_anneal,
                generator=gen,
                max_samples=preset.max_samples_per_batch,
                inv_s=inv_s,
                max_per_ray=preset.max_samples_per_ray if step >= cap_from else None,
            )
            idx = idx[: out.num_rays]
            loss_rgb = torch.sqrt(((out.rgb - rgb[idx]) ** 2).sum(-1) + 1e-3).mean()
            opacity = out.opacity.clamp(1e-4, 1.0 - 1e-4)
            loss_mask = torch.nn.functional.binary_cross_entropy(opacity, mask[idx])
            rand_pts = lo + (hi - lo) * torch.rand(preset.eikonal_points, 3, generator=gen, device=device)
            _, _, rand_grad = field_.sdf_net(rand_pts, with_grad=True)
            grads = torch.cat([out.grad, rand_grad])
            loss_eik = ((grads.norm(dim=-1) - 1.0) ** 2).mean()
            # Skipped space in front of a ray's first sample is empty, so the SDF there must be >= 0.
            # Without this the field can make the whole band negative and let its boundary act
            # as the surface (a negative section renders opaque), inflating thin objects.
            loss_entry = torch.relu(-out.entry_sdf).mean() if out.entry_sdf.numel() else loss_eik * 0
            loss = (
                preset.w_rgb * loss_rgb
                + preset.w_mask * loss_mask
                + preset.w_eikonal * loss_eik
                + preset.w_entry * loss_entry
            )

            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

            if step % 10 == 0 or step == preset.steps - 1:
                loss_value = float(loss.item())
                s_now = float(inv_s.item())
                history.append(
                    {
                        "step": step,
                        "loss": loss_value,
                        "rgb": float(loss_rgb.item()),
                        "mask": float(loss_mask.item()),
                        "eikonal": float(loss_eik.item()),
                        "inv_s": s_now,
                        "samples": out.num_samples,
                        "rays": out.num_rays,
                        "seconds": time.perf_counter() - t0,
                    }
                )
                advance(1, info=f"loss {loss_value:.4f} s {s_now:.0f} samples {out.num_samples}")
            else:
                advance(1)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return TrainResult(
        field=field_,
        grid=grid,
        preset=preset,
        steps=preset.steps,
        seconds=time.perf_counter() - t0,
        final_loss=loss_value,
        history=history,
    )
