"""FLOP counts of a SyncDreamer generation, measured by running the model on the ``meta`` device.

``torch.utils.flop_counter.FlopCounterMode`` counts the matrix work (convolutions, matrix products,
attention) of the real code path, so the numbers follow the code (the single-token cross-attention
shortcut, the re-associated depth attention) rather than a hand-written formula. The meta device
allocates nothing and computes nothing: counting the official-size model takes about a second.
Elementwise work, norms and ``grid_sample`` are not counted (small next to the matrix work).

The "bf16 floor" of a generation is its FLOPs over the GPU's dense bf16 rate (about 790 TFLOP/s
measured on the H100/H200 here): no implementation can be faster on that GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from sd3d.models.configs import SyncDreamerConfig
from sd3d.models.syncdreamer import Conditioning
from sd3d.models.syncdreamer_checkpoint import build_meta_model

BF16_DENSE_FLOPS_H100 = 790e12

_DEPTH = re.compile(r"^UNetWrapper\.diffusion_model\.(middle_conditions|output_conditions\.\d+)$")


@dataclass(frozen=True)
class GenerationFlops:
    """FLOPs of one generation (``samples`` x 16 views); ``step_*`` are per denoising step."""

    step_unet: float  # the UNet at 2x batch (classifier-free guidance), depth attention excluded
    step_depth_attention: float  # the 10 DepthTransformers (conditional rows only)
    step_volume: float  # target encoder + spatial 3D net + frustum 3D net
    conditioning: float  # VAE encoder + CLIP + cc_projection, once
    decode: float  # VAE decoder for all views, once
    steps: int

    @property
    def step(self) -> float:
        return self.step_unet + self.step_depth_attention + self.step_volume

    @property
    def total(self) -> float:
        return self.conditioning + self.steps * self.step + self.decode

    def floor_seconds(self, rate: float = BF16_DENSE_FLOPS_H100) -> float:
        return self.total / rate


def _meta_model(config: SyncDreamerConfig):

    return build_meta_model(config).to("meta")


def count_generation_flops(
    config: SyncDreamerConfig | None = None, samples: int = 1, steps: int = 50, cfg_scale: float = 2.0
) -> GenerationFlops:
    """Count one generation's matrix FLOPs for ``config`` (default: the official model)."""

    config = SyncDreamerConfig() if config is None else config
    model = _meta_model(config)
    meta = torch.device("meta")
    B, N = samples, config.view_num
    size, channels = config.latent_size, config.latent_channels
    image = torch.empty(B, 3, config.image_size, config.image_size, device=meta)

    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            mean, logvar = model.encode_posterior(image)
            clip = model.encode_clip(image)
            contexts = model.project_contexts(clip, torch.empty(B, N, 4, device=meta))
        conditioning = counter.get_total_flops()

        cond = Conditioning(
            input_latent=mean,
            concat_latent=mean,
            clip_embed=clip,
            viewpoint=torch.empty(B, N, 4, device=meta),
            contexts=contexts,
        )
        x_t = torch.empty(B, N, channels, size, size, device=meta)
        with FlopCounterMode(display=False) as counter:
            model.predict_eps(x_t, 981, cond, cfg_scale, N)
        counts = counter.get_flop_counts()
        step_total = counter.get_total_flops()

        with FlopCounterMode(display=False) as counter:
            model.decode_latents(torch.empty(B * N, channels, size, size, device=meta), B * N)
        decode = counter.get_total_flops()

    def module_total(name: str) -> float:
        return float(sum(counts.get(name, {}).values()))

    depth = sum(module_total(k) for k in counts if _DEPTH.match(k))
    unet = module_total("UNetWrapper") - depth
    return GenerationFlops(
        step_unet=unet,
        step_depth_attention=depth,
        step_volume=step_total - unet - depth,
        conditioning=float(conditioning),
        decode=float(decode),
        steps=steps,
    )
