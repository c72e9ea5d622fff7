"""Starting the hash grid's kernel warm-up before PyTorch is imported: nothing here imports it.

Why a module of its own: ``recon.kernels`` imports PyTorch, and the point of starting the workers at
a command's very start is that they import PyTorch and Triton (~3 s on an H100's host, session 16)
while the command imports its own, instead of after (:mod:`recon.kernels.warmup` says what they
compile and why).
"""

from __future__ import annotations

import os

from sd3d.core.triton_precompile import CompileWorkers, start_workers_if_gpu

MARKER_GLOB = "sd3d-hashgrid-warm-*"
"""What :func:`recon.kernels.warmup.warmup_marker`'s files look like (the early start's cheap check for a warm cache)."""


def start_early_workers(device: str, hash_grid: str = "auto") -> CompileWorkers | None:
    """The hash grid's warm-up workers (:mod:`recon.kernels.warmup`, which they import), started by
    ``sd3d reconstruct`` before it imports PyTorch, where the Triton grid may train: not
    ``--hash-grid torch`` / ``tcnn``, not the CPU, a CUDA device visible and no warm-up marker in
    Triton's cache. Hand them to :func:`recon.pipeline.reconstruct` (``compile_workers=``), which
    gives them their work or closes them."""
    if hash_grid not in ("auto", "triton"):
        return None
    return start_workers_if_gpu("recon.kernels.warmup", early_worker_count(), device, MARKER_GLOB)


def early_worker_count() -> int:
    """Workers for the hash grid's 20 variants: up to 4, leaving this process a core."""
    return max(1, min(4, (os.cpu_count() or 1) - 1))
