"""The golden synthetic fixture's call sequence (docs/reference/syncdreamer.md §7.3), on any device.

Shared by the CPU parity test and the CUDA parity check of ``benchmarks/generate.py``: given a
model loaded with the synthetic weights of docs/reference/syncdreamer.md §7.2 and the fixture arrays, compute every stored
stage with our code and compare. Tolerances (docs/reference/syncdreamer.md §7.4): encoders and volumes rel 1e-4, eps /
x_prev / decoded rel 1e-3, with ``rel = max|ours - ref| / max|ref|``; volume statistics
(sum, abs-sum, L2) are compared one by one with rtol 1e-4.

The fixture's ``frustum_feats_*`` arrays are, to round-off, the frustum net applied to an all-zero
input for all 16 targets (not the sampled spatial volume of the first chunk, as its side-car says;
its eps arrays were computed with the real input). They are reproduced that way, and
``eps_view2_zero_volume`` (view 2's unguided eps with the spatial volume zeroed) shows that the eps
checks do cover the volume sampling: it misses the fixture by ~1e-2.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from sd3d.models.syncdreamer import SyncDreamer
from sd3d.sampling.ddim import ddim_step, ddim_tables
from sd3d.sampling.schedule import scaled_linear_schedule

ENCODER_RTOL = 1e-4
OUTPUT_RTOL = 1e-3
TIMESTEP, INDEX, CFG, BATCH_VIEW_NUM = 981, 49, 2.0, 4

ENCODER_STAGES = (
    "vae_posterior_mean",
    "vae_posterior_logvar_clamped",
    "clip_preprocessed_224",
    "clip_image_embed",
    "viewpoint_embedding",
    "t_embed_981",
    "cc_projection_context_16views",
    "target_encoder_out_view0",
    "spatial_volume_sub",
) + tuple(f"frustum_feats_{w}_target0_sub" for w in (32, 16, 8, 4))
STATS_STAGES = ("spatial_volume_stats",) + tuple(
    f"frustum_feats_{w}_stats_targets0to3" for w in (32, 16, 8, 4)
)
OUTPUT_STAGES = (
    "eps_cfg2_all16",
    "x_prev_step49_index49_t981",
    "eps_nocfg_views0to3",
    "decoded_x_prev_view0",
)


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise ValueError(f"shape {ours.shape} != {ref.shape}")
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def stats_err(ours, ref) -> float:
    """Largest relative error among the statistics, each relative to itself."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float((np.abs(ours - ref) / np.abs(ref)).max())


def _stats(t: torch.Tensor) -> np.ndarray:
    t = t.double()
    return np.array([t.sum().item(), t.abs().sum().item(), t.norm().item()])


@torch.no_grad()
def run_stages(model: SyncDreamer, golden: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our value for every stored stage, plus ``eps_view2_zero_volume`` (see the module doc)."""
    dev = model.device
    out: dict[str, object] = {}

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(golden[name])).to(dev)

    image = tensor("input_image_alarm_crop200").permute(2, 0, 1)[None]
    mean, logvar = model.encode_posterior(image)
    out["vae_posterior_mean"], out["vae_posterior_logvar_clamped"] = mean[0], logvar[0]
    out["clip_preprocessed_224"] = model.clip_image_encoder.preprocess(image)[0]
    cond = model.conditioning_from(mean, logvar, model.encode_clip(image), [30.0], sample_posterior=False)
    out["clip_image_embed"] = cond.clip_embed[0, 0]
    out["viewpoint_embedding"] = cond.viewpoint[0]
    out["cc_projection_context_16views"] = cond.contexts[0, :, 0]
    t_embed = model.embed_time(torch.tensor([TIMESTEP], device=dev))
    out["t_embed_981"] = t_embed[0]

    x_T = tensor("x_T")[None]
    out["target_encoder_out_view0"] = model.spatial_volume.target_encoder(
        x_T[:, 0], t_embed, cond.viewpoint[:, 0]
    )[0]
    volume = model.build_spatial_volume(x_T, t_embed, cond)
    out["spatial_volume_sub"] = volume[0, ::8, ::4, ::4, ::4]
    out["spatial_volume_stats"] = _stats(volume)

    frustum_net = model.spatial_volume.frustum_volume_feats
    sums: dict[int, np.ndarray] = {}
    size, depth = model.config.latent_size, model.config.volume.frustum_depth
    for start in range(0, model.config.view_num, 4):
        zeros = torch.zeros(4, volume.shape[1], depth, size, size, device=dev)
        feats = frustum_net(zeros, t_embed.expand(4, -1), cond.viewpoint[0, start : start + 4])
        for width, f in feats.items():
            s = _stats(f)
            sums[width] = sums.get(width, 0) + np.array([s[0], s[1], s[2] ** 2])
            if start == 0:
                sub = f[0, ::8, ::4, ::4, ::4] if width in (32, 16) else f[0, ::8]
                out[f"frustum_feats_{width}_target0_sub"] = sub
        del feats
    for width, s in sums.items():
        out[f"frustum_feats_{width}_stats_targets0to3"] = np.array([s[0], s[1], np.sqrt(s[2])])

    eps = model.eps_from_volume(x_T, TIMESTEP, t_embed, volume, cond, CFG, BATCH_VIEW_NUM)
    out["eps_cfg2_all16"] = eps[0]
    tables = ddim_tables(scaled_linear_schedule(), 50, eta=1.0)
    x_prev = ddim_step(x_T, eps, INDEX, tables, tensor("injected_noise_step49")[None])
    out["x_prev_step49_index49_t981"] = x_prev[0]
    out["eps_nocfg_views0to3"] = model.eps_from_volume(
        x_T, TIMESTEP, t_embed, volume, cond, 1.0, BATCH_VIEW_NUM, views=range(4)
    )[0]
    out["eps_view2_zero_volume"] = model.eps_from_volume(
        x_T, TIMESTEP, t_embed, torch.zeros_like(volume), cond, 1.0, 1, views=[2]
    )[0, 0]
    out["decoded_x_prev_view0"] = model.decode_latents(x_prev[:, 0])[0]
    return {k: (v.float().cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}


def compare(
    stages: Mapping[str, np.ndarray], golden: Mapping[str, np.ndarray]
) -> list[tuple[str, float, float]]:
    """(stage, error, tolerance) for every stage; the sensitivity row must be *above* its bound."""
    rows = [(n, rel_err(stages[n], golden[n]), ENCODER_RTOL) for n in ENCODER_STAGES]
    rows += [(n, stats_err(stages[n], golden[n]), ENCODER_RTOL) for n in STATS_STAGES]
    rows += [(n, rel_err(stages[n], golden[n]), OUTPUT_RTOL) for n in OUTPUT_STAGES]
    return rows
