"""Preparing a loaded SyncDreamer for lean, fast inference on a device.

Everything here is a property of a *loaded model* that stays valid across generations (``sd3d
batch`` loads one model and runs many images), as opposed to per-run choices (CUDA graphs, the
sampler), which live in :mod:`sd3d.pipelines.syncdreamer` and :mod:`sd3d.sampling`:

* **weight dtype**: the convolution / linear weights stored in bf16 or fp16 (half the memory, no
  per-step casts under autocast). Norm layers keep float32 parameters (the official numerics:
  normalised in float32) unless ``half_norms``, the CUDA default: the denoiser's, 3D nets' and
  VAE's norms then get half-precision parameters and normalise the half-precision activations
  directly, with float32 statistics (:mod:`sd3d.models.norms` says why; :func:`keeps_float32`,
  :func:`cast_weights_`);
* **conditioning offload**: the CLIP image tower and the VAE encoder (0.34 G parameters) are only
  needed once per input. :func:`offload_conditioning_` parks them in pinned host memory and
  :func:`conditioning_on_device` brings a device copy in for the conditioning call only;
* **memory layout** (:func:`set_channels_last_`) and ``torch.compile`` (:func:`compile_step_modules_`):
  speed options whose value the benchmark measures; ``norm_kernel="auto"`` (the default) lets the
  GroupNorms run a Triton kernel on CUDA that keeps the channels-last layout and rounds as PyTorch's
  CUDA GroupNorm does (:mod:`sd3d.models.norms`: 19 % off a generation on an H100, its deviation from
  float32 that of PyTorch's norms; ``"torch"`` keeps PyTorch's); ``depth_kernel="auto"`` likewise
  runs the depth attention's middle as one Triton kernel on CUDA (8 % off, no transposed copy of the
  frustum context) and ``geglu_kernel="auto"`` the feed-forward's ``a * gelu(g)`` (7 % more); CPU
  tensors always take PyTorch's;
* memory estimates that pick ``batch_view_num`` and the decode batch from free device memory.
"""

from __future__ import annotations

import torch
from torch import nn

from sd3d.core.device import cuda_memory_budget
from sd3d.models.conv_bias import set_conv_bias_folding
from sd3d.models.depth_attention import set_depth_attention_kernel
from sd3d.models.norms import HALF_CAPABLE_NORMS, set_norm_implementation
from sd3d.models.syncdreamer import SyncDreamer, conditioning_modules
from sd3d.models.unet import set_geglu_implementation

NORM_TYPES = (nn.GroupNorm, nn.LayerNorm)
HALF_DTYPES = (torch.bfloat16, torch.float16)

# Device memory per target view of one sample inside a denoising step, and per decoded 256x256
# image, with a margin over the peaks that benchmarks/generate.py records (benchmarks/RESULTS.md):
# half precision needs a few tens of MB a view above the weights; fp32 with TF32 off needs an order
# of magnitude more (cuDNN then picks workspace-hungry fp32 algorithms), hence the fp32 margin.
_BYTES_PER_VIEW = {"fp32": 0.6e9, "half": 0.12e9}
_BYTES_PER_DECODED_IMAGE = {"fp32": 0.2e9, "half": 0.1e9}
VIEW_CHOICES = (16, 8, 4, 2, 1)


def keeps_float32(model: nn.Module, half_norms: bool = False) -> set[str]:
    """Names of the parameters that stay float32 whatever the weight dtype: those of norm layers
    (with ``half_norms``, only those of norms that cannot compute in half precision: CLIP's)."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, NORM_TYPES) and not (half_norms and isinstance(module, HALF_CAPABLE_NORMS)):
            names.update(f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False))
    return names


def cast_weights_(model: nn.Module, dtype: torch.dtype, half_norms: bool = False) -> nn.Module:
    """Store every parameter in ``dtype`` (in place) except those :func:`keeps_float32` names;
    returns ``model``. ``half_norms`` only matters for a half-precision ``dtype``."""
    keep = keeps_float32(model, half_norms and dtype in HALF_DTYPES)
    for name, param in model.named_parameters():
        target = torch.float32 if name in keep else dtype
        if param.is_floating_point() and param.dtype != target:
            param.data = param.data.to(target)
    return model


def offload_conditioning_(model: SyncDreamer) -> SyncDreamer:
    """Park the conditioning modules' weights in pinned host memory (CUDA models only)."""
    if model.device.type != "cuda" or model.conditioning_offloaded:
        return model
    for module in conditioning_modules(model):
        for param in module.parameters():
            param.data = param.data.to("cpu").pin_memory()
    model.conditioning_offloaded = True
    return model


def onload_conditioning_(model: SyncDreamer) -> SyncDreamer:
    """Undo :func:`offload_conditioning_`: the conditioning modules live on the model's device again."""
    if not model.conditioning_offloaded:
        return model
    for module in conditioning_modules(model):
        for param in module.parameters():
            param.data = param.data.to(model.device)
    model.conditioning_offloaded = False
    return model


def set_channels_last_(model: SyncDreamer, unet: bool = True, volume: bool = True) -> SyncDreamer:
    """Channels-last (NHWC / NDHWC) weights and activations for the UNet and/or the 3D volume nets."""
    model.model.channels_last = unet
    fmt2d = torch.channels_last if unet else torch.contiguous_format
    for module in model.model.diffusion_model.modules():
        if isinstance(module, nn.Conv2d):
            module.weight.data = module.weight.data.contiguous(memory_format=fmt2d)
    model.spatial_volume.channels_last = volume
    fmt3d = torch.channels_last_3d if volume else torch.contiguous_format
    for net in (model.spatial_volume.spatial_volume_feats, model.spatial_volume.frustum_volume_feats):
        for module in net.modules():
            if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
                module.weight.data = module.weight.data.contiguous(memory_format=fmt3d)
    return model


def compile_step_modules_(model: SyncDreamer, **options) -> SyncDreamer:
    """``torch.compile`` the per-step networks in place (UNet, spatial and frustum 3D nets).

    Compiled on their first call (about a minute with cold caches, seconds with a warm on-disk
    inductor cache: benchmarks/RESULTS.md), then cached for the process; shapes are static, so a new sample
    count or ``batch_view_num`` compiles again.
    """
    if model.step_modules_compiled:
        return model
    options = {"dynamic": False, **options}
    model.model.diffusion_model.compile(**options)
    model.spatial_volume.spatial_volume_feats.compile(**options)
    model.spatial_volume.frustum_volume_feats.compile(**options)
    model.step_modules_compiled = True
    return model


def prepare_for_inference(
    model: SyncDreamer,
    dtype: torch.dtype = torch.float32,
    offload: bool | None = None,
    half_norms: bool | None = None,
    norm_kernel: str = "auto",
    depth_kernel: str = "auto",
    geglu_kernel: str = "auto",
    fold_conv_biases: bool | None = None,
) -> SyncDreamer:
    """Weights in ``dtype``; norms in half precision too if ``half_norms`` (None: on CUDA); on CUDA a
    channels-last UNet; conditioning offloaded if ``offload`` (None: when the device's free memory
    is tight, see :func:`should_offload`); the GroupNorms' ``norm_kernel`` (``auto``, the
    default: the Triton kernel where it applies, i.e. CUDA tensors; or ``torch``), and the depth
    attention's ``depth_kernel`` likewise (:mod:`sd3d.models.kernels.depth_attention`: session 16,
    H100, 1.776 -> 1.626 s a generation, deviation from fp32 1.24e-2 -> 1.21e-2), and the
    feed-forward's ``geglu_kernel`` (:mod:`sd3d.models.kernels.geglu`: 1.626 -> 1.517 s on top,
    deviation unchanged). ``fold_conv_biases`` (None: on CUDA) moves convolution biases out of
    cuDNN's separate additions (:mod:`sd3d.models.conv_bias`: session 17, H100, 1.494 -> 1.475 s,
    deviation 1.21e-2 -> 1.18e-2)."""
    set_norm_implementation(model, norm_kernel)
    set_depth_attention_kernel(model, depth_kernel)
    set_geglu_implementation(model, geglu_kernel)
    if half_norms is None:
        half_norms = model.device.type == "cuda"
    cast_weights_(model, dtype, half_norms)
    if model.device.type == "cuda":
        set_channels_last_(model, unet=True, volume=False)
    set_conv_bias_folding(
        model, model.device.type == "cuda" if fold_conv_biases is None else fold_conv_biases
    )
    if offload is None:
        offload = should_offload(model)
    if offload:
        offload_conditioning_(model)
    return model


def should_offload(model: SyncDreamer, tight_bytes: float = 6e9) -> bool:
    """Offload the conditioning encoders when a CUDA device has less than ``tight_bytes`` free."""
    if model.device.type != "cuda":
        return False
    return cuda_memory_budget(model.device) < tight_bytes


def _kind(dtype: torch.dtype) -> str:
    return "half" if dtype in HALF_DTYPES else "fp32"


def choose_batch_view_num(device: torch.device, dtype: torch.dtype, samples: int = 1, views: int = 16) -> int:
    """``views`` on CPU; on CUDA the largest of 16/8/4/2/1 views per chunk that fits the free memory."""
    if device.type != "cuda":
        return views
    free = cuda_memory_budget(device)
    per_view = _BYTES_PER_VIEW[_kind(dtype)] * max(1, samples)
    for n in VIEW_CHOICES:
        if n <= views and n * per_view <= 0.85 * free:
            return n
    return 1


def choose_decode_batch(device: torch.device, dtype: torch.dtype, images: int) -> int:
    """Images per VAE-decoder call: all of them on CPU; on CUDA at most 4 (the decoder's full-
    resolution activations dominate the peak), fewer if free memory is short."""
    if device.type != "cuda":
        return images
    free = cuda_memory_budget(device)
    per_image = _BYTES_PER_DECODED_IMAGE[_kind(dtype)]
    fits = int(0.5 * free // per_image)
    return max(1, min(images, 4, fits))
