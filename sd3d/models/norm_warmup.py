"""The Triton kernels' variants of a generation, compiled ahead in the background.

Since session 16 this covers every kernel that runs by default on CUDA: the GroupNorm's (the
reason it was written, below), and the depth attention's and GEGLU's (each compiled its variants at
its first launch, about 0.7 s of a fresh machine's first generation on an H100).

Why: with the kernel on by default (session 14), a machine's first generation took 17-28 s instead of
1.8 s on an H100, because its first step compiled some 70 kernel variants one after another (Triton
compiles one per distinct set of compile-time constants and argument specialisations; a tile shape per
channel count, fused or split, with or without bias terms and activation). They are then in Triton's
on-disk cache, so only a machine's first process (or the first after an sd3d upgrade changes the
kernel source) pays. That process now enumerates the launches a default generation makes -- the
official model run on the ``meta`` device (nothing allocated or computed), each GroupNorm's launches
computed by the kernel's own host code (:func:`sd3d.models.kernels.group_norm.kernel_launches`) -- and
compiles them in a few worker processes while the checkpoint loads (:func:`start_norm_kernel_warmup`,
called by :func:`sd3d.pipelines.syncdreamer.load_model`; :mod:`sd3d.core.triton_precompile`: on
threads, session 14's first way, the compiler held this process's interpreter and stretched the
model's loading from 3 to 17 s); the generation waits for it before its conditioning
(:meth:`KernelWarmUp.wait`). Variants it misses (other sample counts, chunk sizes) compile at their
first launch, as before. A warm-up that has run leaves a marker file in Triton's cache
(:func:`warmup_marker`), and a process that finds it starts none: with the kernels cached, a warm-up
is 70 cache look-ups that compete with the model's loading (measured: +4.7 s; without it the first
generation loads the kernels lazily, about 1.4 s).
"""

from __future__ import annotations

import json
import os
import types
import warnings
from pathlib import Path

import torch

from sd3d.core.device import indexed_cuda
from sd3d.core.triton_precompile import (
    CompileWorkers,
    KernelWarmUp,
    distinct_variants,
    kernel_name,
    leave_marker,
    triton_cache_dir,
)
from sd3d.models import kernels
from sd3d.models.configs import SyncDreamerConfig
from sd3d.models.conv_bias import set_conv_bias_folding
from sd3d.models.norms import GroupNorm
from sd3d.models.syncdreamer import Conditioning
from sd3d.models.warm_start import early_worker_count

HALF_DTYPES = (torch.bfloat16, torch.float16)


def generation_launches(
    config: SyncDreamerConfig,
    dtype: torch.dtype,
    *,
    samples: int = 1,
    batch_view_num: int = 16,
    decode_batch: int = 4,
    channels_last: bool = True,
    sms: int = 132,
) -> list:
    """The Triton kernel launches of one generation of ``samples`` x 16 views (conditioning, one
    guided denoising step in chunks of ``batch_view_num`` views, decoding ``decode_batch`` images per
    call) for a model prepared as on CUDA: half-precision (``dtype``) activations and norm parameters,
    a ``channels_last`` UNet, a device with ``sms`` multiprocessors. Every kernel that runs by default
    on CUDA: the GroupNorm's, the depth attention's and GEGLU's (:mod:`sd3d.models.kernels`). Empty
    without Triton."""
    if kernels.group_norm_module() is None:
        return []
    from sd3d.models.depth_attention import DepthAttention
    from sd3d.models.inference import set_channels_last_
    from sd3d.models.syncdreamer_checkpoint import build_meta_model
    from sd3d.models.unet import GEGLU

    meta = torch.device("meta")
    launches: list = []

    def recording(self: GroupNorm, x: torch.Tensor, pre_bias=None, activation=None) -> torch.Tensor:
        stand_in = torch.empty_strided(x.shape, x.stride(), dtype=dtype, device=meta)
        launches.extend(norm_launches(self, stand_in, pre_bias, activation, sms))
        return GroupNorm.forward(self, x, pre_bias, activation)  # on meta: shapes only

    def recording_depth(self: DepthAttention, q: torch.Tensor, context: torch.Tensor) -> str:
        launches.extend(depth_attention_launches(q, context, dtype))
        return "recorded on the meta device"  # the layer then takes PyTorch's path (shapes only)

    def recording_geglu(self: GEGLU, x: torch.Tensor) -> torch.Tensor:
        launches.extend(geglu_launches(self.proj(x), dtype))
        return GEGLU.forward(self, x)  # PyTorch's path on meta: shapes only

    model = build_meta_model(config).to(meta)
    set_channels_last_(model, unet=channels_last, volume=False)
    set_conv_bias_folding(model, True)  # as prepare_for_inference on CUDA
    for layer in model.modules():  # this model's instances only: a real model may be running
        if isinstance(layer, GroupNorm):
            layer.forward = types.MethodType(recording, layer)
        elif isinstance(layer, torch.nn.Conv2d):
            layer._conv_forward = types.MethodType(_conv_keeping_channels_last, layer)
        elif isinstance(layer, DepthAttention):
            layer.kernel_unavailable = types.MethodType(recording_depth, layer)
        elif isinstance(layer, GEGLU):
            layer.forward = types.MethodType(recording_geglu, layer)
    B, N = samples, config.view_num
    size, channels = config.latent_size, config.latent_channels
    with torch.no_grad():
        image = torch.empty(B, 3, config.image_size, config.image_size, device=meta)
        mean, _ = model.encode_posterior(image)
        clip = model.encode_clip(image)
        viewpoint = torch.empty(B, N, 4, device=meta)
        cond = Conditioning(
            input_latent=mean,
            concat_latent=mean,
            clip_embed=clip,
            viewpoint=viewpoint,
            contexts=model.project_contexts(clip, viewpoint),
        )
        model.predict_eps(
            torch.empty(B, N, channels, size, size, device=meta), 981, cond, 2.0, batch_view_num
        )
        model.decode_latents(torch.empty(B * N, channels, size, size, device=meta), decode_batch)
    return launches


def generation_norm_launches(config: SyncDreamerConfig, dtype: torch.dtype, **shape) -> list:
    """The GroupNorm's launches of :func:`generation_launches` (benchmarks/norm_variants.py counts them)."""
    module = kernels.group_norm_module()
    if module is None:
        return []
    names = {kernel_name(k) for k in module.KERNELS}
    return [
        launch
        for launch in generation_launches(config, dtype, **shape)
        if kernel_name(launch.kernel) in names
    ]


def generation_kernel_variants(config: SyncDreamerConfig, dtype: torch.dtype, **shape) -> list:
    """One launch per kernel variant of :func:`generation_launches` (what a warm-up compiles), in an
    order every process computes alike (the compile workers each take a share of it)."""
    return distinct_variants(generation_launches(config, dtype, **shape))


def depth_attention_launches(
    q: torch.Tensor, context: torch.Tensor, dtype: torch.dtype | None = None
) -> list:
    """The depth-attention kernel's launches for queries ``q`` and ``context`` (real tensors or meta
    stand-ins), both taken as ``dtype`` (``None``: their own); none where the kernel would not take them."""
    module = kernels.depth_attention_module()
    if module is None:
        return []
    meta = torch.device("meta")
    q = torch.empty(q.shape, dtype=dtype or q.dtype, device=meta)  # the kernel makes its queries contiguous
    context = torch.empty_strided(context.shape, context.stride(), dtype=dtype or context.dtype, device=meta)
    if module.input_reason(q, context) is not None:
        return []
    return module.kernel_launches(q, context, torch.empty_like(q))


def geglu_launches(h: torch.Tensor, dtype: torch.dtype | None = None) -> list:
    """The fused GEGLU's launches for the projection ``h`` (real or meta) in ``dtype`` (``None``: its own)."""
    module = kernels.geglu_module()
    if module is None:
        return []
    dtype = dtype or h.dtype
    stand_in = torch.empty_strided(h.shape, h.stride(), dtype=dtype, device=torch.device("meta"))
    if module.input_reason(stand_in) is not None:
        return []
    out = torch.empty(*h.shape[:-1], h.shape[-1] // 2, dtype=dtype, device=torch.device("meta"))
    return module.kernel_launches(stand_in, out)


def _channels_last(t: torch.Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _conv_keeping_channels_last(
    self: torch.nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """A convolution whose input or weights are channels-last returns channels-last output on CUDA
    (cuDNN, as on the CPU); the meta device's returns a contiguous one. (``_conv_forward``, which
    ``forward`` and :func:`sd3d.models.conv_bias.conv_without_bias` both call.)"""
    out = torch.nn.Conv2d._conv_forward(self, x, weight, bias)
    if _channels_last(x) or _channels_last(self.weight):
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def norm_launches(norm: GroupNorm, x: torch.Tensor, pre_bias, activation: str | None, sms: int) -> list:
    """The kernel launches ``norm(x, pre_bias, activation)`` makes on a CUDA device with ``sms``
    multiprocessors, for an ``x`` (a meta stand-in, or a real tensor of any device) in the dtype the
    norm computes in, and parameters in that dtype too (half-precision norms, as on CUDA)."""
    module = kernels.group_norm_module()
    if module is None or module.input_reason(x, norm.num_groups, x.dtype, norm.kernel_rounding) is not None:
        return []

    def like(t: torch.Tensor) -> torch.Tensor:
        return torch.empty_strided(t.shape, t.stride(), dtype=x.dtype, device=torch.device("meta"))

    n, c = x.shape[:2]
    xh = like(x)
    y = module.output_like(xh, x.dtype)
    terms = [like(t) for t in module._term_matrices(pre_bias, n, c)]
    weight = like(norm.weight) if norm.weight is not None else None
    bias = like(norm.bias) if norm.bias is not None else None
    return module.kernel_launches(
        xh, y, norm.num_groups, weight, bias, norm.eps, activation, terms, None, norm.kernel_rounding, sms
    )


def warmup_marker(config: SyncDreamerConfig, device: torch.device, dtype: torch.dtype, **shape) -> Path:
    """The file a completed warm-up leaves in Triton's cache: named by everything that decides the
    variants (the kernels' sources, Triton's and PyTorch's versions, the GPU, the model's config, the
    dtype and the generation's chunking), so that it is found exactly when those kernels are cached,
    and goes with the cache when that is cleared."""
    import hashlib
    from dataclasses import asdict

    import triton

    from sd3d.models import conv_bias, inference, norms, unet, volume
    from sd3d.models import depth_attention as depth_layer
    from sd3d.models.kernels import depth_attention, geglu, group_norm

    # the kernels, and the layers that decide which launches a generation makes (a model change that
    # adds variants, as session 17's conv-bias folding did, must not find an older marker)
    sources = (group_norm, depth_attention, geglu, conv_bias, inference, norms, unet, volume, depth_layer)

    props = torch.cuda.get_device_properties(device)
    described = {
        "kernels": [hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest() for m in sources],
        "triton": triton.__version__,
        "torch": torch.__version__,
        "gpu": [props.name, props.major, props.minor, props.multi_processor_count],
        "config": asdict(config),
        "dtype": str(dtype),
        **shape,
    }
    key = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return triton_cache_dir() / f"sd3d-groupnorm-warm-{key}"


def start_norm_kernel_warmup(
    config: SyncDreamerConfig,
    device: torch.device,
    dtype: torch.dtype,
    *,
    batch_view_num: int = 16,
    decode_batch: int = 4,
    workers: int | None = None,
    processes: bool = True,
    force: bool = False,
    pool: CompileWorkers | None = None,
) -> KernelWarmUp | None:
    """Compile a one-sample generation's GroupNorm kernel variants in the background, in ``workers``
    processes (default: up to 8, leaving a CPU core to this process; ``processes=False``: threads of
    this process, session 14's way, kept for the comparison); ``None`` where the kernel does not run
    (not CUDA, not half precision, no Triton) and where an earlier warm-up left its
    :func:`warmup_marker` (unless ``force``).

    Why the marker: on an H100 (session 14) the warm-up took a fresh cache's first generation from
    44.4 s (process start, imports and model included) to 29.3 s, but with the kernels already cached
    it cost 4.7 s (11.0 -> 15.7 s): its 70 cache look-ups and the meta-device run compete with the
    model's loading for the interpreter. So only a process that has not seen these kernels warms up.
    Why processes: the threads held the interpreter so much that the model took 17.1 s to load
    instead of 3.1 s (:mod:`sd3d.core.triton_precompile`). ``pool``: workers started earlier
    (:mod:`sd3d.models.warm_start`), given the work instead of new ones, or closed where there is none."""
    started = _start(config, device, dtype, batch_view_num, decode_batch, workers, processes, force, pool)
    if started is None and pool is not None:
        pool.close()
    return started


def _start(config, device, dtype, batch_view_num, decode_batch, workers, processes, force, pool):
    if device.type != "cuda" or dtype not in HALF_DTYPES:
        return None
    if pool is not None and not processes:
        return None  # the threads' way (kept for the comparison) has no use for worker processes
    module = kernels.group_norm_module()
    if module is None:
        return None
    try:
        device = indexed_cuda(device)
        marker = warmup_marker(
            config, device, dtype, batch_view_num=batch_view_num, decode_batch=decode_batch
        )
        if marker.exists() and not force:
            return None
        props = torch.cuda.get_device_properties(device)
        sms, capability = props.multi_processor_count, (props.major, props.minor)
    except Exception as exc:  # an optimisation only: the kernels then compile at their launches
        warnings.warn(f"GroupNorm kernel warm-up skipped: {type(exc).__name__}: {exc}", stacklevel=2)
        return None
    workers = workers or (early_worker_count() if processes else max(1, min(8, os.cpu_count() or 1)))

    shape = dict(batch_view_num=batch_view_num, decode_batch=decode_batch, sms=sms)

    def in_processes() -> dict:
        with pool or CompileWorkers(workers, __name__) as workers_:  # they enumerate the variants
            return workers_.compile(
                generation_kernel_variants,
                dict(config=config, dtype=dtype, **shape),
                (device.index, capability),
            )

    def work() -> dict:
        if processes:
            result = in_processes()
        else:
            result = module.warm_up(generation_norm_launches(config, dtype, **shape), workers, device)
        leave_marker(marker, result)
        return result

    return KernelWarmUp(work)
