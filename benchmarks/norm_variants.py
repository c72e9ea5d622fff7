"""How many Triton GroupNorm variants a generation compiles, counted without a GPU.

    python benchmarks/norm_variants.py                   # the default: 1 sample, 16 views, cfg 2
    python benchmarks/norm_variants.py --samples 1 4     # and the 64-view batches of --samples 4
    python benchmarks/norm_variants.py --compile         # also compile each variant for sm_90 (CPU)

Why: with the kernel on by default (session 14), a machine's first generation took 17-28 s instead of
1.8 s on an H100: its first step compiled 70 kernel variants (benchmarks/RESULTS.md). Triton compiles
one variant per distinct set of compile-time constants and argument specialisations, once per machine
(then from its on-disk cache). This runs the official-size model on the ``meta`` device (nothing is
allocated or computed), prepared as on CUDA (channels-last UNet; bf16 weights and half-precision norms
are assumed for every call), records every GroupNorm call's launches with the kernel's own host code
(:func:`sd3d.models.kernels.group_norm.kernel_launches`, for an H100's 132 multiprocessors) and counts
the distinct :func:`~sd3d.core.triton_precompile.variant_key`. ``--compile`` compiles each variant
for sm_90 with Triton's ahead-of-time API and reports the seconds (a 2-core CPU here; compilation is
CPU work, so a GPU machine's first process pays about this over its core speed).
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

H100_SMS = 132


def record_variants(samples: int, sms: int = H100_SMS) -> dict:
    """{variant key: launches} of one default generation of ``samples`` x 16 views (bf16, 16 views
    per chunk, 4 images per decoder call), enumerated on the meta device as the warm-up does."""
    import torch

    from sd3d.core.triton_precompile import variant_key
    from sd3d.models.configs import SyncDreamerConfig
    from sd3d.models.norm_warmup import generation_norm_launches

    launches = generation_norm_launches(SyncDreamerConfig(), torch.bfloat16, samples=samples, sms=sms)
    return dict(collections.Counter(variant_key(launch) for launch in launches))


def compile_variants(keys: list[tuple]) -> list[float]:
    """Compile each variant for sm_90 (Triton's ahead-of-time API, no GPU needed); seconds each."""
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource

    from sd3d.models.kernels import group_norm as G

    kernels = {k.fn.__name__ if hasattr(k, "fn") else k.__name__: k for k in G.KERNELS}
    seconds = []
    for name, constants, specs in keys:
        kernel = kernels[name]
        consts = dict(constants)
        num_warps = consts.pop("num_warps")
        runtime = [a for a in kernel.arg_names if a not in consts]
        types = {"torch.bfloat16": "*bf16", "torch.float32": "*fp32", "float": "fp32"}
        signature = {a: "constexpr" for a in consts}
        for arg, spec in zip(runtime, specs, strict=True):
            signature[arg] = types.get(spec, "i32")
        t = time.perf_counter()
        triton_compile(
            ASTSource(kernel, signature, consts),
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": num_warps},
        )
        seconds.append(time.perf_counter() - t)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[1])
    parser.add_argument("--compile", action="store_true", help="compile each variant for sm_90 (CPU)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    result: dict = {"runs": []}
    seen: set = set()
    for samples in args.samples:
        counts = record_variants(samples)
        new = [k for k in counts if k not in seen]
        seen.update(counts)
        by_kernel = collections.Counter(k[0] for k in counts)
        row = {
            "samples": samples,
            "launches": sum(counts.values()),
            "variants": len(counts),
            "new_variants": len(new),
            "by_kernel": dict(by_kernel),
        }
        if args.compile:
            seconds = compile_variants(new)
            row["compile_s"] = sum(seconds)
        result["runs"].append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
