"""The OpenAI CLIP ViT-L/14 image tower, with the official names (``clip_image_encoder.model.visual.*``).

SyncDreamer only uses ``encode_image``; its checkpoint still carries CLIP's text-side leftovers
(token embedding, text projection, ...) which this module does not hold (the loader ignores them).
Preprocessing is SyncDreamer's, not CLIP's own: a bicubic ``align_corners=True`` resize of the
[-1, 1] image without antialiasing, then CLIP's mean/std (docs/reference/syncdreamer.md §3.3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sd3d.models.attention import attention
from sd3d.models.configs import CLIPVisionConfig


class LayerNorm(nn.LayerNorm):
    """CLIP's LayerNorm: computed in float32 for half-precision inputs (float64 stays)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float64:
            return super().forward(x)
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class MultiheadSelfAttention(nn.Module):
    """``nn.MultiheadAttention``'s parameter layout (packed ``in_proj``) computed with SDPA."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = attention(qkv[0], qkv[1], qkv[2])
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class _MLP(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = QuickGELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, cfg: CLIPVisionConfig) -> None:
        super().__init__()
        self.attn = MultiheadSelfAttention(cfg.width, cfg.heads)
        self.ln_1 = LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.mlp = _MLP(cfg.width, cfg.width * cfg.mlp_ratio)
        self.ln_2 = LayerNorm(cfg.width, eps=cfg.ln_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, cfg: CLIPVisionConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(cfg) for _ in range(cfg.layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


def _normal(std: float, *shape: int) -> torch.Tensor:
    """``std * torch.randn(*shape)`` (the same draws), but nothing drawn on the ``meta`` device.

    Why: a checkpoint's model is built on ``meta`` and every value is loaded afterwards, and on
    ``meta`` ``torch.randn`` runs PyTorch's Python reference, whose first check imports sympy (about
    2 s of a cold process on the GPU machine, session 12) for values nobody reads."""
    t = torch.empty(*shape)
    return t if t.is_meta else t.normal_(0.0, std)


class VisionTransformer(nn.Module):
    """Pre-LN ViT: patchify, prepend the class token, add positions, ln_pre, blocks, ln_post(CLS) @ proj."""

    def __init__(self, cfg: CLIPVisionConfig) -> None:
        super().__init__()
        self.config = cfg
        scale = cfg.width**-0.5
        self.conv1 = nn.Conv2d(3, cfg.width, cfg.patch_size, cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(_normal(scale, cfg.width))
        self.positional_embedding = nn.Parameter(_normal(scale, cfg.grid_size**2 + 1, cfg.width))
        self.ln_pre = LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.transformer = _Transformer(cfg)
        self.ln_post = LayerNorm(cfg.width, eps=cfg.ln_eps)
        self.proj = nn.Parameter(_normal(scale, cfg.width, cfg.embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = x.flatten(2).transpose(1, 2)  # (B, grid^2, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0, :]) @ self.proj


class _CLIPModel(nn.Module):
    """Holds ``visual`` so the keys read ``clip_image_encoder.model.visual.*``."""

    def __init__(self, cfg: CLIPVisionConfig) -> None:
        super().__init__()
        self.visual = VisionTransformer(cfg)


class CLIPImageEncoder(nn.Module):
    """SyncDreamer's ``FrozenCLIPImageEmbedder``: [-1, 1] image (B,3,H,W) -> (B, 1, embed_dim), fp32."""

    def __init__(self, cfg: CLIPVisionConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = _CLIPModel(cfg)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Bicubic resize (align_corners, no antialias), [-1,1] -> [0,1], CLIP mean/std."""
        size = self.config.image_size
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=True)
        x = (x + 1.0) / 2.0
        mean = torch.tensor(self.config.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.config.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model.visual(self.preprocess(x))
        return (out if out.dtype == torch.float64 else out.float()).unsqueeze(1)


def text_leftover_shapes(cfg: CLIPVisionConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of the unused text-side entries the official checkpoint keeps under ``...model.``."""
    return {
        "positional_embedding": (cfg.context_length, cfg.text_width),
        "text_projection": (cfg.text_width, cfg.embed_dim),
        "logit_scale": (),
        "token_embedding.weight": (cfg.vocab_size, cfg.text_width),
        "ln_final.weight": (cfg.text_width,),
        "ln_final.bias": (cfg.text_width,),
    }
