"""Zero123 / Zero123-XL (the official ``LatentDiffusion``): the network, assembled from the shared parts.

The network is the SD-1 UNet *without* depth attention (:mod:`sd3d.models.unet`), the kl-f8 VAE
(:mod:`sd3d.models.vae`) and the CLIP ViT-L/14 image tower (:mod:`sd3d.models.clip`), plus
``cc_projection`` = Linear(768 + 4, 768) on ``[CLIP embedding, pose vector T]`` giving the single
cross-attention token. Module names follow the official prefixes, so most keys map to themselves.

Loading a checkpoint (the official key mapping, EMA, buffers) is :mod:`sd3d.models.zero123_checkpoint`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from sd3d.models.clip import CLIPImageEncoder
from sd3d.models.configs import LatentDiffusionConfig, UNetConfig
from sd3d.models.configs import tiny_config as _syncdreamer_tiny
from sd3d.models.unet import GroupNorm32, UNetModel
from sd3d.models.vae import AutoencoderKL


def _zero123_unet() -> UNetConfig:
    return UNetConfig(depth_attention_dims=None)


@dataclass(frozen=True)
class Zero123Config(LatentDiffusionConfig):
    """The official ``sd-objaverse-finetune-c_concat-256.yaml`` (Zero123 and Zero123-XL alike) by default."""

    unet: UNetConfig = field(default_factory=_zero123_unet)
    pose_dim: int = 4

    def validate(self) -> None:
        """``ValueError`` for sizes that cannot fit together (a programming error, not user input)."""
        if self.unet.depth_attention_dims is not None:
            raise ValueError("Zero123's UNet has no depth attention (depth_attention_dims must be None)")
        if self.unet.in_channels != 2 * self.latent_channels:
            raise ValueError("the UNet takes the noisy latent and the concat latent (2 x latent channels)")
        if self.unet.context_dim != self.clip.embed_dim:
            raise ValueError("the cross-attention context is the projected CLIP embedding (same width)")


def official_config() -> Zero123Config:
    return Zero123Config()


def tiny_config() -> Zero123Config:
    """SyncDreamer's tiny test sizes without depth attention: the official geometry, a tiny network."""
    small = _syncdreamer_tiny()
    return Zero123Config(
        vae=small.vae, clip=small.clip, unet=replace(small.unet, depth_attention_dims=None), name="tiny"
    )


CONFIGS = {"official": official_config, "tiny": tiny_config}


# --------------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------------
class DiffusionWrapper(nn.Module):
    """``model`` (conditioning_key 'hybrid'): UNet on ``[noisy latent, concat latent]`` with one context token."""

    def __init__(self, config: Zero123Config) -> None:
        super().__init__()
        self.diffusion_model = UNetModel(config.unet)

    def forward(
        self, x_noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, concat: torch.Tensor
    ) -> torch.Tensor:
        x = torch.cat([x_noisy, concat.to(x_noisy.dtype)], dim=1)
        return self.diffusion_model(x, timesteps, context.to(x_noisy.dtype))


@dataclass(frozen=True)
class ViewEncoding:
    """What a conditioning image contributes, constant over the sampling loop.

    ``clip_embed``: (B,1,E) CLIP image embedding. ``concat_latent``: (B,4,h,w) VAE posterior *mean*,
    unscaled (Zero123 does not multiply it by 0.18215; the UNet's channels 4..7 see it as is).
    """

    clip_embed: torch.Tensor
    concat_latent: torch.Tensor


class Zero123(nn.Module):
    """``first_stage_model`` (VAE), ``cond_stage_model`` (CLIP), ``cc_projection``, ``model.diffusion_model``.

    Numerics: CLIP and ``cc_projection`` always run in float32 (as officially); the UNet and the VAE
    run in the dtype their weights were cast to (:meth:`to_inference`), returning float32.
    """

    def __init__(self, config: Zero123Config | None = None) -> None:
        super().__init__()
        config = Zero123Config() if config is None else config
        config.validate()
        self.config = config
        emb = config.clip.embed_dim
        self.first_stage_model = AutoencoderKL(config.vae)
        self.cond_stage_model = CLIPImageEncoder(config.clip)
        self.cc_projection = nn.Linear(emb + config.pose_dim, emb)
        self.model = DiffusionWrapper(config)
        # Which UNet copy the weights came from ('ema' or 'raw'); set by the loader.
        self.unet_weights = "unset"

    @property
    def device(self) -> torch.device:
        return self.cc_projection.weight.device

    @property
    def unet_dtype(self) -> torch.dtype:
        return self.model.diffusion_model.out[2].weight.dtype

    @property
    def scale_factor(self) -> float:
        return self.config.vae.scale_factor

    def to_inference(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Zero123:
        """Move to ``device``; the UNet and VAE get ``dtype``, CLIP and ``cc_projection`` stay float32."""

        self.to(device)
        self.model.to(dtype)
        self.first_stage_model.to(dtype)
        for module in self.model.modules():
            if isinstance(module, GroupNorm32):  # computes in float32 (CompVis), so keeps float32 weights
                module.float()
        return self

    # conditioning ----------------------------------------------------------------------------------
    def encode_clip(self, image: torch.Tensor) -> torch.Tensor:
        """[-1,1] images (B,3,H,W) -> (B,1,E) float32."""
        return self.cond_stage_model(image.float())

    def encode_posterior(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[-1,1] images -> VAE posterior mean and clamped logvar (float32)."""
        vae_dtype = self.first_stage_model.quant_conv.weight.dtype
        mean, logvar = self.first_stage_model.encode(image.to(vae_dtype))
        return mean.float(), logvar.float()

    def encode_view(self, image: torch.Tensor) -> ViewEncoding:
        """Both conditioning tensors of a [-1,1] image batch: CLIP embedding and posterior mean."""
        return ViewEncoding(clip_embed=self.encode_clip(image), concat_latent=self.encode_posterior(image)[0])

    def project(self, clip_embed: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """``cc_projection([clip (B,1,E), T (B,1,4)])`` -> the context token (B,1,E), float32."""
        pose = pose.reshape(pose.shape[0], 1, -1).to(clip_embed.device, torch.float32)
        return self.cc_projection(torch.cat([clip_embed.float(), pose], dim=-1))

    # denoising -------------------------------------------------------------------------------------
    def eps(
        self, x_noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, concat: torch.Tensor
    ) -> torch.Tensor:
        """Plain UNet noise prediction (float32) for a batch; ``timesteps`` (B,) integer."""
        dtype = self.unet_dtype
        return self.model(x_noisy.to(dtype), timesteps, context.to(dtype), concat.to(dtype)).float()

    def eps_branches(
        self, x_noisy: torch.Tensor, timestep: int, context: torch.Tensor, concat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eps_uncond, eps_cond)`` from one doubled batch ordered [uncond, cond], as officially.

        The null condition is an all-zero context token (*after* ``cc_projection``) and an all-zero
        concat latent (the demo's inference rule, not the training-time dropout's).
        """
        b = x_noisy.shape[0]
        x2 = torch.cat([x_noisy, x_noisy], dim=0)
        t2 = torch.full((2 * b,), int(timestep), dtype=torch.long, device=x_noisy.device)
        ctx2 = torch.cat([torch.zeros_like(context), context], dim=0)
        concat2 = torch.cat([torch.zeros_like(concat), concat], dim=0)
        e_uncond, e_cond = self.eps(x2, t2, ctx2, concat2).chunk(2)
        return e_uncond, e_cond

    def guided_eps(
        self,
        x_noisy: torch.Tensor,
        timestep: int,
        context: torch.Tensor,
        concat: torch.Tensor,
        cfg_scale: float,
    ) -> torch.Tensor:
        """Classifier-free guided eps ``e_u + s (e_c - e_u)``; ``s == 1`` runs the conditional branch only."""
        if cfg_scale == 1.0:
            t = torch.full((x_noisy.shape[0],), int(timestep), dtype=torch.long, device=x_noisy.device)
            return self.eps(x_noisy, t, context, concat)
        e_uncond, e_cond = self.eps_branches(x_noisy, timestep, context, concat)
        return e_uncond + cfg_scale * (e_cond - e_uncond)

    # decoding --------------------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
        """Scaled latents (M,4,h,w) -> images (M,3,H,W) float32, roughly in [-1,1], decoded in batches."""
        vae_dtype = self.first_stage_model.post_quant_conv.weight.dtype
        out = [
            self.first_stage_model.decode(
                (latents[i : i + batch_size] / self.scale_factor).to(vae_dtype)
            ).float()
            for i in range(0, latents.shape[0], batch_size)
        ]
        return torch.cat(out, dim=0)


def images_to_uint8(images: torch.Tensor) -> np.ndarray:
    """The demo's output quantisation: ``uint8(255 * clamp((x + 1) / 2, 0, 1))`` by truncation, NHWC."""
    x = torch.clamp((images.detach().float() + 1.0) / 2.0, min=0.0, max=1.0)
    return (255.0 * x.permute(0, 2, 3, 1).cpu().numpy()).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# state dict
# --------------------------------------------------------------------------------------------------
