"""Triton kernel variants compiled ahead in worker processes, into Triton's on-disk cache.

Why processes, not threads: session 14 compiled the GroupNorm's ~70 variants on 8 threads while the
model loaded (benchmarks/RESULTS.md). Triton's compiler holds the interpreter lock for much of its
work, so 8 threads were only ~1.7x faster than one, and the model's loading, which needs the
interpreter too, took 17.1 s instead of 3.1 s. A worker process compiles with an interpreter of its
own and leaves each kernel in Triton's on-disk cache; the workers inherit this process's environment
(``TRITON_CACHE_DIR`` and Triton's other settings), so they compute the cache keys this process's
launches look up, and those launches then load the kernels instead of compiling them.

The workers start before the variants are known (:class:`CompileWorkers`): importing PyTorch and
Triton takes each a few seconds, which overlaps the enumeration here. Each imports the kernels' module
(named on its command line) and then reads its share as one JSON object on stdin -- ``{"device":
index or null, "variants": [spec, ...]}``, a
spec being ``{"kernel": name, "args": [...], "grid": [...], "constants": {...}}`` with a tensor
argument given by its dtype (``{"dtype": "bfloat16"}``: Triton's ``warmup`` specialises a dtype as a
16-byte-aligned tensor, as PyTorch allocates them) -- calls each kernel's ``warmup`` (compile, never
launch), and answers one JSON line: ``{"failed": [reason, ...], "cuda_context": bool or null}``
(whether compiling made a CUDA context current in the worker, which would cost GPU memory per worker).
A variant that fails, or a worker that dies, only means that those kernels compile at their first
launch, as they did before any warm-up.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

WORKER_TIMEOUT_S = 600.0
"""How long :meth:`CompileWorkers.compile` waits for a worker before giving its variants up (a
worker's import and ~10 variants take seconds; this only bounds a wedged compiler)."""


def kernel_name(kernel) -> str:
    """A ``@triton.jit`` function's name (an interpreted one has ``fn`` only)."""
    return getattr(kernel, "__name__", None) or kernel.fn.__name__


def variant_spec(kernel, args: Sequence, grid: Sequence[int], constants: dict) -> dict:
    """One launch as a worker gets it: tensors by their dtype, everything else as given (Python's
    JSON writes floats exactly, so a float argument such as ``eps`` specialises as it will at launch)."""
    import torch

    return {
        "kernel": kernel_name(kernel),
        "args": [
            {"dtype": str(a.dtype).removeprefix("torch.")} if isinstance(a, torch.Tensor) else a for a in args
        ],
        "grid": list(grid),
        "constants": dict(constants),
    }


def compile_variants(module, specs: list[dict], device_index: int | None) -> list[str]:
    """Compile each spec's variant with its kernel (from ``module.KERNELS``)'s ``warmup`` (the
    worker's side); the failures."""
    import torch

    kernels = {kernel_name(k): k for k in module.KERNELS}
    failed = []
    on_device = torch.cuda.device(device_index) if device_index is not None else contextlib.nullcontext()
    with on_device:
        for spec in specs:
            args = [getattr(torch, a["dtype"]) if isinstance(a, dict) else a for a in spec["args"]]
            try:
                kernels[spec["kernel"]].warmup(*args, grid=tuple(spec["grid"]), **spec["constants"])
            except Exception as exc:  # a compiler error: the launch will meet it again and say so
                failed.append(f"{spec['kernel']}: {type(exc).__name__}: {exc}")
    return failed


def cuda_context_current() -> bool | None:
    """Whether this process has a CUDA context current (None without a CUDA driver): asked of the
    driver itself, because PyTorch's ``is_initialized`` says nothing about contexts."""
    import ctypes

    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    context = ctypes.c_void_p()
    if libcuda.cuCtxGetCurrent(ctypes.byref(context)) != 0:  # not initialised: no context
        return False
    return bool(context.value)


class CompileWorkers:
    """``count`` worker processes, started now, that compile the variants of ``module_name``'s
    ``KERNELS`` that :meth:`compile` hands them.

    A context manager: leaving it ends workers that are still running (a warm-up abandoned halfway
    leaves no compiler processes behind)."""

    def __init__(self, count: int, module_name: str) -> None:
        env = dict(os.environ)
        # sd3d's own folder first: a parent that found sd3d through sys.path (a checkout, a benchmark
        # script) must not start workers that cannot import it
        root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        self._processes = [
            subprocess.Popen(
                [sys.executable, "-m", __name__, module_name],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for _ in range(max(1, count))
        ]

    def __enter__(self) -> CompileWorkers:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            for stream in (process.stdin, process.stdout, process.stderr):
                if stream is not None:
                    stream.close()

    def compile(self, specs: list[dict], device_index: int | None) -> dict:
        """Share ``specs`` out round-robin (neighbouring variants tend to be alike in cost), wait for
        every worker; ``{"variants": n, "failed": [...], "workers": k, "cuda_context": [...]}``."""
        shares = [specs[i :: len(self._processes)] for i in range(len(self._processes))]
        with ThreadPoolExecutor(max_workers=len(self._processes)) as pool:  # each waits without the GIL
            answers = list(pool.map(_ask, self._processes, shares, [device_index] * len(shares)))
        failed: list[str] = []
        contexts = []
        for answer, share in zip(answers, shares, strict=True):
            if isinstance(answer, str):  # the worker died or did not start: why
                failed.extend(f"{spec['kernel']}: {answer}" for spec in share)
                continue
            failed.extend(answer["failed"])
            contexts.append(answer.get("cuda_context"))
        return {
            "variants": len(specs),
            "failed": failed,
            "workers": len(self._processes),
            "cuda_context": contexts,
        }


def _ask(process: subprocess.Popen, share: list[dict], device_index: int | None) -> dict | str:
    """Hand one worker its share and wait: its answer, or why there is none."""
    request = json.dumps({"device": device_index, "variants": share})
    try:
        out, err = process.communicate(request, timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    answer = _last_json_line(out)
    if process.returncode != 0 or answer is None:
        tail = (err or "").strip().splitlines()[-1:] or ["no output"]
        return f"compile worker exited with code {process.returncode}: {tail[0]}"
    return answer


def _last_json_line(text: str | None) -> dict | None:
    for line in reversed((text or "").splitlines()):
        with contextlib.suppress(ValueError):
            answer = json.loads(line)
            if isinstance(answer, dict) and "failed" in answer:
                return answer
    return None


def main(argv: list[str]) -> int:
    """The worker: imports the kernels' module (``argv[0]``; PyTorch and Triton with it) while the
    parent is still enumerating, then one request on stdin, one answer line on stdout (anything a
    compiler prints goes to stderr, so the answer stays the last line)."""
    module = importlib.import_module(argv[0])
    request = json.loads(sys.stdin.read() or "{}")
    stdout = sys.stdout
    sys.stdout = sys.stderr
    failed = compile_variants(module, request.get("variants", []), request.get("device"))
    stdout.write(json.dumps({"failed": failed, "cuda_context": cuda_context_current()}) + "\n")
    stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
