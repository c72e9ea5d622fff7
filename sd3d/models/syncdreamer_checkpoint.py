"""Official SyncDreamer state dict <-> :class:`~sd3d.models.syncdreamer.SyncDreamer`.

Our modules carry the official names, so every parameter key maps to itself. Each key of the
official checkpoint (``reference/syncdreamer-state-dict-keys.json``, 1618 entries) is accounted for:

* consumed: every parameter of the model, with the same shape (1602 keys);
* ignored: CLIP's text-side leftovers, kept by the official code after ``del model.transformer``
  but never used by the image encoder (:data:`IGNORED_KEYS`, 6 keys);
* checked: the schedule and camera buffers (:data:`CHECKED_BUFFER_KEYS`, 10 keys). We recompute
  them (``sd3d.sampling.schedule``, ``sd3d.core.cameras``) and never load them; their copies are judged
  by :mod:`sd3d.models.buffers`. Those inference relies on (:data:`USED_BUFFER_KEYS`: ``betas``,
  read by the DPM-Solver++/UniPC samplers, ``alphas_cumprod``, read by DDIM, and the cameras
  ``poses``, ``Ks``, ``azimuth``) must agree, so a checkpoint trained with another schedule or camera
  rig is refused instead of silently producing wrong views; the training-only tables (``alphas``,
  ``sqrt_*``, ``posterior_*``) never make a load fail: a disagreement is a warning.

Ignored and checked keys may be absent (a converted copy may drop them); a missing parameter, an
unexpected key or a shape mismatch is a :class:`~sd3d.core.errors.WeightsError` naming the key.

Loading builds the model on the ``meta`` device (no random initialisation of 1.39 G parameters) and
assigns the checkpoint tensors directly, so a memory-mapped checkpoint is never copied on the CPU.
Each consumed tensor goes to the target device on its own and is cast there to the target dtype
(:func:`sd3d.models.inference.keeps_float32` names the parameters that stay float32), so loading
for bf16 inference never holds an fp32 copy of the model on the GPU. A ``.safetensors`` file is
opened lazily: shapes come from its header, and only the consumed tensors are ever read (the CLIP
text leftovers never are).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from sd3d.core.errors import WeightsError
from sd3d.models.buffers import BufferRule, check_buffers
from sd3d.models.clip import text_leftover_shapes
from sd3d.models.configs import CONFIGS, SyncDreamerConfig
from sd3d.models.inference import keeps_float32
from sd3d.models.syncdreamer import SyncDreamer, camera_buffers
from sd3d.sampling.schedule import scaled_linear_schedule
from sd3d.weights import state_dict_from
from sd3d.weights.loading import sniff_format

SCHEDULE_BUFFER_KEYS = (
    "betas",
    "alphas",
    "alphas_cumprod",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
)
CAMERA_BUFFER_KEYS = ("poses", "Ks", "azimuth")
CHECKED_BUFFER_KEYS = SCHEDULE_BUFFER_KEYS + CAMERA_BUFFER_KEYS
USED_BUFFER_KEYS = ("betas", "alphas_cumprod") + CAMERA_BUFFER_KEYS
CLIP_PREFIX = "clip_image_encoder.model."
IGNORED_KEYS = tuple(CLIP_PREFIX + k for k in text_leftover_shapes(SyncDreamerConfig().clip))

# Checkpoint buffers are compared with our recomputation within these (atol, rtol): the schedule is
# the same float32 arithmetic; the official poses are Blender float32 values (1.5e-7 off the formula).
_BUFFER_TOLERANCE = {"schedule": (1e-6, 1e-5), "camera": (1e-5, 0.0)}


def reference_buffers(config: SyncDreamerConfig) -> dict[str, torch.Tensor]:
    """The 10 official buffers as we recompute them (float32, CPU)."""
    schedule = scaled_linear_schedule(config.num_timesteps, config.linear_start, config.linear_end)
    return {**schedule.buffers(), **camera_buffers(config)}


def buffer_rules(config: SyncDreamerConfig) -> dict[str, BufferRule]:
    """How each of the 10 buffers of a checkpoint is judged (see :mod:`sd3d.models.buffers`)."""
    rules = {}
    for key, ref in reference_buffers(config).items():
        kind = "schedule" if key in SCHEDULE_BUFFER_KEYS else "camera"
        rules[key] = BufferRule(ref, key in USED_BUFFER_KEYS, *_BUFFER_TOLERANCE[kind], kind)
    return rules


def build_meta_model(config: SyncDreamerConfig) -> SyncDreamer:
    """A model whose parameters live on ``meta`` (no memory, no init); buffers are real."""
    with torch.device("meta"):
        return SyncDreamer(config)


def expected_shapes(config: SyncDreamerConfig) -> dict[str, tuple[int, ...]]:
    """Every key an official-layout checkpoint holds for ``config``, in official order, with shapes."""
    model = build_meta_model(config)
    buffers = reference_buffers(config)
    shapes: dict[str, tuple[int, ...]] = {k: tuple(buffers[k].shape) for k in CHECKED_BUFFER_KEYS}
    leftovers = {CLIP_PREFIX + k: s for k, s in text_leftover_shapes(config.clip).items()}
    # The official CLIP module registers three text-side parameters before ``visual`` and the
    # token embedding / final LayerNorm after it.
    before = [k for k in leftovers if k.endswith(("positional_embedding", "text_projection", "logit_scale"))]
    after = [k for k in leftovers if k not in before]
    visual = CLIP_PREFIX + "visual."
    for key, param in model.state_dict(keep_vars=True).items():
        if key.startswith(visual) and before:
            shapes.update((k, leftovers[k]) for k in before)
            before = []
        if not key.startswith(visual) and shapes and next(reversed(shapes)).startswith(visual):
            shapes.update((k, leftovers[k]) for k in after)
        shapes[key] = tuple(param.shape)
    return shapes


def _describe(source: str | os.PathLike | None) -> str:
    return f" in {source}" if source is not None else ""


class LazySafetensors(Mapping):
    """The tensors of an open ``.safetensors`` file by name; shapes from the header, data read on access."""

    def __init__(self, handle) -> None:
        self._handle = handle
        self._keys = list(handle.keys())  # noqa: SIM118 - safe_open is not a dict
        self._key_set = set(self._keys)

    def __getitem__(self, key: str) -> torch.Tensor:
        if key not in self._key_set:
            raise KeyError(key)
        return self._handle.get_tensor(key)

    def __contains__(self, key: object) -> bool:  # Mapping's default would read the tensor
        return key in self._key_set

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def shape_of(self, key: str) -> tuple[int, ...]:
        return tuple(self._handle.get_slice(key).get_shape())


def _shape(state_dict: Mapping[str, torch.Tensor], key: str) -> tuple[int, ...]:
    if isinstance(state_dict, LazySafetensors):
        return state_dict.shape_of(key)
    return tuple(state_dict[key].shape)


def split_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    config: SyncDreamerConfig,
    source: str | os.PathLike | None = None,
    model: SyncDreamer | None = None,
) -> dict[str, torch.Tensor]:
    """Validate an official-layout state dict; return only the tensors the model consumes.

    Raises :class:`WeightsError` naming the first missing, unexpected or mis-shaped key, or the first
    buffer inference relies on that disagrees with our recomputation; unused buffers that disagree
    are one :class:`~sd3d.core.errors.WeightsWarning`.
    """
    return {k: state_dict[k] for k in consumed_keys(state_dict, config, source, model)}


def consumed_keys(
    state_dict: Mapping[str, torch.Tensor],
    config: SyncDreamerConfig,
    source: str | os.PathLike | None = None,
    model: SyncDreamer | None = None,
) -> list[str]:
    """:func:`split_state_dict`'s checks, returning the consumed keys without touching their data."""
    model = build_meta_model(config) if model is None else model
    params = {k: tuple(v.shape) for k, v in model.state_dict(keep_vars=True).items()}
    ignored = {CLIP_PREFIX + k for k in text_leftover_shapes(config.clip)}
    rules = buffer_rules(config)
    where = _describe(source)

    for key in state_dict:
        if key not in params and key not in ignored and key not in rules:
            raise WeightsError(f"unexpected key {key!r}{where}: not a SyncDreamer checkpoint for this model")
    for key, shape in params.items():
        if key not in state_dict:
            raise WeightsError(f"checkpoint{where} is missing key {key!r}")
        got = _shape(state_dict, key)
        if got != shape:
            raise WeightsError(f"key {key!r}{where} has shape {list(got)}, expected {list(shape)}")
    check_buffers(state_dict, rules, "SyncDreamer", source)
    return list(params)


# One key per sub-network whose shape tells the known configs apart.
_SIGNATURE_KEYS = (
    "first_stage_model.encoder.conv_in.weight",
    "clip_image_encoder.model.visual.conv1.weight",
    "spatial_volume.spatial_volume_feats.init_conv.weight",
    "model.diffusion_model.input_blocks.0.0.weight",
    "model.diffusion_model.out.2.weight",
)


def detect_config(state_dict: Mapping[str, torch.Tensor]) -> SyncDreamerConfig:
    """The known config (official or tiny) whose sizes the checkpoint has; official if none fits.

    Lets one loader read the real checkpoint and the small synthetic ones tests write. A checkpoint
    matching none is then reported key by key by :func:`split_state_dict`.
    """

    for factory in CONFIGS.values():
        config = factory()
        shapes = _signature_shapes(config)
        if all(k in state_dict and _shape(state_dict, k) == s for k, s in shapes.items()):
            return config
    return SyncDreamerConfig()


@functools.lru_cache(maxsize=8)
def _signature_shapes(config: SyncDreamerConfig) -> dict[str, tuple[int, ...]]:
    model = build_meta_model(config)
    params = model.state_dict(keep_vars=True)
    return {k: tuple(params[k].shape) for k in _SIGNATURE_KEYS}


def load_syncdreamer(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
    config: SyncDreamerConfig | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SyncDreamer:
    """Load a SyncDreamer checkpoint (``.ckpt`` / ``.safetensors`` path, or a state dict) for inference.

    ``config=None`` picks the known config matching the checkpoint (:func:`detect_config`). The
    returned model is in eval mode, without gradients, on ``device``; its weights are ``dtype``
    except those :func:`~sd3d.models.inference.keeps_float32` keeps in float32 (norms).
    """

    device = torch.device(device)
    if source is not None and not isinstance(source, Mapping) and Path(source).suffix == ".safetensors":
        return _load_safetensors(Path(source), config, device, dtype)

    state_dict, path = state_dict_from(source)
    return _assemble(state_dict, config, device, dtype, path, keeps_float32)


def _load_safetensors(
    path: Path, config: SyncDreamerConfig | None, device: torch.device, dtype: torch.dtype
) -> SyncDreamer:

    if not path.is_file():
        raise WeightsError(f"checkpoint not found: {path}")
    if sniff_format(path) != "safetensors":
        raise WeightsError(f"cannot read {path}: not a safetensors file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return _assemble(LazySafetensors(handle), config, device, dtype, path, keeps_float32)
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"cannot read {path}: {str(exc).strip().splitlines()[0]}") from exc


def _assemble(state_dict, config, device, dtype, path, keeps_float32) -> SyncDreamer:
    config = detect_config(state_dict) if config is None else config
    model = build_meta_model(config)
    keys = consumed_keys(state_dict, config, path, model)
    fp32_keys = keeps_float32(model)
    params = {}
    for key in keys:  # one tensor at a time: read, move, cast
        target = torch.float32 if key in fp32_keys else dtype
        params[key] = _to(state_dict[key], device, target)
    model.load_state_dict(params, strict=False, assign=True)
    del params, state_dict
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:  # pragma: no cover - split_state_dict guarantees every parameter is present
        raise WeightsError(f"checkpoint{_describe(path)} is missing key {leftover[0]!r}")
    model.requires_grad_(False)
    model.eval()
    return model.to(device)


def _to(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``t`` on ``device`` in ``dtype``, contiguous; moved before a down-cast (the GPU casts fast),
    cast before an up-cast (less to move)."""
    t = t.detach()
    narrowing = t.is_floating_point() and torch.finfo(dtype).bits < torch.finfo(t.dtype).bits
    if narrowing:
        t = t.to(device).to(dtype)
    else:
        t = t.to(dtype).to(device)
    return t if t.is_contiguous() else t.contiguous()
