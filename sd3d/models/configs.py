"""Every size of the SyncDreamer network, as frozen dataclasses.

The defaults are the official ``configs/syncdreamer.yaml`` values (docs/reference/syncdreamer.md §3), so
``SyncDreamerConfig()`` builds a model whose state dict has exactly the official 1618 keys and
shapes. :func:`tiny_config` keeps the geometry (256 px images, 32x32 latents, 16 views, the same
projection maths) but shrinks every channel count, so tests can run the whole pipeline on a CPU in
well under a second per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class VAEConfig:
    """Stable Diffusion's kl-f8 AutoencoderKL (``first_stage_model``)."""

    in_channels: int = 3
    out_channels: int = 3
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    embed_dim: int = 4
    norm_groups: int = 32
    norm_eps: float = 1e-6
    # Latents are ``posterior * scale_factor`` (SD-1 convention).
    scale_factor: float = 0.18215

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


@dataclass(frozen=True)
class CLIPVisionConfig:
    """OpenAI CLIP ViT-L/14 image tower (``clip_image_encoder.model.visual``).

    ``context_length``, ``vocab_size`` and ``text_width`` only give the shapes of the text-side
    leftovers the official checkpoint still carries (they are ignored on load).
    """

    image_size: int = 224
    patch_size: int = 14
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_ratio: int = 4
    embed_dim: int = 768
    ln_eps: float = 1e-5
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 768

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class UNetConfig:
    """The SD-1.x UNet of Zero123 / SyncDreamer (``model.diffusion_model``).

    ``depth_attention_dims`` switches SyncDreamer's depth-wise attention on: the frustum-feature
    channel count per UNet downsampling level (level ``i`` runs at ``latent / 2**i``). ``None`` gives
    the plain Zero123 UNet.
    """

    in_channels: int = 8
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    # Downsampling factors (1, 2, 4, ...) at which a SpatialTransformer follows each ResBlock.
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_heads: int = 8
    transformer_depth: int = 1
    context_dim: int = 768
    norm_groups: int = 32
    depth_attention_dims: tuple[int, ...] | None = (64, 128, 256, 512)
    depth_attention_heads: int = 4
    depth_norm_groups: int = 8

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels


@dataclass(frozen=True)
class VolumeConfig:
    """SyncDreamer's ``spatial_volume`` (target-view encoder, spatial 3D net, frustum 3D net)."""

    time_dim: int = 256
    view_dim: int = 4
    encoder_run_dim: int = 16
    encoder_output_dim: int = 16
    spatial_dims: tuple[int, int, int, int] = (64, 128, 256, 512)
    frustum_dims: tuple[int, int, int, int] = (64, 128, 256, 512)
    spatial_volume_size: int = 32
    spatial_volume_length: float = 0.5
    frustum_depth: int = 48
    # sqrt(3)/2 rounded to 5 decimals in the official code (quirk kept on purpose).
    frustum_length: float = 0.86603
    origin_depth: float = 1.5
    norm_groups: int = 8


@dataclass(frozen=True)
class LatentDiffusionConfig:
    """What SyncDreamer and Zero123 share: the VAE, the CLIP image tower, the image size and the SD-1
    noise schedule (``linear`` betas from ``linear_start`` to ``linear_end`` over ``num_timesteps``)."""

    vae: VAEConfig = field(default_factory=VAEConfig)
    clip: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    image_size: int = 256
    num_timesteps: int = 1000
    linear_start: float = 0.00085
    linear_end: float = 0.012
    name: str = "official"

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae.downsample_factor

    @property
    def latent_channels(self) -> int:
        return self.vae.embed_dim


@dataclass(frozen=True)
class SyncDreamerConfig(LatentDiffusionConfig):
    """The whole ``SyncMultiviewDiffusion`` model; the defaults are the official checkpoint's."""

    unet: UNetConfig = field(default_factory=UNetConfig)
    volume: VolumeConfig = field(default_factory=VolumeConfig)
    view_num: int = 16

    def validate(self) -> None:
        """Raise ``ValueError`` for sizes that cannot fit together (a programming error, not user input)."""
        levels = len(self.unet.channel_mult)
        if self.unet.depth_attention_dims is not None and len(self.unet.depth_attention_dims) != levels:
            raise ValueError("depth_attention_dims needs one entry per UNet level")
        if self.unet.depth_attention_dims is not None and tuple(self.unet.depth_attention_dims) != tuple(
            self.volume.frustum_dims
        ):
            raise ValueError("the UNet's depth-attention dims must equal the frustum net's dims")
        if len(self.volume.frustum_dims) != 4 or levels != 4:
            raise ValueError("the frustum net has exactly 4 levels, matching a 4-level UNet")
        if self.latent_size % 8:
            raise ValueError("the latent size must be divisible by 8 (3 UNet downsamplings)")
        if self.unet.in_channels != 2 * self.latent_channels:
            raise ValueError("the UNet takes the noisy latent and the input latent (2 x latent channels)")


def official_config() -> SyncDreamerConfig:
    """``configs/syncdreamer.yaml`` of liuyuan-pal/SyncDreamer (1.39 G parameters)."""
    return SyncDreamerConfig()


def tiny_config() -> SyncDreamerConfig:
    """A few-hundred-thousand-parameter model with the official geometry, for tests."""
    return SyncDreamerConfig(
        vae=VAEConfig(base_channels=8, channel_mult=(1, 1, 2, 2), num_res_blocks=1, norm_groups=4),
        clip=CLIPVisionConfig(
            image_size=56,
            patch_size=14,
            width=32,
            layers=2,
            heads=2,
            embed_dim=32,
            context_length=7,
            vocab_size=11,
            text_width=16,
        ),
        unet=UNetConfig(
            model_channels=16,
            channel_mult=(1, 2, 2, 2),
            num_res_blocks=1,
            attention_resolutions=(4, 2),  # no 1024-token self-attention at the full latent size
            num_heads=2,
            context_dim=32,
            norm_groups=8,
            depth_attention_dims=(8, 8, 16, 16),
        ),
        volume=VolumeConfig(
            time_dim=16,
            encoder_run_dim=8,
            encoder_output_dim=8,
            spatial_dims=(8, 8, 16, 16),
            frustum_dims=(8, 8, 16, 16),
            spatial_volume_size=16,
            frustum_depth=8,
        ),
        name="tiny",
    )


CONFIGS = {"official": official_config, "tiny": tiny_config}


def config_by_name(name: str) -> SyncDreamerConfig:
    if name not in CONFIGS:
        raise ValueError(f"unknown SyncDreamer config {name!r}; known: {', '.join(CONFIGS)}")
    return CONFIGS[name]()
