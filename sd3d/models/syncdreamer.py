"""SyncDreamer (``SyncMultiviewDiffusion``): the parts assembled under the official state-dict prefixes.

``SyncDreamer`` holds ``time_embed``, ``first_stage_model`` (VAE), ``clip_image_encoder``,
``cc_projection``, ``spatial_volume`` and ``model.diffusion_model`` (UNet with depth-wise
attention). It offers the two things a sampler needs:

* :meth:`SyncDreamer.condition` -- everything that depends only on the input image and is constant
  over the sampling loop (input latent, CLIP embedding, viewpoint embeddings, the 16 projected
  contexts), computed once per input;
* :meth:`SyncDreamer.predict_eps` -- the noise prediction for all 16 views at one timestep: the
  spatial volume is rebuilt from all current noisy views (the synchronisation), then views are run
  through the frustum net and the UNet in chunks of ``batch_view_num`` (a memory knob that does not
  change the result), with classifier-free guidance that zeroes the three conditions (context token
  after ``cc_projection``, frustum features, concat latent).

Camera geometry (the projection grids of both volumes) is computed once at construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sd3d.core import cameras
from sd3d.models.clip import CLIPImageEncoder
from sd3d.models.configs import SyncDreamerConfig
from sd3d.models.unet import UNetModel, timestep_embedding
from sd3d.models.vae import AutoencoderKL
from sd3d.models.volume import SpatialVolumeNet, frustum_sample_grid, repeat_rows, spatial_sample_grid


@dataclass(frozen=True)
class Conditioning:
    """Per-input tensors, constant across all denoising steps (B inputs, N target views).

    ``input_latent``: (B,4,h,w) VAE posterior sample (or mean) times the scale factor (0.18215).
    ``concat_latent``: (B,4,h,w) ``input_latent / scale_factor``, what the UNet's channels 4..7 see.
    ``clip_embed``: (B,1,E) CLIP image embedding. ``viewpoint``: (B,N,4) viewpoint embeddings.
    ``contexts``: (B,N,1,E) ``cc_projection([clip, viewpoint_n])``, the cross-attention token per view.
    """

    input_latent: torch.Tensor
    concat_latent: torch.Tensor
    clip_embed: torch.Tensor
    viewpoint: torch.Tensor
    contexts: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.input_latent.shape[0])


class UNetWrapper(nn.Module):
    """``model``: concatenates the noisy latent with the (unscaled) input latent for the UNet."""

    def __init__(self, config: SyncDreamerConfig) -> None:
        super().__init__()
        self.diffusion_model = UNetModel(config.unet)
        self.channels_last = False  # NHWC activations (sd3d.models.inference.set_channels_last_)

    def forward(
        self,
        x_noisy: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        source_dict: dict[int, torch.Tensor],
        concat_latent: torch.Tensor,
    ) -> torch.Tensor:
        x = torch.cat([x_noisy, concat_latent.to(x_noisy.dtype)], dim=1)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.diffusion_model(x, timesteps, context, source_dict=source_dict)


class SyncDreamer(nn.Module):
    """The whole model with the official module names; load weights with
    :func:`sd3d.models.syncdreamer_checkpoint.load_syncdreamer` (building it directly gives random weights)."""

    def __init__(self, config: SyncDreamerConfig | None = None) -> None:
        super().__init__()
        config = SyncDreamerConfig() if config is None else config
        config.validate()
        self.config = config
        td, emb = config.volume.time_dim, config.clip.embed_dim
        self.time_embed = nn.Sequential(nn.Linear(td, td), nn.SiLU(), nn.Linear(td, td))
        self.first_stage_model = AutoencoderKL(config.vae)
        self.clip_image_encoder = CLIPImageEncoder(config.clip)
        self.cc_projection = nn.Linear(emb + config.volume.view_dim, emb)
        self.spatial_volume = SpatialVolumeNet(config.volume, config.view_num, config.latent_channels)
        self.model = UNetWrapper(config)
        # True while the conditioning encoders live in pinned host memory (sd3d.models.inference).
        self.conditioning_offloaded = False
        self.step_modules_compiled = False  # sd3d.models.inference.compile_step_modules_
        # The GroupNorm kernels being compiled ahead (sd3d.models.norm_warmup), waited for by the
        # first generation; None when there is nothing to wait for.
        self.kernel_warmup = None
        for name, value in camera_buffers(config).items():
            self.register_buffer(name, value, persistent=False)
        self._register_grids()

    # ----------------------------------------------------------------------------------------------
    # constants
    # ----------------------------------------------------------------------------------------------
    def _register_grids(self) -> None:
        """Projection grids of the spatial and frustum volumes (cameras only), made on the CPU.

        Explicit CPU so that building the model under ``torch.device('meta')`` (fast loading) still
        yields real constants.
        """
        cfg = self.config
        with torch.device("cpu"):
            K, poses = self.Ks.to("cpu"), self.poses.to("cpu")
            spatial = spatial_sample_grid(K, poses, cfg.volume, cfg.image_size, cfg.latent_size)
            frustum, _ = frustum_sample_grid(K, poses, cfg.volume, cfg.image_size, cfg.latent_size)
        self.register_buffer("spatial_grid", spatial, persistent=False)
        self.register_buffer("frustum_grid", frustum, persistent=False)

    @property
    def device(self) -> torch.device:
        return self.cc_projection.weight.device

    @property
    def scale_factor(self) -> float:
        return self.config.vae.scale_factor

    # ----------------------------------------------------------------------------------------------
    # per-input conditioning
    # ----------------------------------------------------------------------------------------------
    def viewpoint_embedding(self, elevation_deg: Sequence[float]) -> torch.Tensor:
        """(B, N, 4) ``[theta_in - 30deg, sin d_az, cos d_az, 0]`` (see :func:`sd3d.core.cameras.viewpoint_embedding`)."""
        rows = [cameras.viewpoint_embedding(float(e), self.config.view_num) for e in elevation_deg]
        return torch.from_numpy(np.stack(rows)).to(self.device)

    @property
    def weight_dtype(self) -> torch.dtype:
        """The dtype the denoising network's weights are stored in (float32, or bf16/fp16 for inference)."""
        return self.model.diffusion_model.out[2].weight.dtype

    def embed_time(self, timesteps: torch.Tensor) -> torch.Tensor:
        """(B,) integer timesteps -> (B, time_dim) for the volume nets."""
        emb = timestep_embedding(timesteps, self.config.volume.time_dim)
        return self.time_embed(emb.to(self.time_embed[0].weight.dtype))

    def encode_posterior(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[-1,1] image (B,3,H,W) -> VAE posterior mean and clamped logvar."""
        return self.first_stage_model.encode(image)

    def encode_clip(self, image: torch.Tensor) -> torch.Tensor:
        return self.clip_image_encoder(image)

    def project_contexts(self, clip_embed: torch.Tensor, viewpoint: torch.Tensor) -> torch.Tensor:
        """(B,1,E) and (B,N,4) -> (B,N,1,E) ``cc_projection`` of ``[clip, viewpoint_n]``."""
        B, N = viewpoint.shape[:2]
        joined = torch.cat([clip_embed.expand(B, N, -1), viewpoint.to(clip_embed.dtype)], dim=-1)
        return self.cc_projection(joined).unsqueeze(2)

    def condition(
        self,
        image: torch.Tensor,
        elevation_deg: Sequence[float],
        generator: torch.Generator | None = None,
        sample_posterior: bool = True,
    ) -> Conditioning:
        """Everything the sampler needs from the input image, computed once.

        ``sample_posterior=True`` is the official behaviour (the input latent is a posterior
        *sample*, noise from ``generator``); ``False`` uses the mean (the golden fixture's choice).
        """
        with conditioning_on_device(self):
            mean, logvar = self.encode_posterior(image)
            clip_embed = self.encode_clip(image)
        return self.conditioning_from(mean, logvar, clip_embed, elevation_deg, generator, sample_posterior)

    def conditioning_from(
        self,
        mean: torch.Tensor,
        logvar: torch.Tensor,
        clip_embed: torch.Tensor,
        elevation_deg: Sequence[float],
        generator: torch.Generator | None = None,
        sample_posterior: bool = True,
    ) -> Conditioning:
        """:meth:`condition` from an already computed posterior and CLIP embedding.

        The posterior is taken in (at least) float32 even when the encoder ran in half precision, so
        the posterior noise is the same float32 draw from ``generator`` in every dtype.
        """
        mean, logvar = _at_least_fp32(mean), _at_least_fp32(logvar)
        if sample_posterior:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            z = mean + torch.exp(0.5 * logvar) * noise
        else:
            z = mean
        input_latent = z * self.scale_factor
        viewpoint = self.viewpoint_embedding(elevation_deg)
        return Conditioning(
            input_latent=input_latent,
            concat_latent=input_latent / self.scale_factor,
            clip_embed=clip_embed,
            viewpoint=viewpoint,
            contexts=self.project_contexts(clip_embed, viewpoint),
        )

    # ----------------------------------------------------------------------------------------------
    # per-step pieces
    # ----------------------------------------------------------------------------------------------
    def build_spatial_volume(
        self, x_t: torch.Tensor, t_embed: torch.Tensor, cond: Conditioning
    ) -> torch.Tensor:
        """All current noisy views (B,N,4,h,w) -> shared volume (B, C, V, V, V)."""
        return self.spatial_volume.construct_spatial_volume(x_t, t_embed, cond.viewpoint, self.spatial_grid)

    def frustum_features(
        self, spatial_volume: torch.Tensor, t_embed: torch.Tensor, cond: Conditioning, targets: torch.Tensor
    ) -> dict[int, torch.Tensor]:
        """Frustum feature dict for target views ``targets`` (1-D, the same for every sample)."""
        B = spatial_volume.shape[0]
        target_indices = targets.to(spatial_volume.device)[None].expand(B, -1)
        return self.spatial_volume.construct_view_frustum_volume(
            spatial_volume, t_embed, cond.viewpoint, self.frustum_grid, target_indices
        )

    def unet_eps(
        self,
        x_noisy: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        frustum: dict[int, torch.Tensor],
        concat_latent: torch.Tensor,
        cfg_scale: float,
    ) -> torch.Tensor:
        """UNet noise prediction for a flat batch of target views, with classifier-free guidance.

        ``cfg_scale == 1`` runs the plain conditional path. Otherwise the batch is doubled as
        [cond, uncond] where uncond zeroes the context token, all frustum levels and the concat
        latent, and ``eps = uc + s (c - uc)``.
        """
        if cfg_scale == 1.0:
            return self.model(x_noisy, timesteps, context, frustum, concat_latent)
        x2 = torch.cat([x_noisy, x_noisy], dim=0)
        t2 = torch.cat([timesteps, timesteps], dim=0)
        ctx2 = torch.cat([context, torch.zeros_like(context)], dim=0)
        concat2 = torch.cat([concat_latent, torch.zeros_like(concat_latent)], dim=0)
        # The frustum features cover only the conditional rows: the UNet's depth layers treat the
        # remaining (unconditional) rows as all-zero features, exactly and without the volumes.
        s, s_uc = _at_least_fp32(self.model(x2, t2, ctx2, frustum, concat2)).chunk(2)
        return s_uc + cfg_scale * (s - s_uc)  # combined in float32 also under autocast

    def eps_from_volume(
        self,
        x_t: torch.Tensor,
        timestep: int | torch.Tensor,
        t_embed: torch.Tensor,
        spatial_volume: torch.Tensor,
        cond: Conditioning,
        cfg_scale: float,
        batch_view_num: int,
        views: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Noise prediction (B, len(views), 4, h, w) given this step's spatial volume, in view chunks.

        ``x_t`` holds all N noisy views; ``views`` (default: all) selects the targets to predict.
        ``timestep`` may be a 0-d integer tensor: then nothing here copies from the host, so the whole
        call can be captured in a CUDA graph (:mod:`sd3d.sampling.cuda_graph`).
        """
        B, N = x_t.shape[:2]
        all_views = views is None
        views = list(range(N)) if views is None else [int(v) for v in views]
        chunks = []
        for start in range(0, len(views), batch_view_num):
            chunk = views[start : start + batch_view_num]
            vn = len(chunk)
            if all_views:  # a contiguous range: made on the device, no host-to-device copy
                targets = torch.arange(chunk[0], chunk[-1] + 1, device=x_t.device)
            else:
                targets = torch.tensor(chunk, device=x_t.device)
            frustum = self.frustum_features(spatial_volume, t_embed, cond, targets)
            x_noisy = x_t[:, targets].reshape(B * vn, *x_t.shape[2:])
            context = cond.contexts[:, targets].reshape(B * vn, 1, -1)
            concat = repeat_rows(cond.concat_latent, vn)
            ts = _timesteps(timestep, B * vn, x_t.device)
            eps = self.unet_eps(x_noisy, ts, context, frustum, concat, cfg_scale)
            chunks.append(eps.reshape(B, vn, *eps.shape[1:]))
            del frustum
        return torch.cat(chunks, dim=1)

    def predict_eps(
        self,
        x_t: torch.Tensor,
        timestep: int | torch.Tensor,
        cond: Conditioning,
        cfg_scale: float = 2.0,
        batch_view_num: int = 16,
    ) -> torch.Tensor:
        """eps (B,N,4,h,w) for the noisy views ``x_t`` (B,N,4,h,w) at integer ``timestep`` (an int or
        a 0-d integer tensor on the model's device)."""
        B = x_t.shape[0]
        t_embed = self.embed_time(_timesteps(timestep, B, x_t.device))
        volume = self.build_spatial_volume(x_t, t_embed, cond)
        return self.eps_from_volume(x_t, timestep, t_embed, volume, cond, cfg_scale, batch_view_num)

    # ----------------------------------------------------------------------------------------------
    # decoding
    # ----------------------------------------------------------------------------------------------
    def decode_latents(self, latents: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """Scaled latents (M,4,h,w) -> images (M,3,H,W), roughly in [-1,1], decoded in batches."""
        out = [
            self.first_stage_model.decode(latents[i : i + batch_size] / self.scale_factor)
            for i in range(0, latents.shape[0], batch_size)
        ]
        return torch.cat(out, dim=0)


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float64 else t.float()


def _timesteps(timestep: int | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """(n,) int64 timesteps from an int or a 0-d tensor (expanded, never copied from the host)."""
    if isinstance(timestep, torch.Tensor):
        return timestep.reshape(()).to(torch.long).expand(n)
    return torch.full((n,), int(timestep), dtype=torch.long, device=device)


def camera_buffers(config: SyncDreamerConfig) -> dict[str, torch.Tensor]:
    """``poses`` (N,3,4), ``Ks`` (N,3,3), ``azimuth`` (N,) as float32 CPU tensors (docs/reference/syncdreamer.md §1.2, §1.3).

    Poses are the analytic target cameras (they match the official pickle to 1.5e-7).
    """
    cams = cameras.target_cameras(size=cameras.IMAGE_SIZE)[: config.view_num]
    K, poses = cameras.stack_cameras(cams)
    scale = np.diag([config.image_size / 256.0, config.image_size / 256.0, 1.0])
    Ks = scale[None] @ K
    return {
        "poses": torch.tensor(poses, dtype=torch.float32, device="cpu"),
        "Ks": torch.tensor(Ks, dtype=torch.float32, device="cpu"),
        "azimuth": torch.tensor(
            cameras.model_azimuth_buffer(config.view_num), dtype=torch.float32, device="cpu"
        ),
    }


def conditioning_modules(model: SyncDreamer) -> list[nn.Module]:
    """The modules only the once-per-input conditioning uses (not the decoder, not ``cc_projection``)."""
    vae = model.first_stage_model
    return [model.clip_image_encoder, vae.encoder, vae.quant_conv]


@contextlib.contextmanager
def conditioning_on_device(model: SyncDreamer) -> Iterator[None]:
    """While inside: the conditioning modules have a copy on the model's device (if offloaded).

    The host copies are the masters: leaving drops the device copies (the weights never change), so
    nothing is copied back. Transfers are asynchronous from pinned memory on the current stream.
    """
    if not model.conditioning_offloaded:
        yield
        return
    device = model.device
    saved = []
    try:
        for module in conditioning_modules(model):
            for param in module.parameters():
                saved.append((param, param.data))
                param.data = param.data.to(device, non_blocking=True)
        yield
    finally:
        for param, host in saved:
            param.data = host
