"""The SD-1.x UNet shared by Zero123 and SyncDreamer (CompVis key names under ``model.diffusion_model``).

With ``UNetConfig.depth_attention_dims = None`` this is Zero123's UNet; with it set, SyncDreamer's
``DepthWiseAttention``: a :class:`~sd3d.models.depth_attention.DepthTransformer` after the middle
block (``middle_conditions``) and after every output block except the lowest-resolution level's
(``output_conditions.{i}``), each attending to the frustum-feature level whose width equals the
hidden state's width.

Numerics follow the CompVis ``openaimodel.py`` / ``attention.py``: GroupNorm32 (eps 1e-5, computed
in float32) in ResBlocks and the output head, GroupNorm eps 1e-6 in SpatialTransformers, GEGLU
feed-forward with exact-erf GELU, timestep embedding ``[cos, sin]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sd3d.models import kernels
from sd3d.models.attention import attention
from sd3d.models.configs import UNetConfig
from sd3d.models.conv_bias import bias_term, conv_without_bias, pointwise_conv2d
from sd3d.models.depth_attention import DepthTransformer
from sd3d.models.norms import GroupNorm, GroupNorm32, LayerNorm, NormActSequential


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f_k), sin(t f_k)]``, ``f_k = exp(-ln(max_period) k / (dim/2))``, fp32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    )
    args = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _group_norm32(cfg: UNetConfig, channels: int) -> GroupNorm32:
    return GroupNorm32(cfg.norm_groups, channels, eps=1e-5)


class ResBlock(nn.Module):
    def __init__(self, cfg: UNetConfig, channels: int, out_channels: int) -> None:
        super().__init__()
        # NormActSequential: each norm applies the SiLU after it (out_layers: and adds the time embedding).
        self.in_layers = NormActSequential(
            _group_norm32(cfg, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, 1, 1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(cfg.time_embed_dim, out_channels))
        self.out_layers = NormActSequential(
            _group_norm32(cfg, out_channels),
            nn.SiLU(),
            nn.Dropout(0.0),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1),
        )
        self.skip_connection = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )
        self.fold_conv_bias = False  # sd3d.models.conv_bias (set_conv_bias_folding)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.fold_conv_bias:
            return self._forward_folded(x, emb)
        h = self.in_layers(x)
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        h = self.out_layers(h, pre_bias=emb_out)  # out_layers(h + emb_out), the addition fused into the norm
        return self.skip_connection(x) + h

    def _forward_folded(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with the convolutions' biases where no addition of their own is needed
        (:mod:`sd3d.models.conv_bias`): the first convolution's joins the time embedding as a term of
        the next norm; with a 1x1 skip projection, the last convolution's joins the projection's bias."""
        norm_in, _, conv_in = self.in_layers
        h = conv_without_bias(conv_in, norm_in(x, activation="silu"))
        emb_out = self.emb_layers(emb).to(h.dtype)[..., None, None]
        norm_out, _, _, conv_out = self.out_layers
        h = norm_out(h, pre_bias=(bias_term(conv_in, h), emb_out), activation="silu")
        if isinstance(self.skip_connection, nn.Identity):
            return x + conv_out(h)
        return pointwise_conv2d(self.skip_connection, x, conv_out.bias) + conv_without_bias(conv_out, h)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then a 3x3 conv (``conv``): the CompVis upsampler of both the UNet and the
    VAE decoder (:mod:`sd3d.models.vae` uses this class too)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class CrossAttention(nn.Module):
    """Multi-head attention; ``context=None`` is self-attention. No bias on q/k/v, bias on ``to_out.0``."""

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        if context is not x and context.shape[1] == 1:
            return self.single_key_output(context).expand(-1, x.shape[1], -1)
        b, n, _ = x.shape
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))

    def single_key_output(self, context: torch.Tensor) -> torch.Tensor:
        """(B, 1, query_dim): what every query receives from a one-token ``context`` (B, 1, C). One
        key: the softmax weight is exactly 1, so every query receives v (docs/reference/syncdreamer.md
        §6.1), whatever the queries are."""
        return self.to_out(self.to_v(context))


class GEGLU(nn.Module):
    """``a * gelu(g)`` of a projection ``[a, g]``. ``implementation``: ``torch`` (the layer's
    default, the reference), ``auto`` (the fused Triton kernel of :mod:`sd3d.models.kernels.geglu`
    where it runs, else PyTorch; what ``prepare_for_inference`` sets since session 16) or ``triton``
    (the kernel or an error). Measured on an H100 (session 16): 1.626 -> 1.517 s a generation, the
    deviation of the final latents from fp32 unchanged (1.21e-2); within 1 ulp of PyTorch's at the
    tensor's scale, but 0.3-0.9 % of half-precision outputs differ from PyTorch's in the last bit
    (tests/test_triton_geglu.py, an expected failure that says so)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)
        self.implementation = "torch"
        self.kernel_error: str | None = None  # why the kernel failed here (then PyTorch's code runs)

    def kernel_unavailable(self, h: torch.Tensor) -> str | None:
        """Why this call does not run the fused kernel (``None``: it does)."""
        if (failed := kernels.failed_before(self.implementation, self.kernel_error)) is not None:
            return failed
        reason = kernels.refusal(self.implementation, h.device, kernels.geglu_module, "geglu", (h,))
        return reason if reason is not None else kernels.geglu_module().unsupported_reason(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        reason = self.kernel_unavailable(h)
        if reason is None:
            out = kernels.run_or_fall_back(
                self, self.implementation, "GEGLU", lambda: kernels.geglu_module().geglu(h)
            )
            if out is not None:
                return out
            reason = self.kernel_error
        if self.implementation == "triton":
            raise RuntimeError(f"GEGLU(implementation='triton') cannot run its kernel here: {reason}")
        x, gate = h.chunk(2, dim=-1)
        return x * F.gelu(gate)


def set_geglu_implementation(model: nn.Module, implementation: str) -> None:
    """Set every :class:`GEGLU`'s ``implementation`` (see there)."""
    kernels.check_implementation(implementation, "GEGLU")
    for module in model.modules():
        if isinstance(module, GEGLU):
            module.implementation = implementation


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, heads, dim_head, context_dim)
        self.norm1 = LayerNorm(dim)
        self.norm2 = LayerNorm(dim)
        self.norm3 = LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        if context.shape[1] == 1:
            # SyncDreamer's and Zero123's one-token context: the output does not depend on the
            # queries, so norm2 (16 LayerNorms a UNet pass whose output was never read) is skipped
            x = self.attn2.single_key_output(context) + x
        else:
            x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """SD-1 form: GroupNorm(eps 1e-6), 1x1-conv in/out projections, residual to the input."""

    def __init__(self, cfg: UNetConfig, channels: int, heads: int, dim_head: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = GroupNorm(cfg.norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, cfg.context_dim)
            for _ in range(cfg.transformer_depth)
        )
        self.proj_out = nn.Conv2d(inner, channels, 1)
        self.fold_conv_bias = False  # sd3d.models.conv_bias: the projections as matrix products

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.fold_conv_bias:
            y = pointwise_conv2d(self.proj_in, self.norm(x))
        else:
            y = self.proj_in(self.norm(x))
        y = y.flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            y = block(y, context)
        y = y.transpose(1, 2).reshape(b, -1, h, w)
        if self.fold_conv_bias:
            return pointwise_conv2d(self.proj_out, y) + x
        return self.proj_out(y) + x


class TimestepEmbedSequential(nn.Sequential):
    """Feeds ``emb`` to ResBlocks and ``context`` to SpatialTransformers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """``forward(x, timesteps, context, source_dict=None)`` -> eps (B, out_channels, H, W).

    ``source_dict`` maps a feature width (32, 16, 8, 4 at full size) to the frustum features
    (n, C, D, width, width) used by the depth-wise attention; it is required iff the config enables
    it. ``n`` may be smaller than the batch: rows ``n..`` then get all-zero features (classifier-free
    guidance's unconditional half), applied as exact constant offsets.
    """

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        mc, ted = cfg.model_channels, cfg.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))

        def transformer(ch: int) -> SpatialTransformer:
            return SpatialTransformer(cfg, ch, cfg.num_heads, ch // cfg.num_heads)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(cfg.in_channels, mc, 3, 1, 1))])
        skip_channels = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(cfg, ch, mult * mc)]
                ch = mult * mc
                if ds in cfg.attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(cfg.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            ResBlock(cfg, ch, ch), transformer(ch), ResBlock(cfg, ch, ch)
        )
        middle_ch, middle_ds = ch, ds

        self.output_blocks = nn.ModuleList()
        # (channels, downsampling factor) of the hidden state after each output block.
        output_shapes: list[tuple[int, int]] = []
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(cfg, ch + skip_channels.pop(), mc * mult)]
                ch = mc * mult
                if ds in cfg.attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))
                output_shapes.append((ch, ds))

        self.out = NormActSequential(
            _group_norm32(cfg, ch), nn.SiLU(), nn.Conv2d(mc, cfg.out_channels, 3, 1, 1)
        )

        # SyncDreamer's depth-wise attention: after the middle block and after the output blocks of
        # every level but the lowest-resolution one (output blocks 3..11 at full size).
        self.depth_blocks: tuple[int, ...] = ()
        if cfg.depth_attention_dims is not None:
            dims = cfg.depth_attention_dims

            def depth(ch_: int, ds_: int) -> DepthTransformer:
                ctx = dims[int(math.log2(ds_))]
                return DepthTransformer(ch_, cfg.depth_attention_heads, ctx // 2, ctx, cfg.depth_norm_groups)

            self.middle_conditions = depth(middle_ch, middle_ds)
            self.depth_blocks = tuple(range(cfg.num_res_blocks + 1, len(self.output_blocks)))
            self.output_conditions = nn.ModuleList(depth(*output_shapes[i]) for i in self.depth_blocks)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        source_dict: dict[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if self.depth_blocks and source_dict is None:
            raise ValueError("this UNet has depth-wise attention and needs source_dict")
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(x.dtype))
        hs = []
        h = x
        for module in self.input_blocks:
            h = module(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        if self.depth_blocks:
            h = self.middle_conditions(h, source_dict[h.shape[-1]])
        depth_index = {block: i for i, block in enumerate(self.depth_blocks)}
        for index, module in enumerate(self.output_blocks):
            h = module(torch.cat([h, hs.pop()], dim=1), emb, context)
            if index in depth_index:
                h = self.output_conditions[depth_index[index]](h, source_dict[h.shape[-1]])
        return self.out(h)
