"""The hash grid's Triton kernel variants, compiled in worker processes while a reconstruction starts.

Why: on an H100 a machine's first ``sd3d reconstruct`` (standard) took 21.2 s from process start to
GLB, its second 16.3 s (benchmarks/RESULTS.md, session 15): the first fit compiled the hash grid's
kernel variants at their first launches, one after another, inside its training (14.4 s against
9.8 s). Triton compiles one variant per kernel, set of compile-time constants and argument
specialisation (an integer argument divisible by 16 or not); a fit meets ten or so of them, some
only hundreds of steps in (the point count of a batch changes with the occupancy grid), and each
costs a fraction of a second of this process's time.

:func:`start_hash_grid_warmup` has a few worker processes (:mod:`sd3d.core.triton_precompile`)
compile every variant a fit can launch (:func:`fit_variants`, enumerated with the kernels' own host
code on ``meta`` tensors) into Triton's on-disk cache while this process reads the views and builds
the field. The fit does not wait for them: a launch whose variant a worker has finished loads it
from the cache, and one that comes first compiles it as before (the on-disk cache is written
atomically, so both may). A warm-up that ran leaves a marker in Triton's cache
(:func:`warmup_marker`), and later processes start none: with the kernels cached, eight processes
importing PyTorch would only compete with the fit for the CPU.

Measured on an H100 (session 16, started when the fit starts): a fresh cache's standard
``sd3d reconstruct`` took 21.4 s against 23.3 s without it and 17.8 s with the kernels cached; the
workers spent ~3 s importing PyTorch and Triton before compiling, so the fit's first launches still
compiled their own. Hence the earlier starts: ``sd3d reconstruct`` starts the workers before it
imports PyTorch (:mod:`recon.warm_start`), ``sd3d run`` before it generates
(:func:`sd3d.workflows.run.start_recon_warmup`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch

from recon.encoding import HashGridConfig, level_layout
from recon.warm_start import MARKER_GLOB, early_worker_count
from sd3d.core.device import indexed_cuda
from sd3d.core.triton_precompile import (
    CompileWorkers,
    KernelWarmUp,
    Launch,
    distinct_variants,
    leave_marker,
    triton_cache_dir,
    variant_key,
)

POINT_COUNTS = (65536, 65535)
"""Point counts the enumeration launches with: one divisible by 16 and one not, the two ways Triton
specialises an integer argument other than 1 (a fit's batches take both, by the occupancy grid)."""

BACKWARD_GRADIENTS = ((True, True), (True, False), (False, True))
"""(features, Jacobian) gradients a backward can receive: the training loss reaches both (colour and
SDF through the features, the eikonal term through the Jacobian); the other two are for losses that
use one of them."""


def fit_variants(cfg: HashGridConfig, block: int | None = None) -> list[Launch]:
    """Every distinct kernel variant a fit of a grid with ``cfg`` can launch, in the order a fit
    first needs them (the training step's forward with Jacobian and its backward first, so that
    round-robin workers start with those): the forward with and without Jacobian, the backward for
    each of :data:`BACKWARD_GRADIENTS`, each for the dense and the hashed levels and for each of
    :data:`POINT_COUNTS`. Tensors are ``meta``: only their dtypes matter to the compiler."""
    from recon.kernels import hash_grid

    block = hash_grid.BLOCK if block is None else block
    layout = level_layout(cfg)
    levels, features = cfg.n_levels, cfg.n_features_per_level
    n_dense = int(sum(dense for *_, dense in layout))
    cols = levels * features
    meta = torch.device("meta")

    def f32(*shape: int) -> torch.Tensor:
        return torch.empty(shape, dtype=torch.float32, device=meta)

    def i32(*shape: int) -> torch.Tensor:
        return torch.empty(shape, dtype=torch.int32, device=meta)

    rows = sum(r for _, _, r, _ in layout)
    table, scales, mult, rows_t, offsets = (
        f32(rows, features),
        f32(levels),
        i32(levels, 3),
        i32(levels),
        i32(levels),
    )
    out: list[Launch] = []

    def forward(n: int, with_jacobian: bool) -> None:
        u, feats, jac = f32(n, 3), f32(n, cols), f32(n, cols, 3)
        args = (u, table, scales, mult, rows_t, offsets, feats, jac if with_jacobian else feats)
        out.extend(
            hash_grid.launches(
                hash_grid._forward_kernel,
                args,
                n,
                n_dense,
                levels,
                cols,
                block,
                F=features,
                WITH_JAC=with_jacobian,
            )
        )

    def backward(n: int, grad_features: bool, grad_jacobian: bool) -> None:
        u, gf, gj, gtable = f32(n, 3), f32(n, cols), f32(n, cols, 3), f32(rows, features)
        args = (
            u,
            scales,
            mult,
            rows_t,
            offsets,
            gf if grad_features else gtable,
            gj if grad_jacobian else gtable,
            gtable,
        )
        consts = {"F": features, "HAS_GFEAT": grad_features, "HAS_GJAC": grad_jacobian}
        out.extend(
            hash_grid.launches(hash_grid._backward_kernel, args, n, n_dense, levels, cols, block, **consts)
        )

    for n in POINT_COUNTS:  # the training step's pair first
        forward(n, True)
        backward(n, True, True)
    for n in POINT_COUNTS:
        forward(n, False)
        for grads in BACKWARD_GRADIENTS[1:]:
            backward(n, *grads)
    return distinct_variants(out)


def warmup_marker(cfg: HashGridConfig, device: torch.device) -> Path:
    """The file a completed warm-up leaves in Triton's cache, named by what decides the compiled
    kernels: their source, Triton's and PyTorch's versions, the GPU's architecture and the variants
    themselves (the presets' grids differ in sizes that are no part of any variant, so one warm-up
    serves them all)."""
    import triton

    from recon.kernels import hash_grid

    props = torch.cuda.get_device_properties(device)
    described = {
        "kernel": hashlib.sha256(Path(hash_grid.__file__).read_bytes()).hexdigest(),
        "warmup": hashlib.sha256(Path(__file__).read_bytes()).hexdigest(),
        "block": hash_grid.BLOCK,
        "triton": triton.__version__,
        "torch": torch.__version__,
        "gpu": [props.major, props.minor],
        "variants": sorted(str(variant_key(launch)) for launch in fit_variants(cfg)),
    }
    key = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:24]
    return triton_cache_dir() / MARKER_GLOB.replace("*", key)


def start_hash_grid_warmup(
    cfg: HashGridConfig,
    device: torch.device,
    *,
    workers: int | None = None,
    force: bool = False,
    pool: CompileWorkers | None = None,
) -> KernelWarmUp | None:
    """Compile :func:`fit_variants` for ``cfg`` on ``device`` in ``workers`` processes (default: up
    to 4, leaving this process a core), in the background; ``None`` where there is nothing to do: not
    CUDA, no Triton, or an earlier warm-up left its :func:`warmup_marker` (unless ``force``). ``pool``:
    workers started earlier (:func:`start_early_workers`), given the work instead of new ones, or
    closed where there is none. Never raises: a warm-up that cannot start only means the kernels
    compile at their launches."""
    from recon import kernels

    def nothing() -> None:
        if pool is not None:
            pool.close()

    if device.type != "cuda" or kernels.hash_grid_module() is None:
        return nothing()
    try:
        device = indexed_cuda(device)
        marker = warmup_marker(cfg, device)
        if marker.exists() and not force:
            return nothing()
        props = torch.cuda.get_device_properties(device)
        gpu = (device.index, (props.major, props.minor))
    except Exception as exc:
        warnings.warn(f"hash-grid kernel warm-up skipped: {type(exc).__name__}: {exc}", stacklevel=2)
        return nothing()
    # started now unless given: they import PyTorch while this process reads the views
    pool = pool or CompileWorkers(workers or early_worker_count(), __name__)

    def work() -> dict:
        with pool:
            result = pool.compile(fit_variants, {"cfg": cfg}, gpu)
        leave_marker(marker, result)
        return result

    return KernelWarmUp(work)
