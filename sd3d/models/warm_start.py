"""Starting the generation's kernel warm-up before PyTorch is imported: nothing here imports it.

Why: a fresh machine's first ``sd3d run`` waited 11-15 s for the GroupNorm, depth-attention and
GEGLU kernels to compile (session 17, H100: 77 variants in 12.9 s, of which the generation waited
11.1 s; RESULTS). The workers (:mod:`sd3d.models.norm_warmup`) first spend ~3 s importing PyTorch,
Triton and the model code; started by the command before it imports its own (as ``sd3d
reconstruct`` does for the hash grid, :mod:`recon.warm_start`), they import while the command does.
:func:`sd3d.pipelines.syncdreamer.load_model` (``compile_workers=``) gives them the work, or closes
them where the exact check (which needs PyTorch) finds the kernels already compiled.
"""

from __future__ import annotations

import os

from sd3d.core.triton_precompile import CompileWorkers, start_workers_if_gpu

MARKER_GLOB = "sd3d-groupnorm-warm-*"
"""What :func:`sd3d.models.norm_warmup.warmup_marker`'s files look like."""


def start_early_workers(device: str) -> CompileWorkers | None:
    """The generation warm-up's workers, started by a command before it imports PyTorch where the
    kernels may be wanted: not ``--device cpu``, a CUDA device visible to the driver, no warm-up
    marker in Triton's cache. ``None`` otherwise. The caller closes them when it ends (closing
    workers that the warm-up already closed, or that finished, does nothing)."""
    return start_workers_if_gpu("sd3d.models.norm_warmup", early_worker_count(), device, MARKER_GLOB)


def early_worker_count() -> int:
    """As many workers as :func:`sd3d.models.norm_warmup.start_norm_kernel_warmup` starts itself:
    up to 8, leaving this process a core."""
    return max(1, min(8, (os.cpu_count() or 1) - 1))
