"""Stable Diffusion's kl-f8 AutoencoderKL with the CompVis state-dict names (``first_stage_model.*``).

Written here rather than borrowed from diffusers so the official keys load without a converter and
the numerics follow the CompVis code exactly: asymmetric (0,1,0,1) padding before the stride-2
convs, nearest x2 upsampling, GroupNorm(32, eps 1e-6), single-head mid-block attention, logvar
clamped to [-30, 20].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sd3d.models.attention import attention
from sd3d.models.configs import VAEConfig
from sd3d.models.norms import GroupNorm
from sd3d.models.unet import Upsample


def _norm(cfg: VAEConfig, channels: int) -> GroupNorm:
    return GroupNorm(cfg.norm_groups, channels, eps=cfg.norm_eps, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cfg: VAEConfig, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(cfg, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = _norm(cfg, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.norm1(x, activation="silu"))
        h = self.conv2(self.norm2(h, activation="silu"))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all pixels, with 1x1-conv projections."""

    def __init__(self, cfg: VAEConfig, channels: int) -> None:
        super().__init__()
        self.norm = _norm(cfg, channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q, k, v = (m(h).reshape(b, 1, c, hh * ww).transpose(-1, -2) for m in (self.q, self.k, self.v))
        out = attention(q, k, v)  # scale c^-0.5, softmax over keys
        out = out.transpose(-1, -2).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # CompVis pads right/bottom only


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks) and an optional ``downsample``/``upsample``."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()


class _Mid(nn.Module):
    def __init__(self, cfg: VAEConfig, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(cfg, channels, channels)
        self.attn_1 = AttnBlock(cfg, channels)
        self.block_2 = ResnetBlock(cfg, channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch = cfg.base_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, 1, 1)
        self.down = nn.ModuleList()
        block_in = ch
        for level, mult in enumerate(cfg.channel_mult):
            stage = _Level()
            block_out = ch * mult
            for _ in range(cfg.num_res_blocks):
                stage.block.append(ResnetBlock(cfg, block_in, block_out))
                block_in = block_out
            if level != len(cfg.channel_mult) - 1:
                stage.downsample = Downsample(block_in)
            self.down.append(stage)
        self.mid = _Mid(cfg, block_in)
        self.norm_out = _norm(cfg, block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * cfg.z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for stage in self.down:
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "downsample"):
                h = stage.downsample(h)
        h = self.mid(h)
        return self.conv_out(self.norm_out(h, activation="silu"))


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch = cfg.base_channels
        block_in = ch * cfg.channel_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, 1, 1)
        self.mid = _Mid(cfg, block_in)
        ups: list[_Level] = []
        for level in reversed(range(len(cfg.channel_mult))):
            stage = _Level()
            block_out = ch * cfg.channel_mult[level]
            for _ in range(cfg.num_res_blocks + 1):
                stage.block.append(ResnetBlock(cfg, block_in, block_out))
                block_in = block_out
            if level != 0:
                stage.upsample = Upsample(block_in)
            ups.insert(0, stage)  # ``up.0`` is the full-resolution level, as in CompVis
        self.up = nn.ModuleList(ups)
        self.norm_out = _norm(cfg, block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_channels, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for stage in reversed(self.up):
            for block in stage.block:
                h = block(h)
            if hasattr(stage, "upsample"):
                h = stage.upsample(h)
        return self.conv_out(self.norm_out(h, activation="silu"))


class AutoencoderKL(nn.Module):
    """``encode`` gives the diagonal-Gaussian posterior (mean, clamped logvar); ``decode`` maps back."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Image in [-1, 1] (B,3,H,W) -> posterior ``mean`` and ``logvar`` (B,4,H/8,W/8)."""
        moments = self.quant_conv(self.encoder(x))
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return mean, torch.clamp(logvar, -30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Unscaled latent (B,4,h,w) -> image, roughly in [-1, 1] (no tanh, as in CompVis)."""
        return self.decoder(self.post_quant_conv(z))
