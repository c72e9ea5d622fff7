"""The NeuS training loop (its settings are the quality presets of :mod:`recon.presets`).

Schedule: the SDF is first fitted to the visual hull's distance field (samples are confined to the
hull, so NeuS' sphere initialisation would leave the rays no surface to find); hash levels are then
switched on coarse-to-fine; NeuS' sharpness ``s`` is learned but floored by a geometric ramp
(55 -> 800) so the occupancy band (visual hull at first) narrows steadily around the surface.

Losses: RGB (Charbonnier) against the views composited on white, rendered over white; mask (BCE of
the rendered opacity against the foreground coverage); eikonal on the ray samples plus random points
in the hull's box; and an "entry" hinge that keeps the SDF positive at each ray's first sample (the
skipped space before it is empty), without which the band's boundary can pose as the surface.

Robustness to inconsistent views (generated sets: small misalignments, colour drift, details that
differ per view, noisy mask edges), each a :class:`~recon.presets.Preset` field and off at zero:
a per-view colour transform (:mod:`recon.appearance`) in front of the RGB loss; a normal-smoothness
term (normals at near-surface samples and a small step away agree), fading over training; hash
levels ramped in instead of switched on; views whose residual stays above the median's weighted
down in the RGB loss; rays near a mask edge weighted down in the mask loss; and a small rigid
correction of each view's camera (:mod:`recon.poses`), learned once the coarse shape stands.

Engines (:data:`ENGINES`): the step runs eagerly with shapes that follow the data (the default), or
with fixed shapes (padded samples, a fixed march) so that CUDA can replay it from a graph
(:mod:`recon.step_graph`, ``--cuda-graph``): same losses and gradients, one launch per step.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import maximum_filter

from recon.adam import Adam
from recon.appearance import ViewAppearance
from recon.fields import NeuSField
from recon.hull import hull_sdf, visual_hull
from recon.masks import edge_weights, view_masks
from recon.poses import ViewPoses
from recon.presets import Preset
from recon.render import (
    OccupancyGrid,
    RenderOutput,
    camera_rays,
    march_steps,
    render_samples,
    sample_rays,
    sample_rays_static,
    sample_volume,
)
from recon.step_graph import GraphCaptureError, GraphedSteps
from sd3d.core import defaults
from sd3d.core.errors import UserError, ViewsFolderError
from sd3d.core.io import ViewSet
from sd3d.core.progress import Progress, resolve


@dataclass(frozen=True)
class RayPool:
    """Every training ray: origin, direction, target colour and coverage, its view, and the
    weight of its pixel by distance to the mask edge (``None`` when edges are not weighted)."""

    origins: torch.Tensor  # (R, 3)
    dirs: torch.Tensor  # (R, 3)
    rgb: torch.Tensor  # (R, 3)
    mask: torch.Tensor  # (R,)
    view: torch.Tensor  # (R,) long
    edge_weight: torch.Tensor | None = None  # (R,)


def prepare_rays(
    views: ViewSet,
    masks: np.ndarray,
    stride: int,
    device: torch.device,
    pool_dilate_px: int = 8,
    edge_px: float = 0.0,
) -> RayPool:
    """Rays of every view at ``stride``, restricted to pixels within ``pool_dilate_px`` of the mask
    (farther rays cross no hull voxel, so they would render exactly the white background).
    ``edge_px`` > 0 adds :func:`edge_weights` (computed at full resolution, averaged like the pixels)."""

    o_all, d_all, c_all, m_all, v_all, e_all = [], [], [], [], [], []
    dil = max(1, pool_dilate_px // stride)
    for i, (image, mask, cam) in enumerate(zip(views.images, masks, views.cameras, strict=True)):
        h, w = cam.height // stride, cam.width // stride
        edge = edge_weights(mask, edge_px) if edge_px > 0 else None
        if stride > 1:  # box filter = the average over each ray's s x s pixel block
            image = image[: h * stride, : w * stride].reshape(h, stride, w, stride, 3).mean((1, 3))
            mask = mask[: h * stride, : w * stride].reshape(h, stride, w, stride).mean((1, 3))
            if edge is not None:
                edge = edge[: h * stride, : w * stride].reshape(h, stride, w, stride).mean((1, 3))
        origins, dirs = camera_rays(cam, stride)
        pool = maximum_filter(mask > 0.01, size=2 * dil + 1) > 0
        o_all.append(origins[pool])
        d_all.append(dirs[pool])
        c_all.append(image[pool])
        m_all.append(mask[pool])
        v_all.append(np.full(int(pool.sum()), i, np.int64))
        if edge is not None:
            e_all.append(edge[pool])

    def cat(xs):
        return torch.from_numpy(np.concatenate(xs).astype(np.float32)).to(device)

    return RayPool(
        origins=cat(o_all),
        dirs=cat(d_all),
        rgb=cat(c_all),
        mask=cat(m_all),
        view=torch.from_numpy(np.concatenate(v_all)).to(device),
        edge_weight=cat(e_all) if e_all else None,
    )


@dataclass(frozen=True)
class TrainResult:
    field: NeuSField
    grid: OccupancyGrid
    preset: Preset
    steps: int
    seconds: float
    final_loss: float
    history: list[dict] = field(default_factory=list)
    appearance: np.ndarray | None = None  # (N, 3, 4) per-view [A | b], view colour = A c + b
    poses: np.ndarray | None = None  # (N, 3, 4) per-view camera correction [R | t] (recon.poses)
    graph_captures: int = 0  # CUDA graphs captured (engine "graph")
    # seconds of the fit's parts (setup, prefit, loop, finish; and under graphs "captures": the eager
    # first steps and the captures of every graph phase, the pre-fit's one included, so it is part
    # of prefit and loop): where a cold command's training time goes
    phase_seconds: dict[str, float] = field(default_factory=dict)


class _ViewResiduals:
    """A running mean of each view's RGB residual on the object, and weights from it.

    A view whose residual stays above the median view's after the colour correction disagrees in
    shape or detail (misaligned, hallucinated); its rays get ``(median / residual) ** power``
    (floored at ``floor``) of the weight, so the consensus of the others decides the surface.
    """

    def __init__(self, num_views: int, power: float, floor: float, device: torch.device) -> None:
        self.mean = torch.zeros(num_views, device=device)
        self.seen = torch.zeros(num_views, dtype=torch.bool, device=device)
        self.power, self.floor = power, floor

    @torch.no_grad()
    def update(
        self, residual: torch.Tensor, view: torch.Tensor, on_object: torch.Tensor, decay: float = 0.9
    ) -> None:
        n = self.mean.shape[0]
        w = on_object.float()
        total = torch.zeros(n, device=w.device).index_add_(0, view, residual * w)
        count = torch.zeros(n, device=w.device).index_add_(0, view, w)
        got = count > 0
        now = total / count.clamp_min(1.0)
        blended = torch.where(self.seen, decay * self.mean + (1 - decay) * now, now)
        # in place: a captured CUDA graph keeps reading and writing these very tensors
        self.mean.copy_(torch.where(got, blended, self.mean))
        self.seen |= got

    def weights(self) -> torch.Tensor:
        """Per view ray weight: 1 for views not seen yet (all of them at first).

        Computed without a host synchronisation (the median of the seen views' residuals is the
        NaN-ignoring median with NaN for the others; no view seen gives NaN, which every unseen view
        replaces by 1): a mid-step ``bool(...)`` or boolean index would make the CPU wait for the
        GPU's forward pass before it could queue the rest of the step."""
        ref = _nanmedian(torch.where(self.seen, self.mean, torch.full_like(self.mean, math.nan)))
        ratio = (ref / self.mean.clamp_min(1e-6)).clamp(max=1.0)
        return torch.where(self.seen, ratio.pow(self.power).clamp_min(self.floor), torch.ones_like(ratio))


def _nanmedian(x: torch.Tensor) -> torch.Tensor:
    """``x.nanmedian()`` of a 1-D tensor (the lower middle value of the non-NaN ones, NaN if none)
    from a sort and a gather, so that it provably stays on the device (a CUDA graph may not wait)."""
    ordered = torch.sort(x).values  # NaNs sort last
    middle = ((~torch.isnan(x)).sum() - 1).clamp_min(0) // 2
    return ordered.gather(0, middle.view(1)).view(())


def _level_weights(
    step: int, n_levels: int, start_levels: int, level_every: int, ramp_steps: int, device
) -> torch.Tensor:
    """Per hash level, how far it has faded in at ``step`` (0..1); the first levels are always on.

    Level ``l >= start_levels`` switches on at step ``(l - start_levels + 1) * level_every`` (the
    schedule of :func:`train`) and reaches full weight ``ramp_steps`` later.
    """
    levels = torch.arange(n_levels, device=device, dtype=torch.float32)
    on_at = (levels - start_levels + 1) * level_every
    ramp = ((step - on_at + 1) / ramp_steps).clamp(0.0, 1.0)
    return torch.where(levels < start_levels, torch.ones_like(ramp), ramp)


def _lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up from 1% then exponential decay to 10% at the end."""
    w = max(1, int(total * warmup))
    if step < w:
        return 0.01 + 0.99 * step / w
    return 0.1 ** ((step - w) / max(1, total - w))


def _adam(groups: list[dict]) -> Adam:
    """Adam as Instant-NGP sets it up (betas 0.9/0.99, eps 1e-15); fused on CUDA.

    Why fused there: the update of a parameter group is then one kernel instead of the ~6
    multi-tensor kernels of PyTorch's CUDA default (30 fewer launches per training step, counted by
    benchmarks/step_ops.py), and a GPU training step is bound by launching its small kernels. On the
    CPU PyTorch's default loop stays: the fused form was about as fast there (33.0 vs 34.0 s for 400
    draft steps), and its different rounding moved one of eight draft benchmark cases beyond the
    seed-to-seed spread (spot/clean, seed 0: Chamfer 0.0094 -> 0.0119; benchmarks/RESULTS.md,
    session 7), so the CPU keeps the results its tests and tables were made with. Both are
    :class:`recon.adam.Adam` (PyTorch's arithmetic without the import of torch._dynamo that
    torch.optim costs a cold process).
    """
    on_cuda = groups[0]["params"][0].device.type == "cuda"
    return Adam(groups, betas=(0.9, 0.99), eps=1e-15, fused=on_cuda)


def _capturable_adam(groups: list[dict], device: torch.device) -> Adam:
    """:func:`_adam` for steps replayed from a CUDA graph: fused (its step counts live on the
    device) and each group's learning rate a device tensor that the schedule refills in place (a
    float would be baked into the graph at capture)."""
    for g in groups:
        g["lr"] = torch.tensor(float(g["lr"]), device=device)
    return Adam(groups, betas=(0.9, 0.99), eps=1e-15, fused=True)


def fit_hull(
    field_: NeuSField,
    target: torch.Tensor,
    bound: float,
    preset: Preset,
    gen: torch.Generator,
    graphed: GraphedSteps | None = None,
) -> float:
    """Pre-fit the SDF to the visual hull's (clamped) distance field.

    Why: samples are confined to the hull, so the sphere initialisation (which usually contains
    the whole hull) would leave no zero crossing for the rays to find. Starting from the hull's
    SDF puts the surface where the silhouettes say it is; rendering then carves the concavities.
    Its steps have fixed shapes already: with ``graphed`` they replay from one CUDA graph.
    """
    device = target.device
    groups = [{"params": list(field_.sdf_net.parameters()), "lr": preset.lr}]
    opt = _adam(groups) if graphed is None else _capturable_adam(groups, device)
    occupied = (target.abs() < 4 * 2 * bound / target.shape[0]).nonzero().float()
    voxel = 2 * bound / target.shape[0]

    def run_step() -> dict[str, torch.Tensor]:
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
        opt.zero_grad()
        loss.backward()
        opt.step()
        return _detached({"loss": loss})

    record = {"loss": torch.zeros(())}
    for _ in range(preset.init_steps):
        record = run_step() if graphed is None else graphed.run(run_step, "hull")
    return float(record["loss"].item())


ENGINES = ("eager", "static", "graph")
"""How :func:`train` runs its steps: ``eager`` (every operator launched from Python, with shapes that
follow the data), ``static`` (the same step with fixed shapes: padded samples, a fixed march
length; still eager, the reference of ``graph``) or ``graph`` (CUDA only: the static step captured
once per phase as a CUDA graph and replayed, so a step costs one launch instead of ~900)."""


def train(
    views: ViewSet,
    preset: Preset,
    device: torch.device,
    seed: int = defaults.SEED,
    progress: Progress | None = None,
    masks: np.ndarray | None = None,
    engine: str = "eager",
) -> TrainResult:
    """Fit a NeuS field to the views; deterministic on CPU for a given seed (``engine``: see
    :data:`ENGINES`).

    If a step cannot be captured as a CUDA graph (``engine="graph"``), the fit starts again without
    graphs, with a warning: everything it holds (field, grid, rays, generators) is made here, so the
    second fit is the one the eager engine would have made, only later. Why not fail: graphs are an
    optimisation, and a capture can fail for reasons of the setup (a driver, a PyTorch version) that
    the user cannot change; the price is the time of the failed fit, which fails at its first
    capture in practice (the first steps of the hull pre-fit)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "graph" and device.type != "cuda":
        raise UserError("CUDA graphs (--cuda-graph) need a CUDA device")
    try:
        return _fit(views, preset, device, seed, progress, masks, engine)
    except GraphCaptureError as exc:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        reason = str(exc.__cause__ or exc).splitlines()[0]
        warnings.warn(f"CUDA graph capture failed, training again without graphs: {reason}", stacklevel=2)
        return _fit(views, preset, device, seed, progress, masks, "eager")


def _fit(
    views: ViewSet,
    preset: Preset,
    device: torch.device,
    seed: int,
    progress: Progress | None,
    masks: np.ndarray | None,
    engine: str,
) -> TrainResult:
    """:func:`train`'s one fit with one engine."""
    t0 = time.perf_counter()
    clock = _PhaseClock(device)
    if masks is None:
        masks, _ = view_masks(views)
    gen_cpu = torch.Generator().manual_seed(int(seed))
    gen = torch.Generator(device=device).manual_seed(int(seed)) if device.type == "cuda" else gen_cpu

    grid = _skipping_grid(views, masks, preset, device)
    rays = prepare_rays(views, masks, preset.image_stride, device, edge_px=preset.mask_edge_px)
    field_ = NeuSField(preset.field, device, generator=gen_cpu)
    field_.sdf_net.encoding.set_active_levels(preset.start_levels)
    graphed = GraphedSteps(device, gen) if engine == "graph" else None
    # under --cuda-graph the whole fit runs on the graphs' stream (GraphedSteps.streamed says why)
    with graphed.streamed() if graphed is not None else contextlib.nullcontext():
        clock.lap("setup")
        if preset.init_steps > 0:
            _fit_to_tight_hull(field_, views, masks, preset, device, gen, graphed)
        clock.lap("prefit")
        centres = torch.from_numpy(np.stack([cam.center for cam in views.cameras]))
        opt = _Optimiser(
            field_, preset, centres, device, capturable=engine == "graph", all_levels=engine != "eager"
        )
        sched = _Schedule(preset, preset.field.grid.n_levels, float(field_.inv_s().item()))
        hull_box = grid.bbox()  # the eikonal term's random points: the hull's box, fixed from the start
        static = None if engine == "eager" else _StaticShapes.for_grid(grid, preset)
        knobs = _StepKnobs.on_device(device) if engine == "graph" else None
        inv_s = field_.inv_s().detach()
        average = _WeightAverage(field_, preset)
        history: list[dict] = []
        loss_value = float("nan")
        with resolve(progress).task(f"reconstruct ({preset.name})", preset.steps) as advance:
            for step in range(preset.steps):
                opt.follow_schedule(field_, sched, step, device)
                if sched.updates_occupancy(step):
                    grid.update_band(field_.sdf_net.sdf, float(inv_s.item()), preset.outside_margin)
                    if static is not None:
                        static.refresh(grid)
                now = _StepKnobs.at(sched, step) if knobs is None else knobs.refill(sched, step)

                def run_step(now: _StepKnobs = now) -> dict[str, torch.Tensor]:
                    loss, parts, out, inv_s = _step_loss(
                        field_, grid, hull_box, rays, opt, now, gen, device, static
                    )
                    opt.minimise(loss)
                    return _detached({"loss": loss, **parts, "inv_s": inv_s, **_sample_counts(out)})

                if graphed is None:
                    record = run_step()
                else:
                    # what changes the captured kernels: the computed hash levels (all of them under
                    # graphs: _Optimiser's all_levels) and the per-ray cap (each change: one eager
                    # step, then a new capture); the view weights' start is a tensor (_step_loss)
                    phase = (field_.sdf_net.encoding.active_levels, now.max_per_ray)
                    record = graphed.run(run_step, phase)
                inv_s = record["inv_s"]
                average.update(step)
                if step % 10 == 0 or step == preset.steps - 1:
                    history.append(_history_entry(step, record, time.perf_counter() - t0))
                    loss_value = history[-1]["loss"]
                    advance(
                        1,
                        info=f"loss {loss_value:.4f} s {history[-1]['inv_s']:.0f} samples {history[-1]['samples']}",
                    )
                else:
                    advance(1)
        clock.lap("loop")
        average.apply()
        # the last step's gradients are not needed any more (under --cuda-graph they also hold on to the
        # graphs' memory pool): the export that follows gets that memory
        field_.zero_grad(set_to_none=True)
    clock.lap("finish")
    if graphed is not None:
        clock.seconds["captures"] = round(graphed.capture_seconds, 3)
    return TrainResult(
        field=field_,
        grid=grid,
        preset=preset,
        steps=preset.steps,
        seconds=time.perf_counter() - t0,
        final_loss=loss_value,
        history=history,
        appearance=None if opt.appearance is None else opt.appearance.matrices(),
        poses=None if opt.poses is None else opt.poses.matrices(),
        graph_captures=0 if graphed is None else graphed.captures,
        phase_seconds=clock.seconds,
    )


class _PhaseClock:
    """Seconds between laps, the device synchronised at each (a handful per fit: their cost is
    nothing next to a step), so a lap holds the GPU work it launched."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 3)
        self._last = now


class _WeightAverage:
    """An exponential moving average of the field's weights over the last part of training
    (``Preset.average_from`` on, spanning ``average_window`` of it), which the field takes at the end.

    Why: the last steps still move the weights by the noise of their random batches, and a fast grid
    turns that noise into small bumps of the surface; the average keeps what the steps agree on. On
    the robustness benchmark it raised texture PSNR by 0.7 dB with the same geometry (the texture is
    projected from the views onto the surface, so a steadier surface takes their colours more
    faithfully). It never feeds back into training: the losses are the live weights'.
    """

    def __init__(self, field_: NeuSField, preset: Preset) -> None:
        self.params = list(field_.parameters())
        self.start = int(preset.steps * preset.average_from)
        window = preset.average_window * preset.steps
        self.on = preset.average_window > 0 and self.start < preset.steps
        self.weight = 1.0 / max(1.0, window)  # each step's share: 1 - decay
        self.average: list[torch.Tensor] | None = None

    @torch.no_grad()
    def update(self, step: int) -> None:
        if not self.on or step < self.start:
            return
        if self.average is None:
            self.average = [p.detach().clone() for p in self.params]
        else:  # one multi-tensor kernel (per dtype and device), no host wait
            torch._foreach_lerp_(self.average, [p.detach() for p in self.params], self.weight)

    @torch.no_grad()
    def apply(self) -> None:
        if self.average is not None:
            torch._foreach_copy_([p.data for p in self.params], self.average)


@dataclass
class _StaticShapes:
    """What fixes the sampler's shapes (:func:`recon.render.sample_rays_static`): the march length,
    enough for the hull's box (every later band lies inside it), the padded sample count (the
    preset's budget), and the occupied box in tensors that are refreshed in place."""

    steps: int
    pad_to: int
    bbox: tuple[torch.Tensor, torch.Tensor]

    @classmethod
    def for_grid(cls, grid: OccupancyGrid, preset: Preset) -> _StaticShapes:
        lo, hi = grid.bbox()
        return cls(march_steps(lo, hi, preset.step_size), preset.max_samples_per_batch, (lo, hi))

    def refresh(self, grid: OccupancyGrid) -> None:
        lo, hi = grid.bbox()
        self.bbox[0].copy_(lo)
        self.bbox[1].copy_(hi)


@dataclass
class _StepKnobs:
    """The schedule's values that one step reads. Floats (and a bool) when steps run eagerly; 0-d
    device tensors refilled before every replay when they run from a CUDA graph, where a Python
    value would be frozen in at capture. ``max_per_ray`` changes the step's kernels: a new capture."""

    inv_s_floor: float | torch.Tensor
    cos_anneal: float | torch.Tensor
    smooth_fade: float | torch.Tensor  # the normal smoothing's weight, relative to its first step's
    max_per_ray: int | None = None
    weighs_views: bool | torch.Tensor = False  # whether the per-view residual weights apply yet

    @staticmethod
    def _values(sched: _Schedule, step: int) -> tuple[float, float, float]:
        p = sched.preset
        fade = 1.0 - (1.0 - p.normal_smooth_end) * step / max(1, p.steps - 1)
        return sched.inv_s_floor(step), sched.cos_anneal(step), fade

    @classmethod
    def at(cls, sched: _Schedule, step: int) -> _StepKnobs:
        return cls(*cls._values(sched, step), sched.max_per_ray(step), sched.weighs_views(step))

    @classmethod
    def on_device(cls, device: torch.device) -> _StepKnobs:
        floats = (torch.zeros((), device=device) for _ in range(3))
        return cls(*floats, weighs_views=torch.zeros((), dtype=torch.bool, device=device))

    def refill(self, sched: _Schedule, step: int) -> _StepKnobs:
        for buffer, value in zip(
            (self.inv_s_floor, self.cos_anneal, self.smooth_fade), self._values(sched, step), strict=True
        ):
            buffer.fill_(value)
        self.weighs_views.fill_(sched.weighs_views(step))
        self.max_per_ray = sched.max_per_ray(step)
        return self


def _detached(record: dict[str, torch.Tensor | int]) -> dict[str, torch.Tensor | int]:
    """A step's record without its autograd graph.

    Why: a record outlives its step (it is read for the log, and ``inv_s`` for the next occupancy
    update), and a tensor with a ``grad_fn`` keeps the step's whole graph alive, with the
    AccumulateGrad node of every parameter it touched. The next step then reuses those nodes, made
    on the stream of the step that made them; a CUDA-graph capture on another stream that meets one
    is invalidated (seen on an H100: the first ``--cuda-graph`` training of every process failed)."""
    return {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in record.items()}


def _sample_counts(out: RenderOutput) -> dict[str, torch.Tensor | int]:
    """The step's real samples and rays (tensors when padded: read only when logged)."""
    if out.valid is None:
        return {"samples": out.num_samples, "rays": out.num_rays}
    return {"samples": out.valid.sum(), "rays": out.kept.sum()}


def _skipping_grid(views: ViewSet, masks: np.ndarray, preset: Preset, device: torch.device) -> OccupancyGrid:
    """The occupancy grid that confines the samples, starting as the (dilated) visual hull."""
    hull = visual_hull(
        masks,
        views.cameras,
        preset.occupancy_res,
        preset.field.bound,
        device,
        dilate_px=preset.hull_dilate_px,
        allowed_misses=preset.hull_allowed_misses,
        dilate_voxels=1,  # a voxel of slack: the skipping grid must never cut the surface
    )
    if not bool(hull.any()):
        raise ViewsFolderError(
            "the views' masks do not agree on any common volume: cameras and views do not match"
        )
    return OccupancyGrid(hull, preset.field.bound)


def _fit_to_tight_hull(
    field_: NeuSField,
    views: ViewSet,
    masks: np.ndarray,
    preset: Preset,
    device: torch.device,
    gen: torch.Generator,
    graphed: GraphedSteps | None = None,
) -> None:
    """:func:`fit_hull` on the undilated hull (the distance transform runs on the CPU, so at most 128^3)."""
    res = min(128, preset.occupancy_res)
    tight = visual_hull(
        masks,
        views.cameras,
        res,
        preset.field.bound,
        device,
        dilate_px=1,
        allowed_misses=preset.hull_allowed_misses,
        dilate_voxels=0,
    )
    fit_hull(field_, hull_sdf(tight, preset.field.bound), preset.field.bound, preset, gen, graphed)


@dataclass(frozen=True)
class _Schedule:
    """What changes with the step: active hash levels, NeuS' sharpness floor, when the occupancy
    grid is narrowed, when the per-ray cap and the view weights start."""

    preset: Preset
    n_levels: int
    s0: float  # the field's initial sharpness

    @property
    def level_every(self) -> int:
        p = self.preset
        return max(1, int(p.steps * p.levels_done_at / max(1, self.n_levels - p.start_levels)))

    @property
    def ramp_steps(self) -> int:
        return max(1, int(self.preset.steps * self.preset.level_ramp))

    def levels(self, step: int) -> int:
        return self.preset.start_levels + step // self.level_every

    def updates_occupancy(self, step: int) -> bool:
        start = int(self.preset.steps * self.preset.occupancy_start)
        return step >= start and (step - start) % self.preset.occupancy_every == 0

    def inv_s_floor(self, step: int) -> float:
        s1 = max(self.s0, self.preset.min_inv_s_end)
        return self.s0 * (s1 / self.s0) ** (step / self.preset.steps)

    def cos_anneal(self, step: int) -> float:
        return min(1.0, step / max(1.0, self.preset.cos_anneal_end * self.preset.steps))

    def max_per_ray(self, step: int) -> int | None:
        capped = step >= int(self.preset.steps * self.preset.per_ray_cap_from)
        return self.preset.max_samples_per_ray if capped else None

    def weighs_views(self, step: int) -> bool:
        return step >= int(self.preset.steps * self.preset.view_weight_from)

    def moves_poses(self, step: int) -> bool:
        return step >= int(self.preset.steps * self.preset.pose_from)


class _Optimiser:
    """Adam over the hash grid, the MLPs, NeuS' variance and (if on) the per-view colour transforms
    and camera corrections, each group with its own learning rate; plus the running per-view
    residuals (if on)."""

    def __init__(
        self,
        field_: NeuSField,
        preset: Preset,
        centres: torch.Tensor,
        device: torch.device,
        capturable: bool = False,
        all_levels: bool = False,
    ) -> None:
        num_views = centres.shape[0]  # the views' camera centres (N, 3)
        grid_params = [p for n, p in field_.named_parameters() if n.startswith("sdf_net.encoding")]
        var_params = list(field_.inv_s.parameters())
        ids = {id(p) for p in grid_params + var_params}
        mlp_params = [p for p in field_.parameters() if id(p) not in ids]
        groups = [
            {"params": grid_params, "lr": preset.lr if preset.grid_lr is None else preset.grid_lr},
            {"params": mlp_params, "lr": preset.lr},
            {"params": var_params, "lr": preset.lr_variance},
        ]
        self.appearance = None
        if preset.appearance != "none":
            self.appearance = ViewAppearance(num_views, preset.appearance, preset.appearance_anchor, device)
            groups.append({"params": list(self.appearance.parameters()), "lr": preset.appearance_lr})
        self.poses = None
        if preset.pose_refine:
            self.poses = ViewPoses(centres, device)
            groups.append({"params": list(self.poses.parameters()), "lr": preset.pose_lr, "poses": True})
        self.base_lrs = [g["lr"] for g in groups]
        self.adam = _capturable_adam(groups, device) if capturable else _adam(groups)
        self.residuals = (
            _ViewResiduals(num_views, preset.view_weight_power, preset.view_weight_min, device)
            if preset.view_weight_power > 0
            else None
        )
        self.preset = preset
        self.all_levels = all_levels

    def follow_schedule(self, field_: NeuSField, sched: _Schedule, step: int, device: torch.device) -> None:
        """Activate this step's hash levels (and their ramp weights) and set the learning rates.

        With ``all_levels`` (the static and graph engines) every level is computed from the first
        step and the schedule only weighs them, 0 until a level switches on (:func:`_level_weights`
        with a one-step ramp when the preset has none): the same features, Jacobians and gradients
        as computing only the active levels (a level at weight 0 adds exact zeros and gets a zero
        gradient, which leaves Adam's state and its weights at rest), but the step's kernels stay the
        same as levels switch on. Why: under CUDA graphs every new level was a new graph, and each
        costs an eager step and a capture: about 15 of them took 2.9 s of standard's 9.9 s of
        pre-fit and step loop (H100, session 12), against a fraction of that for computing the early
        steps' unused levels."""
        p = self.preset
        computed = sched.n_levels if self.all_levels else sched.levels(step)
        field_.sdf_net.encoding.set_active_levels(computed)
        if self.all_levels or p.level_ramp > 0:
            field_.sdf_net.set_level_weights(
                _level_weights(
                    step, sched.n_levels, p.start_levels, sched.level_every, sched.ramp_steps, device
                )
            )
        f = _lr_factor(step, p.steps, p.warmup)
        for g, base in zip(self.adam.param_groups, self.base_lrs, strict=True):
            lr = base * f if sched.moves_poses(step) or not g.get("poses") else 0.0
            if isinstance(g["lr"], torch.Tensor):
                g["lr"].fill_(lr)
            else:
                g["lr"] = lr

    def minimise(self, loss: torch.Tensor) -> None:
        self.adam.zero_grad()
        loss.backward()
        self.adam.step()


def _step_loss(
    field_: NeuSField,
    grid: OccupancyGrid,
    hull_box: tuple[torch.Tensor, torch.Tensor],
    rays: RayPool,
    opt: _Optimiser,
    knobs: _StepKnobs,
    gen: torch.Generator,
    device: torch.device,
    static: _StaticShapes | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], RenderOutput, torch.Tensor]:
    """Render one random batch of rays and return (loss, its named parts, the render, the sharpness
    used). With ``static`` the samples are padded to fixed shapes (:func:`sample_rays_static`), and
    every mean below is taken over the real samples and the rays within the budget."""
    preset = opt.preset
    idx = torch.randint(rays.origins.shape[0], (preset.rays_per_batch,), generator=gen, device=device)
    floor = knobs.inv_s_floor
    inv_s = torch.maximum(
        field_.inv_s(), floor if isinstance(floor, torch.Tensor) else torch.tensor(floor, device=device)
    )
    origins, dirs = rays.origins[idx], rays.dirs[idx]
    # each correction's anchored offsets, once per step: the rays and the penalty both use them
    pose_offsets = None if opt.poses is None else opt.poses.offsets()
    colour_offsets = None if opt.appearance is None else opt.appearance.offsets()
    if opt.poses is not None:
        origins, dirs = opt.poses.apply(origins, dirs, rays.view[idx], pose_offsets)
    if static is None:
        samples = sample_rays(
            origins.detach(),
            dirs.detach(),
            grid,
            preset.step_size,
            generator=gen,
            max_samples=preset.max_samples_per_batch,
            max_per_ray=knobs.max_per_ray,
        )
    else:
        samples = sample_rays_static(
            origins.detach(),
            dirs.detach(),
            grid,
            preset.step_size,
            static.bbox,
            static.steps,
            static.pad_to,
            generator=gen,
            max_per_ray=knobs.max_per_ray,
        )
    # the eikonal term's random points (the hull's box) go through the field in the samples' pass
    lo, hi = hull_box
    rand_pts = lo + (hi - lo) * torch.rand(preset.eikonal_points, 3, generator=gen, device=device)
    out = render_samples(
        field_,
        samples,
        origins,
        dirs,
        preset.step_size,
        knobs.cos_anneal,
        inv_s=inv_s,
        extra_points=rand_pts,
    )
    idx = idx[: out.num_rays]
    view, target, coverage = rays.view[idx], rays.rgb[idx], rays.mask[idx]
    appearance, residuals = opt.appearance, opt.residuals
    pred = (
        out.rgb
        if appearance is None
        else appearance.apply(out.rgb, out.opacity, view, offsets=colour_offsets)
    )
    charb = torch.sqrt(((pred - target) ** 2).sum(-1) + 1e-3)
    opacity = out.opacity.clamp(1e-4, 1.0 - 1e-4)
    kept = None if out.kept is None else out.kept.to(charb.dtype)  # rays within the sample budget
    if residuals is not None:
        residuals.update(
            charb.detach(), view, coverage > 0.5 if kept is None else (coverage > 0.5) & out.kept
        )
    # the static and graph engines weigh every step's rays, by 1 until the view weights start: one
    # formula before and after, so their start is no new CUDA graph (``weighs_views`` is a 0-d bool
    # tensor under graphs, refilled before each replay; ``static`` first, so it is never a Python test)
    if residuals is not None and (static is not None or knobs.weighs_views):
        vw = residuals.weights()[view]
        on = knobs.weighs_views
        if isinstance(on, torch.Tensor):
            vw = torch.where(on, vw, torch.ones_like(vw))
        elif not on:
            vw = torch.ones_like(vw)
        vw = vw if kept is None else vw * kept
        loss_rgb = (charb * vw).sum() / vw.sum().clamp_min(1e-6)
    else:
        loss_rgb = charb.mean() if kept is None else _masked_mean(charb, kept)
    ew = None if rays.edge_weight is None else rays.edge_weight[idx]  # the mask loss's ray weights
    if kept is not None:
        ew = kept if ew is None else ew * kept
    if ew is None:
        loss_mask = F.binary_cross_entropy(opacity, coverage)
    else:
        bce = F.binary_cross_entropy(opacity, coverage, reduction="none")
        loss_mask = (bce * ew).sum() / ew.sum().clamp_min(1e-6)
    eikonal = (out.all_grad.norm(dim=-1) - 1.0) ** 2  # the samples', then the random points'
    if out.valid is None:
        loss_eik = eikonal.mean()
    else:  # the padding's rows are left out
        loss_eik = _masked_mean(eikonal, torch.cat([out.valid, out.valid.new_ones(preset.eikonal_points)]))
    # Skipped space in front of a ray's first sample is empty, so the SDF there must be >= 0.
    # Without this the field can make the whole band negative and let its boundary act
    # as the surface (a negative section renders opaque), inflating thin objects.
    entry = out.entry_sdf  # NaN for rays without samples: left out of the mean without a host wait
    loss_entry = torch.relu(-entry).nansum() / (~torch.isnan(entry)).sum().clamp_min(1)
    loss = (
        preset.w_rgb * loss_rgb
        + preset.w_mask * loss_mask
        + preset.w_eikonal * loss_eik
        + preset.w_entry * loss_entry
    )
    parts = {"rgb": loss_rgb, "mask": loss_mask, "eikonal": loss_eik}
    if preset.w_normal_smooth > 0:
        loss_smooth = _normal_smoothness(field_, out, preset, gen)
        loss = loss + preset.w_normal_smooth * knobs.smooth_fade * loss_smooth
        parts["normal_smooth"] = loss_smooth
    if appearance is not None:
        loss_app = appearance.penalty(colour_offsets)
        loss = loss + preset.w_appearance * loss_app
        parts["appearance"] = loss_app
    if opt.poses is not None:
        loss_pose = opt.poses.penalty(pose_offsets)
        loss = loss + preset.w_pose * loss_pose
        parts["pose"] = loss_pose
    return loss, parts, out, inv_s


def _masked_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``weights`` (0/1, bool or float) is set, without a host wait."""
    weights = weights.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def _history_entry(step: int, record: dict[str, torch.Tensor | int], seconds: float) -> dict:
    """One logged step: the loss and its parts, the sharpness, the samples and rays used."""
    values = {k: float(v.item()) if isinstance(v, torch.Tensor) else v for k, v in record.items()}
    values["samples"], values["rays"] = int(values["samples"]), int(values["rays"])
    return {"step": step, **values, "seconds": seconds}


@dataclass(frozen=True)
class _SmoothingPoints:
    """Where the normal smoothing compares normals: near-surface samples (their index among the
    render's samples) and a small random step away from each (no gradient), and whether any sample
    had weight to draw them by."""

    pick: torch.Tensor  # (n,) long
    near: torch.Tensor  # (n, 3)
    has_mass: torch.Tensor  # () bool


def _draw_smoothing_points(
    out: RenderOutput, preset: Preset, gen: torch.Generator
) -> _SmoothingPoints | None:
    """Samples drawn by their rendering weight, so the smoothing acts where the surface is, and a
    step of ``normal_smooth_eps`` from each."""
    weights = out.weights.detach() if out.weights is not None else None
    if weights is None or weights.numel() == 0:
        return None
    # no host synchronisation to find out whether any sample has weight (see _ViewResiduals.weights):
    # without any, the samples are drawn uniformly (multinomial needs some mass) and the term is 0
    has_mass = weights.sum() > 0
    n = preset.normal_smooth_points
    mass = weights + (~has_mass).to(weights.dtype)
    if out.valid is None:
        pick = torch.multinomial(mass, n, replacement=True, generator=gen)
    else:  # padded samples (the static step): draws a CUDA graph can hold
        pick = _inverse_cdf_picks(mass, n, gen)
    points = out.points[pick].detach()
    step = torch.randn(n, 3, generator=gen, device=gen.device).to(points.device)
    if preset.normal_smooth_offset != "sphere":
        # A step against the normal can cross to the far face of a part thinner than 2 eps, where
        # the normal flips: such parts would be penalised for being thin. "outward" mirrors those
        # steps to the outside (which keeps the term's hold on the field off the surface, where a
        # learned SDF's gradient may still bend); "tangent" drops the normal component altogether.
        normal = F.normalize(out.grad[pick].detach(), dim=-1)
        along = (step * normal).sum(-1, keepdim=True)
        if preset.normal_smooth_offset == "tangent":
            step = step - along * normal
        else:
            step = step - 2.0 * along.clamp(max=0.0) * normal
    step = F.normalize(step, dim=-1) * preset.normal_smooth_eps
    return _SmoothingPoints(pick, points + step, has_mass)


def _inverse_cdf_picks(mass: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` indices drawn with replacement in proportion to ``mass`` (>= 0, some > 0), by inverting
    its cumulative sum at uniform draws: entries of zero mass (the padding) are never drawn. Used by
    the static step instead of ``torch.multinomial``, whose capture in a CUDA graph is not assured."""
    cdf = mass.cumsum(0)
    u = torch.rand(n, generator=gen, device=gen.device).to(mass.device) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=mass.shape[0] - 1)


def _normal_smoothness(
    field_: NeuSField, out: RenderOutput, preset: Preset, gen: torch.Generator
) -> torch.Tensor:
    """The normal smoothing term of this step: the normals of samples drawn from this very render
    against a pass of the field at a small step from each.

    The first normals are the samples' own (``out.grad``), which follow the sample positions and so
    the learned camera corrections: the term pulls on the corrections as well as on the surface.
    Session 7 evaluated both normals in the next step's pass instead, at points drawn one step
    earlier (no second pass, ~120 fewer GPU launches per step); on the draft robustness benchmark at
    four fresh seeds that lost 0.5 dB of texture PSNR (3 standard errors, 22 pairs) with the same
    geometry, and this same-step form won it back (benchmarks/RESULTS.md, session 8). With CUDA graphs
    (``--cuda-graph``) the second pass costs no launches.
    """
    points = _draw_smoothing_points(out, preset, gen)
    if points is None:
        return out.grad.new_zeros(())
    _, _, grad_near = field_.sdf_net(points.near, with_grad=True)
    return _smoothness_loss(out.grad[points.pick], grad_near, points.has_mass)


def _smoothness_loss(
    grad_here: torch.Tensor, grad_near: torch.Tensor, has_mass: torch.Tensor
) -> torch.Tensor:
    """Mean squared difference of the unit normals at the points and a small step away from them.

    A curvature penalty at the scale of ``eps`` that irons out the bumps of about that size a fast
    grid fits to views that disagree. Its weight fades over training (see _step_loss) so that the
    last steps can still sharpen the detail the views agree on.
    """
    diff = F.normalize(grad_here, dim=-1) - F.normalize(grad_near, dim=-1)
    return diff.square().sum(-1).mean() * has_mass
