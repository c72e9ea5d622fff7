"""Zero123 / Zero123-XL (the official ``LatentDiffusion``): shared parts assembled, and its state dict.

The network is the SD-1 UNet *without* depth attention (:mod:`sd3d.models.unet`), the kl-f8 VAE
(:mod:`sd3d.models.vae`) and the CLIP ViT-L/14 image tower (:mod:`sd3d.models.clip`), plus
``cc_projection`` = Linear(768 + 4, 768) on ``[CLIP embedding, pose vector T]`` giving the single
cross-attention token. Module names follow the official prefixes, so most keys map to themselves.

State-dict mapping (reference-zero123.md §3.2, §3.8, §5.4). Every key of an official checkpoint
(``reference/zero123-state-dict-keys.json``, 1938 entries) is accounted for:

* **UNet from the EMA copy**: sampling in the official demo runs inside ``ema_scope``, so the UNet
  weights come from ``model_ema.<name>``, where ``<name>`` is the UNet key without its leading
  ``model.`` and with every dot removed (``model.diffusion_model.input_blocks.1.1.proj_in.weight`` ->
  ``model_ema.diffusion_modelinput_blocks11proj_inweight``). A checkpoint without any ``model_ema.*``
  key (e.g. an EMA-only export) uses ``model.diffusion_model.*`` instead; a partial EMA set is an error.
* consumed as they are: ``first_stage_model.*`` (VAE), ``cond_stage_model.model.visual.*`` (CLIP),
  ``cc_projection.*``;
* accounted for but not used (:data:`IGNORED_KEYS` and the raw UNet): the raw (non-EMA) UNet
  ``model.diffusion_model.*`` when the EMA copy is present (shapes still checked); the LitEma
  bookkeeping ``model_ema.decay`` / ``model_ema.num_updates``; CLIP's six text-side leftovers;
* checked: the 12 schedule buffers (:data:`SCHEDULE_BUFFER_KEYS`), compared with our float64
  recomputation (Zero123's own: ``posterior_log_variance_clipped`` is *not* clamped at -10 as in
  SyncDreamer) under the rule of :mod:`sd3d.models.buffers`: ``alphas_cumprod``, the one table the
  DDIM sampler reads (:data:`USED_BUFFER_KEYS`), must agree, so a checkpoint trained with another
  schedule is refused; the training-only tables never make a load fail (a disagreement is a warning,
  as is an odd shape of the unused EMA bookkeeping ``model_ema.decay`` / ``num_updates``).

Ignored and checked keys may be absent (a converted copy may drop them). A missing or unexpected key,
or a shape mismatch of a parameter, is a :class:`~sd3d.core.errors.WeightsError` naming the key.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sd3d.core.errors import WeightsError
from sd3d.models.buffers import BufferRule, check_buffers
from sd3d.models.clip import CLIPImageEncoder, text_leftover_shapes
from sd3d.models.configs import CLIPVisionConfig, LatentDiffusionConfig, UNetConfig
from sd3d.models.configs import tiny_config as _syncdreamer_tiny
from sd3d.models.unet import UNetModel
from sd3d.models.vae import AutoencoderKL

UNET_PREFIX = "model.diffusion_model."
EMA_PREFIX = "model_ema."
CLIP_PREFIX = "cond_stage_model.model."
EMA_BOOKKEEPING_KEYS = ("model_ema.decay", "model_ema.num_updates")
SCHEDULE_BUFFER_KEYS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
USED_BUFFER_KEYS = ("alphas_cumprod",)
# The schedule is float64 maths stored float32 in both the checkpoint and here: equal up to round-off.
_SCHEDULE_TOLERANCE = (1e-6, 1e-5)  # atol, rtol


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
        from sd3d.models.unet import GroupNorm32

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
def ema_key(unet_key: str) -> str:
    """``model.diffusion_model.a.b.c`` -> ``model_ema.diffusion_modelabc`` (LitEma's flattened name)."""
    if not unet_key.startswith(UNET_PREFIX):
        raise ValueError(f"not a UNet key: {unet_key!r}")
    return EMA_PREFIX + unet_key[len("model.") :].replace(".", "")


def schedule_buffers(config: Zero123Config | None = None) -> dict[str, torch.Tensor]:
    """The 12 official schedule buffers: the DDPM formulas in float64 (numpy), stored float32."""
    config = Zero123Config() if config is None else config
    betas = (
        torch.linspace(
            config.linear_start**0.5, config.linear_end**0.5, config.num_timesteps, dtype=torch.float64
        )
        ** 2
    ).numpy()
    alphas = 1.0 - betas
    abar = np.cumprod(alphas, axis=0)
    abar_prev = np.append(1.0, abar[:-1])
    posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
    values = {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": abar_prev,
        "sqrt_alphas_cumprod": np.sqrt(abar),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
        "log_one_minus_alphas_cumprod": np.log(1.0 - abar),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1.0),
        "posterior_variance": posterior_variance,
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
        "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar),
    }
    return {k: torch.tensor(values[k], dtype=torch.float32) for k in SCHEDULE_BUFFER_KEYS}


def build_meta_model(config: Zero123Config) -> Zero123:
    """A model whose parameters live on ``meta`` (no memory, no random init)."""
    with torch.device("meta"):
        return Zero123(config)


def _clip_leftover_shapes(config: Zero123Config) -> dict[str, tuple[int, ...]]:
    return {CLIP_PREFIX + k: s for k, s in text_leftover_shapes(config.clip).items()}


IGNORED_KEYS = (*EMA_BOOKKEEPING_KEYS, *(CLIP_PREFIX + k for k in text_leftover_shapes(CLIPVisionConfig())))


def official_key_shapes(
    config: Zero123Config | None = None,
) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Every key of an official-layout checkpoint for ``config`` with (shape, dtype), in official order."""
    config = Zero123Config() if config is None else config
    params = {k: tuple(v.shape) for k, v in build_meta_model(config).state_dict(keep_vars=True).items()}
    f32, out = torch.float32, {}
    out.update((k, ((config.num_timesteps,), f32)) for k in SCHEDULE_BUFFER_KEYS)
    unet = {k: s for k, s in params.items() if k.startswith(UNET_PREFIX)}
    out.update((k, (s, f32)) for k, s in unet.items())
    out["model_ema.decay"] = ((), f32)
    out["model_ema.num_updates"] = ((), torch.int32)
    out.update((ema_key(k), (s, f32)) for k, s in unet.items())
    out.update((k, (s, f32)) for k, s in params.items() if k.startswith("first_stage_model."))
    leftovers = _clip_leftover_shapes(config)
    # The official CLIP module registers three text-side entries before ``visual``, the rest after it.
    before = ("positional_embedding", "text_projection", "logit_scale")
    out.update((k, (s, f32)) for k, s in leftovers.items() if k.endswith(before))
    out.update((k, (s, f32)) for k, s in params.items() if k.startswith(CLIP_PREFIX))
    out.update((k, (s, f32)) for k, s in leftovers.items() if not k.endswith(before))
    out.update((k, (s, f32)) for k, s in params.items() if k.startswith("cc_projection."))
    missing = set(params) - set(out)
    if missing:  # pragma: no cover - a new module prefix would need a line above
        raise AssertionError(f"official_key_shapes does not place {sorted(missing)[:3]}")
    return out


@dataclass(frozen=True)
class SplitStateDict:
    """The tensors the model consumes (keyed by our module's names) and which UNet copy they are."""

    tensors: dict[str, torch.Tensor]
    unet_weights: str  # 'ema' or 'raw'


def _where(source: str | os.PathLike | None) -> str:
    return f" in {source}" if source is not None else ""


def split_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: Zero123Config | None = None,
    source: str | os.PathLike | None = None,
    model: Zero123 | None = None,
) -> SplitStateDict:
    """Validate an official-layout state dict (see the module docstring) and pick the tensors to load.

    Raises :class:`WeightsError` naming the first unexpected, missing or mis-shaped key, or
    ``alphas_cumprod`` if it differs from the Zero123 schedule; unused buffers that differ are one
    :class:`~sd3d.core.errors.WeightsWarning`.
    """
    config = Zero123Config() if config is None else config
    model = build_meta_model(config) if model is None else model
    where = _where(source)
    params = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    unet_keys = [k for k in params if k.startswith(UNET_PREFIX)]
    ema_to_unet = {ema_key(k): k for k in unet_keys}
    ignored = {*EMA_BOOKKEEPING_KEYS, *_clip_leftover_shapes(config)}
    schedule = set(SCHEDULE_BUFFER_KEYS)

    for key in state_dict:
        if key not in params and key not in ema_to_unet and key not in ignored and key not in schedule:
            raise WeightsError(f"unexpected key {key!r}{where}: not a Zero123 checkpoint for this model")

    use_ema = any(k in state_dict for k in ema_to_unet)
    source_of = {k: k for k in params}
    if use_ema:
        source_of.update((unet, ema) for ema, unet in ema_to_unet.items())
    tensors: dict[str, torch.Tensor] = {}
    for key, shape in params.items():
        src = source_of[key]
        if src not in state_dict:
            raise WeightsError(f"checkpoint{where} is missing key {src!r}")
        got = tuple(state_dict[src].shape)
        if got != shape:
            raise WeightsError(f"key {src!r}{where} has shape {list(got)}, expected {list(shape)}")
        tensors[key] = state_dict[src]
    # Accounted-for parameters are still shape-checked, so a foreign tensor under a known name is
    # refused; the EMA bookkeeping buffers are unused, so an odd one only joins the warning.
    extras = {k: params[k] for k in unet_keys} if use_ema else {}
    extras.update(_clip_leftover_shapes(config))
    for key, shape in extras.items():
        if key in state_dict and tuple(state_dict[key].shape) != tuple(shape):
            got = list(state_dict[key].shape)
            raise WeightsError(f"key {key!r}{where} has shape {got}, expected {list(shape)}")
    odd = {
        key: f"has shape {list(state_dict[key].shape)}, expected []"
        for key in EMA_BOOKKEEPING_KEYS
        if key in state_dict and tuple(state_dict[key].shape) != ()
    }
    check_buffers(state_dict, buffer_rules(config), "Zero123", source, extra_ignored=odd)
    return SplitStateDict(tensors=tensors, unet_weights="ema" if use_ema else "raw")


def buffer_rules(config: Zero123Config | None = None) -> dict[str, BufferRule]:
    """How each of the 12 schedule buffers of a checkpoint is judged (see :mod:`sd3d.models.buffers`)."""
    atol, rtol = _SCHEDULE_TOLERANCE
    return {
        key: BufferRule(ref, key in USED_BUFFER_KEYS, atol, rtol, "schedule")
        for key, ref in schedule_buffers(config).items()
    }


def detect_config(state_dict: Mapping[str, torch.Tensor]) -> Zero123Config:
    """The known config (official, tiny) whose ``cc_projection`` shape the checkpoint has; else official."""
    weight = state_dict.get("cc_projection.weight")
    if weight is not None:
        for make in CONFIGS.values():
            config = make()
            if tuple(weight.shape) == (config.clip.embed_dim, config.clip.embed_dim + config.pose_dim):
                return config
    return Zero123Config()


def load_zero123(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    config: Zero123Config | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Zero123:
    """Load a Zero123 checkpoint (``.ckpt`` / ``.safetensors`` path, or a state dict) for inference.

    ``config=None`` picks the known config matching the checkpoint's shapes. The model is built on
    ``meta`` and the checkpoint tensors are assigned directly (a memory-mapped file is not copied
    on the CPU in float32); eval mode, no gradients, on ``device`` with the UNet/VAE in ``dtype``.
    """
    from sd3d.weights import state_dict_from

    state_dict, path = state_dict_from(source)
    config = detect_config(state_dict) if config is None else config
    model = build_meta_model(config)
    split = split_state_dict(state_dict, config, path, model)
    unet_weights = split.unet_weights
    params = {k: _as_float32(v) for k, v in split.tensors.items()}
    del state_dict, split
    model.load_state_dict(params, strict=True, assign=True)
    del params
    model.unet_weights = unet_weights
    model.requires_grad_(False)
    model.eval()
    return model.to_inference(device, dtype)


def _as_float32(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return t if t.is_contiguous() else t.contiguous()


# --------------------------------------------------------------------------------------------------
# synthetic checkpoints (reference-syncdreamer.md Appendix B formula; reference-zero123.md Appendix A)
# --------------------------------------------------------------------------------------------------
def synthetic_entries(
    config: Zero123Config | None = None, keys: Iterable[str] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(key, tensor)`` for every official key (or those in ``keys``), one at a time (the fixture's weights).

    Parameters (the EMA copies keyed by their *flattened* names) get the synthetic formula; the 12
    schedule buffers their official values; ``model_ema.decay`` 0.9999 and ``num_updates`` 0 (int32).
    """
    from sd3d.models.synthetic import synthetic_tensor

    config = Zero123Config() if config is None else config
    schedule = schedule_buffers(config)
    wanted = None if keys is None else set(keys)
    for key, (shape, _dtype) in official_key_shapes(config).items():
        if wanted is not None and key not in wanted:
            continue
        if key in schedule:
            yield key, schedule[key]
        elif key == "model_ema.decay":
            yield key, torch.tensor(0.9999, dtype=torch.float32)
        elif key == "model_ema.num_updates":
            yield key, torch.tensor(0, dtype=torch.int32)
        else:
            yield key, synthetic_tensor(key, shape)


def write_synthetic_checkpoint(
    path: str | os.PathLike, config: Zero123Config | None = None, drop: tuple[str, ...] = ()
) -> Path:
    """Write a synthetic Zero123 checkpoint; keys starting with any of ``drop`` are left out.

    ``.safetensors`` is streamed one tensor at a time (the official size, 8.6 GB, needs about one
    tensor of memory); any other suffix is a Lightning-style ``{"state_dict": ...}`` torch file built
    in memory (meant for small configs). Written atomically.
    """
    from sd3d.core.io import atomic_path

    path = Path(path)
    config = Zero123Config() if config is None else config
    keep = {k: v for k, v in official_key_shapes(config).items() if not (drop and k.startswith(drop))}
    if path.suffix != ".safetensors":
        state = dict(synthetic_entries(config, keep))
        with atomic_path(path) as tmp:
            torch.save({"state_dict": state, "global_step": 0}, tmp)
        return path
    if sys.byteorder != "little":  # pragma: no cover
        raise RuntimeError("safetensors writing needs a little-endian machine")
    codes = {torch.float32: "F32", torch.int32: "I32"}
    # 4-byte types only, so every offset stays aligned; the header is padded to 8 bytes.
    header: dict[str, object] = {"__metadata__": {"format": "pt", "sd3d": f"synthetic zero123 {config.name}"}}
    offset = 0
    for key, (shape, dtype) in keep.items():
        nbytes = 4 * math.prod(shape)
        header[key] = {"dtype": codes[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for _key, tensor in synthetic_entries(config, keep):
            if tensor.numel():
                f.write(memoryview(tensor.contiguous().reshape(-1).numpy()).cast("B"))
    return path
