"""SyncDreamer's 3D conditioning (``spatial_volume.*``, docs/reference/syncdreamer.md §3.6).

Per denoising step: every noisy target latent is encoded (``target_encoder``), unprojected into a
shared 32^3 world-space volume (``construct_spatial_volume``: the synchronisation between the 16
views), refined by a 3D UNet (``spatial_volume_feats``), then resampled into each target view's
camera frustum and refined again (``frustum_volume_feats``), giving features at the four UNet
widths for the depth-wise attention.

The projection geometry (which 2D latent pixel each voxel reads, which world point each frustum
sample sits at) depends only on the cameras, so it is computed once by :func:`spatial_sample_grid`
and :func:`frustum_sample_grid` and reused every step. Conventions mimicked on purpose: K scaled by
1/8 with no half-pixel shift, ``u / ((size - 1) / 2) - 1`` normalisation with
``align_corners=True``, depth clamped at 1e-4, frustum sampled at z-depths near..far inclusive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sd3d.models.configs import VolumeConfig
from sd3d.models.norms import GroupNorm, NormActSequential


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    """Sampling inputs stay float32 (or float64) under autocast: bf16 coordinates are ~0.1 voxel off."""
    return t if t.dtype == torch.float64 else t.float()


def repeat_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """``t.repeat_interleave(n, dim=0)`` as expand + reshape: no host round trip, so the step that
    uses it can be captured in a CUDA graph."""
    return t.unsqueeze(1).expand(t.shape[0], n, *t.shape[1:]).reshape(t.shape[0] * n, *t.shape[1:])


def _gn(cfg: VolumeConfig, channels: int) -> GroupNorm:
    return GroupNorm(cfg.norm_groups, channels, eps=1e-5)


# --------------------------------------------------------------------------------------------------
# 2D target-view encoder
# --------------------------------------------------------------------------------------------------
class Image2DResBlockWithTV(nn.Module):
    def __init__(self, cfg: VolumeConfig, dim: int) -> None:
        super().__init__()
        self.time_embed = nn.Conv2d(cfg.time_dim, dim, 1)
        self.view_embed = nn.Conv2d(cfg.view_dim, dim, 1)
        self.conv = NormActSequential(
            _gn(cfg, dim),
            nn.SiLU(),
            nn.Conv2d(dim, dim, 3, 1, 1),
            _gn(cfg, dim),
            nn.SiLU(),
            nn.Conv2d(dim, dim, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x, pre_bias=(self.time_embed(t), self.view_embed(v)))  # conv(x + t + v)


class NoisyTargetViewEncoder(nn.Module):
    """Noisy latent (B,4,h,w) + time/view embeddings -> per-view features (B, output_dim, h, w)."""

    def __init__(self, cfg: VolumeConfig, latent_channels: int = 4) -> None:
        super().__init__()
        run = cfg.encoder_run_dim
        self.init_conv = nn.Conv2d(latent_channels, run, 3, 1, 1)
        self.out_conv0 = Image2DResBlockWithTV(cfg, run)
        self.out_conv1 = Image2DResBlockWithTV(cfg, run)
        self.out_conv2 = Image2DResBlockWithTV(cfg, run)
        self.final_out = NormActSequential(
            _gn(cfg, run), nn.SiLU(), nn.Conv2d(run, cfg.encoder_output_dim, 3, 1, 1)
        )

    def forward(self, x: torch.Tensor, t_embed: torch.Tensor, v_embed: torch.Tensor) -> torch.Tensor:
        t = t_embed[:, :, None, None]
        v = v_embed[:, :, None, None]
        x = self.init_conv(x)
        x = self.out_conv0(x, t, v)
        x = self.out_conv1(x, t, v)
        x = self.out_conv2(x, t, v)
        return self.final_out(x)


# --------------------------------------------------------------------------------------------------
# 3D nets
# --------------------------------------------------------------------------------------------------
def _embeddings(block: nn.Module, t: torch.Tensor, v: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """The per-(sample, channel) terms a time block adds to its input: ``t_conv(t)`` [, ``v_conv(v)``]."""
    return (block.t_conv(t),) if v is None else (block.t_conv(t), block.v_conv(v))


class SpatialTimeBlock(nn.Module):
    """``conv(SiLU(GN(x + t_conv(t))))``; with ``view=True`` also ``+ v_conv(v)`` (FrustumTVBlock).

    The additions, the norm and the SiLU are one :class:`~sd3d.models.norms.GroupNorm` call (one
    pass over the volume with the Triton kernel)."""

    def __init__(self, cfg: VolumeConfig, x_in: int, x_out: int, stride: int, view: bool = False) -> None:
        super().__init__()
        self.t_conv = nn.Conv3d(cfg.time_dim, x_in, 1)
        if view:
            self.v_conv = nn.Conv3d(cfg.view_dim, x_in, 1)
        self.bn = _gn(cfg, x_in)
        self.conv = nn.Conv3d(x_in, x_out, 3, stride, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(self.bn(x, pre_bias=_embeddings(self, t, v), activation="silu"))


class SpatialUpTimeBlock(nn.Module):
    """Like :class:`SpatialTimeBlock` with ``norm`` and a stride-2 transposed conv (doubles D, H, W)."""

    def __init__(self, cfg: VolumeConfig, x_in: int, x_out: int, view: bool = False) -> None:
        super().__init__()
        self.t_conv = nn.Conv3d(cfg.time_dim, x_in, 1)
        if view:
            self.v_conv = nn.Conv3d(cfg.view_dim, x_in, 1)
        self.norm = _gn(cfg, x_in)
        self.conv = nn.ConvTranspose3d(x_in, x_out, 3, 2, 1, output_padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
        return self.conv(self.norm(x, pre_bias=_embeddings(self, t, v), activation="silu"))


class SpatialTime3DNet(nn.Module):
    """The shared world volume's 3D UNet: (B, views*feat, V,V,V) -> (B, dims[0], V,V,V)."""

    def __init__(self, cfg: VolumeConfig, input_dim: int) -> None:
        super().__init__()
        d0, d1, d2, d3 = cfg.spatial_dims
        self.init_conv = nn.Conv3d(input_dim, d0, 3, 1, 1)
        self.conv0 = SpatialTimeBlock(cfg, d0, d0, 1)
        self.conv1 = SpatialTimeBlock(cfg, d0, d1, 2)
        self.conv2_0 = SpatialTimeBlock(cfg, d1, d1, 1)
        self.conv2_1 = SpatialTimeBlock(cfg, d1, d1, 1)
        self.conv3 = SpatialTimeBlock(cfg, d1, d2, 2)
        self.conv4_0 = SpatialTimeBlock(cfg, d2, d2, 1)
        self.conv4_1 = SpatialTimeBlock(cfg, d2, d2, 1)
        self.conv5 = SpatialTimeBlock(cfg, d2, d3, 2)
        self.conv6_0 = SpatialTimeBlock(cfg, d3, d3, 1)
        self.conv6_1 = SpatialTimeBlock(cfg, d3, d3, 1)
        self.conv7 = SpatialUpTimeBlock(cfg, d3, d2)
        self.conv8 = SpatialUpTimeBlock(cfg, d2, d1)
        self.conv9 = SpatialUpTimeBlock(cfg, d1, d0)

    def forward(self, x: torch.Tensor, t_embed: torch.Tensor) -> torch.Tensor:
        t = t_embed[:, :, None, None, None]
        x = self.init_conv(x)
        c0 = self.conv0(x, t)
        c2 = self.conv2_1(self.conv2_0(self.conv1(c0, t), t), t)
        c4 = self.conv4_1(self.conv4_0(self.conv3(c2, t), t), t)
        x = self.conv6_1(self.conv6_0(self.conv5(c4, t), t), t)
        x = c4 + self.conv7(x, t)
        x = c2 + self.conv8(x, t)
        return c0 + self.conv9(x, t)


class FrustumTV3DNet(nn.Module):
    """A target frustum's 3D UNet; returns ``{width: features}`` at full, 1/2, 1/4 and 1/8 width."""

    def __init__(self, cfg: VolumeConfig, in_dim: int) -> None:
        super().__init__()
        d0, d1, d2, d3 = cfg.frustum_dims
        self.conv0 = nn.Conv3d(in_dim, d0, 3, 1, 1)
        self.conv1 = SpatialTimeBlock(cfg, d0, d1, 2, view=True)
        self.conv2 = SpatialTimeBlock(cfg, d1, d1, 1, view=True)
        self.conv3 = SpatialTimeBlock(cfg, d1, d2, 2, view=True)
        self.conv4 = SpatialTimeBlock(cfg, d2, d2, 1, view=True)
        self.conv5 = SpatialTimeBlock(cfg, d2, d3, 2, view=True)
        self.conv6 = SpatialTimeBlock(cfg, d3, d3, 1, view=True)
        self.up0 = SpatialUpTimeBlock(cfg, d3, d2, view=True)
        self.up1 = SpatialUpTimeBlock(cfg, d2, d1, view=True)
        self.up2 = SpatialUpTimeBlock(cfg, d1, d0, view=True)

    def forward(
        self, x: torch.Tensor, t_embed: torch.Tensor, v_embed: torch.Tensor
    ) -> dict[int, torch.Tensor]:
        t = t_embed[:, :, None, None, None]
        v = v_embed[:, :, None, None, None]
        width = x.shape[-1]
        x0 = self.conv0(x)
        x1 = self.conv2(self.conv1(x0, t, v), t, v)
        x2 = self.conv4(self.conv3(x1, t, v), t, v)
        x3 = self.conv6(self.conv5(x2, t, v), t, v)
        x2 = self.up0(x3, t, v) + x2
        x1 = self.up1(x2, t, v) + x1
        x0 = self.up2(x1, t, v) + x0
        return {width: x0, width // 2: x1, width // 4: x2, width // 8: x3}


# --------------------------------------------------------------------------------------------------
# projection geometry (depends only on the cameras: computed once)
# --------------------------------------------------------------------------------------------------
def _projection(K: torch.Tensor, poses: torch.Tensor, ratio: float) -> torch.Tensor:
    """(N,4,4) ``[diag(r, r, 1) K [R|t]; 0 0 0 1]``, float32 as in the official code."""
    scale = torch.tensor([ratio, ratio, 1.0], dtype=K.dtype, device=K.device)
    P = (scale[None, :, None] * K) @ poses
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=K.dtype, device=K.device).expand(P.shape[0], 1, 4)
    return torch.cat([P, bottom], dim=1)


def spatial_volume_vertices(size: int, length: float, device=None) -> torch.Tensor:
    """(3, D, H, W) world coordinates of the volume vertices: x = lin[w], y = lin[h], z = lin[d]."""
    lin = torch.linspace(-length, length, size, dtype=torch.float32, device=device)
    z, y, x = torch.meshgrid(lin, lin, lin, indexing="ij")
    return torch.stack([x, y, z], dim=0)


def spatial_sample_grid(
    K: torch.Tensor, poses: torch.Tensor, cfg: VolumeConfig, image_size: int, latent_size: int
) -> torch.Tensor:
    """(N, V, V*V, 2) ``grid_sample`` coordinates at which each view's latent features are read.

    Vertex (d, h, w) of view n lands at ``grid[n, d, h*V + w]`` (x along the latent width).
    """
    V = cfg.spatial_volume_size
    verts = spatial_volume_vertices(V, cfg.spatial_volume_length, K.device).reshape(3, -1)
    P = _projection(K, poses, latent_size / image_size)
    pts = P[:, :3, :3] @ verts[None] + P[:, :3, 3:]  # (N, 3, V^3)
    depth = pts[:, 2:3].clamp_min(1e-4)
    uv = pts[:, :2] / depth
    uv = uv / ((latent_size - 1) / 2) - 1
    return uv.permute(0, 2, 1).reshape(-1, V, V * V, 2)


def frustum_sample_grid(
    K: torch.Tensor, poses: torch.Tensor, cfg: VolumeConfig, image_size: int, latent_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """World points of each target's frustum samples, as ``grid_sample`` coordinates.

    Returns ``grid`` (N, D, h, w, 3) = world xyz / spatial_volume_length (x, y, z order, to sample
    the (D=z, H=y, W=x) spatial volume) and ``depth`` (D,) the camera z-depths near..far.
    """
    D, h = cfg.frustum_depth, latent_size
    n = K.shape[0]
    near = cfg.origin_depth - cfg.frustum_length
    far = cfg.origin_depth + cfg.frustum_length
    near_t = torch.full((n, 1, h, h), near, dtype=torch.float32, device=K.device)
    far_t = torch.full((n, 1, h, h), far, dtype=torch.float32, device=K.device)
    interval = torch.linspace(0.0, 1.0, D, dtype=torch.float32, device=K.device)[None, :, None, None]
    depth = near_t + (far_t - near_t) * interval  # (N, D, h, h)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=torch.float32, device=K.device),
        torch.arange(h, dtype=torch.float32, device=K.device),
        indexing="ij",
    )
    pix = torch.stack([xs, ys, torch.ones_like(xs)], dim=0)  # (3, h, w): column, row, 1
    pts = pix[None, :, None] * depth[:, None]  # (N, 3, D, h, w)
    pts = torch.cat([pts, torch.ones_like(pts[:, :1])], dim=1).reshape(n, 4, -1)
    P_inv = torch.inverse(_projection(K, poses, latent_size / image_size))
    world = (P_inv @ pts)[:, :3].reshape(n, 3, D, h, h)
    grid = (world / cfg.spatial_volume_length).permute(0, 2, 3, 4, 1)
    return grid.contiguous(), depth[0, :, 0, 0]


# --------------------------------------------------------------------------------------------------
# the module with the official state-dict layout
# --------------------------------------------------------------------------------------------------
class SpatialVolumeNet(nn.Module):
    def __init__(self, cfg: VolumeConfig, view_num: int, latent_channels: int = 4) -> None:
        super().__init__()
        self.config = cfg
        self.view_num = view_num
        self.target_encoder = NoisyTargetViewEncoder(cfg, latent_channels)
        self.spatial_volume_feats = SpatialTime3DNet(cfg, cfg.encoder_output_dim * view_num)
        self.frustum_volume_feats = FrustumTV3DNet(cfg, cfg.spatial_dims[0])
        self.channels_last = False  # NDHWC volumes (sd3d.models.inference.set_channels_last_)

    def _layout(self, volume: torch.Tensor) -> torch.Tensor:
        return volume.contiguous(memory_format=torch.channels_last_3d) if self.channels_last else volume

    def construct_spatial_volume(
        self, x_noisy: torch.Tensor, t_embed: torch.Tensor, v_embed: torch.Tensor, spatial_grid: torch.Tensor
    ) -> torch.Tensor:
        """All views' noisy latents (B,N,4,h,w) -> the shared feature volume (B, dims[0], V, V, V).

        ``spatial_grid`` is :func:`spatial_sample_grid` (N, V, V*V, 2). The encoder and the
        sampling run batched over all B*N views; channels are view-major (view*C + feature).
        """
        B, N = x_noisy.shape[:2]
        V = self.config.spatial_volume_size
        feats = self.target_encoder(
            x_noisy.flatten(0, 1),
            repeat_rows(t_embed, N),
            v_embed.flatten(0, 1).to(t_embed.dtype),
        )  # (B*N, C, h, w)
        feats = _at_least_fp32(feats)
        grid = spatial_grid.to(feats.dtype).repeat(B, 1, 1, 1)
        sampled = F.grid_sample(feats, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        volume = sampled.reshape(B, N * feats.shape[1], V, V, V)
        return self.spatial_volume_feats(self._layout(volume), t_embed)

    def construct_view_frustum_volume(
        self,
        spatial_volume: torch.Tensor,
        t_embed: torch.Tensor,
        v_embed: torch.Tensor,
        frustum_grid: torch.Tensor,
        target_indices: torch.Tensor,
    ) -> dict[int, torch.Tensor]:
        """Frustum features for targets ``target_indices`` (B, TN) -> ``{width: (B*TN, C, D, w, w)}``.

        ``frustum_grid`` is :func:`frustum_sample_grid`'s grid for all N views; row b*TN + j of the
        outputs belongs to sample b and target ``target_indices[b, j]``.
        """
        B, TN = target_indices.shape
        flat = target_indices.reshape(-1)
        volume = repeat_rows(_at_least_fp32(spatial_volume), TN)
        grid = frustum_grid.to(volume.dtype)[flat]
        feats = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        batch = torch.arange(B, device=target_indices.device)[:, None]
        v = v_embed[batch, target_indices].reshape(B * TN, -1).to(t_embed.dtype)
        t = repeat_rows(t_embed, TN)
        return self.frustum_volume_feats(self._layout(feats), t, v)
