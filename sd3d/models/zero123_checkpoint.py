"""Zero123 / Zero123-XL checkpoints: the official state dict mapped onto :class:`~sd3d.models.zero123.Zero123`.

State-dict mapping (docs/reference/zero123.md §3.2, §3.8, §5.4). Every key of an official checkpoint
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sd3d.core.errors import WeightsError
from sd3d.core.io import atomic_path
from sd3d.models.buffers import BufferRule, check_buffers
from sd3d.models.clip import text_leftover_shapes
from sd3d.models.configs import CLIPVisionConfig
from sd3d.models.synthetic import synthetic_tensor
from sd3d.models.zero123 import CONFIGS, Zero123, Zero123Config
from sd3d.weights import state_dict_from

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
# synthetic checkpoints (docs/reference/syncdreamer.md §7.2; docs/reference/zero123.md §8.1)
# --------------------------------------------------------------------------------------------------
def synthetic_entries(
    config: Zero123Config | None = None, keys: Iterable[str] | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(key, tensor)`` for every official key (or those in ``keys``), one at a time (the fixture's weights).

    Parameters (the EMA copies keyed by their *flattened* names) get the synthetic formula; the 12
    schedule buffers their official values; ``model_ema.decay`` 0.9999 and ``num_updates`` 0 (int32).
    """

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
