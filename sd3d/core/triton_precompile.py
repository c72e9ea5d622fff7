"""Triton kernel variants compiled ahead in worker processes, into Triton's on-disk cache.

Two users: the generation's GroupNorm (:mod:`sd3d.models.norm_warmup`) and the reconstruction's hash
grid (:mod:`recon.kernels.warmup`). It lives in ``sd3d.core`` because ``recon`` may import nothing
else of sd3d, and nothing here is specific to either kernel: a :class:`Launch` per variant, the
workers, the background thread that waits for them (:class:`KernelWarmUp`) and the marker a finished
warm-up leaves in Triton's cache (:func:`leave_marker`).

Why processes, not threads: session 14 compiled the GroupNorm's ~70 variants on 8 threads while the
model loaded (benchmarks/RESULTS.md). Triton's compiler holds the interpreter lock for much of its
work, so 8 threads were only ~1.7x faster than one, and the model's loading, which needs the
interpreter too, took 11-17 s instead of 2-3 s. A worker process compiles with an interpreter of its
own and leaves each kernel in Triton's on-disk cache; the workers inherit this process's environment
(``TRITON_CACHE_DIR`` and Triton's other settings), so they compute the cache keys this process's
launches look up, and those launches then load the kernels instead of compiling them.

Each worker also builds the kernel's launcher: Triton versions that compile a C launcher per argument
signature (3.6 on the GPU machine) otherwise build those at the first launch, a few seconds of the
first step that a warm-up by ``warmup`` alone leaves (session 15: the first step took 3.1 s after a
warm-up, 0.55 s with everything cached).

A worker imports the module named on its command line first (PyTorch, Triton and the model code come
with it), then reads one pickled request on stdin -- ``{"gpu": (index, capability) or None, "share": (i, n),
"variants": function, "kwargs": {...}}`` -- calls ``function(**kwargs)`` for the variants (objects
with ``kernel``, ``args``, ``grid``, ``constants``, one per variant, in an order every worker
computes alike), compiles every n-th from the i-th with the kernel's ``warmup`` (compile, never
launch; a tensor argument given by its dtype, which Triton specialises as a 16-byte-aligned tensor,
as PyTorch allocates them), and answers one JSON line: ``{"variants": total, "compiled": k,
"failed": [reason, ...], "launchers_failed": m, "pinned": bool, "cuda_context": bool or null}``.
Triton is told the parent's GPU instead of asking CUDA (:func:`pin_triton_gpu`; "pinned"), because
asking made a CUDA context, which holds GPU memory, in every worker on an H100 ("cuda_context" says
whether one is current when the worker is done; the GPU test asserts none). So this process
only starts the workers and waits: even the enumeration of the variants (a model run on the meta
device, ~1-2 s of interpreter time) happens in them. A variant that fails, or a worker that dies, only
means that those kernels compile at their first launch, as they did before any warm-up.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

WORKER_TIMEOUT_S = 180.0
"""How long :meth:`CompileWorkers.compile` waits for a worker before giving its share up. A worker
took 13-16 s on an H100's host (session 15); the first generation waits for the warm-up, so a wedged
compiler must not hold it for long: its kernels then compile at their first launch."""


@dataclass(frozen=True)
class Launch:
    """One kernel launch: the ``@triton.jit`` function, its grid, its arguments and its compile-time
    constants (with ``num_warps``). Triton compiles one variant per distinct set of constants (and of
    argument specialisations, :func:`variant_key`), which a fresh machine pays for once."""

    kernel: object
    grid: tuple[int, ...]
    args: tuple
    constants: dict

    def run(self) -> None:
        """Launch it (the kernels' host code builds its launches, then runs them)."""
        self.kernel[self.grid](*self.args, **self.constants)


def variant_key(launch: Launch) -> tuple:
    """What Triton compiles a launch's variant for: the kernel, its constants, and how each argument
    is specialised (integers equal to 1 or divisible by 16, tensors by dtype; pointers are taken to
    be 16-byte aligned, as PyTorch's allocations are)."""

    import torch

    def spec(a) -> str:
        if isinstance(a, torch.Tensor):
            return str(a.dtype)
        if isinstance(a, bool) or not isinstance(a, int):
            return type(a).__name__
        return "1" if a == 1 else "d16" if a % 16 == 0 else "i"

    return (
        kernel_name(launch.kernel),
        tuple(sorted(launch.constants.items())),
        tuple(spec(a) for a in launch.args),
    )


def distinct_variants(launches: list[Launch]) -> list[Launch]:
    """One launch per variant (:func:`variant_key`), in first-seen order: what a warm-up compiles."""
    return list({variant_key(launch): launch for launch in launches}.values())


def kernel_name(kernel) -> str:
    """A ``@triton.jit`` function's name (an interpreted one has ``fn`` only)."""
    return getattr(kernel, "__name__", None) or kernel.fn.__name__


def compile_launch(launch) -> object:
    """Compile one launch's variant with its kernel's ``warmup``: Triton specialises as at a launch
    (a tensor argument given by its dtype counts as 16-byte aligned), compiles, caches, and returns
    the compiled kernel without launching it."""
    import torch

    args = [a.dtype if isinstance(a, torch.Tensor) else a for a in launch.args]
    return launch.kernel.warmup(*args, grid=launch.grid, **launch.constants)


def build_launcher(compiled) -> None:
    """Build (and cache) the launcher Triton makes for ``compiled`` at its first launch, without
    loading the kernel onto a GPU. Triton's own internals (``driver.active.launcher_cls``), so any
    error is the caller's to note and move past: the launch builds it as it always did."""
    from triton.runtime import driver

    driver.active.launcher_cls(compiled.src, compiled.metadata)


def pin_triton_gpu(index: int, capability: tuple[int, int]) -> bool:
    """Make Triton's active driver answer "which GPU, which architecture, which stream" with the
    parent's answers instead of asking CUDA. Why: asking makes a CUDA context in the worker (found on
    an H100 in session 15: every worker had one), and each context holds some hundreds of MB of GPU
    memory while the parent is loading its model; compiling needs only the architecture. Triton's
    internals (the driver's ``get_current_device`` / ``get_device_capability`` /
    ``get_current_stream`` attributes, set per instance in Triton 3.x): False where they are not
    there, and the worker then asks CUDA as before."""
    from triton.runtime import driver

    active = driver.active
    names = ("get_current_device", "get_device_capability", "get_current_stream")
    if not all(hasattr(active, name) for name in names):
        return False
    active.get_current_device = lambda: index
    active.get_device_capability = lambda device=None: tuple(capability)
    active.get_current_stream = lambda device=None: 0
    return True


def compile_share(variants: list, share: tuple[int, int], gpu: tuple[int, tuple[int, int]] | None) -> dict:
    """The worker's side: compile every ``share[1]``-th variant from the ``share[0]``-th, and build
    each one's launcher; ``gpu``: the parent's (device index, compute capability), which Triton is
    told instead of asking CUDA (:func:`pin_triton_gpu`)."""
    first, step = share
    failed: list[str] = []
    compiled = launchers_failed = 0
    pinned = False
    if gpu is not None:
        try:
            pinned = pin_triton_gpu(*gpu)
        except Exception:  # a Triton without an active CUDA driver: the compiles below say so
            pinned = False
    for launch in variants[first::step]:
        name = kernel_name(launch.kernel)
        try:
            kernel = compile_launch(launch)
        except Exception as exc:  # a compiler error: the launch will meet it again and say so
            failed.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        compiled += 1
        if kernel is not None and hasattr(kernel, "metadata"):
            try:
                build_launcher(kernel)
            except Exception:
                launchers_failed += 1
    return {
        "variants": len(variants),
        "compiled": compiled,
        "failed": failed,
        "launchers_failed": launchers_failed,
        "pinned": pinned,
    }


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


def cuda_device_count() -> int:
    """CUDA devices the driver shows this process (0 without a driver), asked of the driver itself:
    no PyTorch import, and no context (``cuInit`` and ``cuDeviceGetCount`` make none)."""
    import ctypes

    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int()
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def start_workers_if_gpu(preload: str, count: int, device: str, marker_glob: str) -> CompileWorkers | None:
    """Compile workers started at a command's very start, before this process imports PyTorch, where
    their kernels may be wanted: ``device`` (the command's ``--device``) is not the CPU, the driver
    shows a CUDA device, and Triton's cache has no file matching ``marker_glob`` (a warm-up's marker:
    the exact check needs PyTorch and comes later, and where it finds the kernels compiled the
    workers are closed unused). ``None`` otherwise. Why so early: a worker spends ~3 s importing
    PyTorch and Triton before it compiles anything (session 16, H100), as long as this process's
    own imports; started when the work begins, its first kernels came too late for the work's first
    launches."""
    if device.strip().lower().startswith("cpu") or cuda_device_count() == 0:
        return None
    if any(_cache_dir_from_environment().glob(marker_glob)):
        return None
    return CompileWorkers(count, preload)


class CompileWorkers:
    """``count`` worker processes, started now (each importing ``preload``, the module of the
    variants' function, while this process carries on), that compile what :meth:`compile` names.

    A context manager: leaving it ends workers that are still running (a warm-up abandoned halfway
    leaves no compiler processes behind)."""

    def __init__(self, count: int, preload: str) -> None:
        env = dict(os.environ)
        # sd3d's own folder first: a parent that found sd3d through sys.path (a checkout, a benchmark
        # script) must not start workers that cannot import it
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        self._processes = [
            subprocess.Popen(
                [sys.executable, "-m", __name__, preload],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
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

    def compile(
        self, variants: Callable[..., list], kwargs: dict, gpu: tuple[int, tuple[int, int]] | None
    ) -> dict:
        """Have the workers compute ``variants(**kwargs)`` (a module-level function, so that it
        pickles by name) and compile a share each (round-robin: neighbouring variants tend to be
        alike in cost) for ``gpu`` (device index, compute capability); wait for all.
        ``{"variants": n, "compiled": k, "failed": [...], "launchers_failed": m, "workers": w,
        "pinned": [...], "cuda_context": [...]}`` (the last two per worker that answered)."""
        count = len(self._processes)
        requests = [
            pickle.dumps({"gpu": gpu, "share": (i, count), "variants": variants, "kwargs": kwargs})
            for i in range(count)
        ]
        with ThreadPoolExecutor(max_workers=count) as pool:  # each waits without the GIL
            answers = list(pool.map(_ask, self._processes, requests))
        result: dict = {"variants": 0, "compiled": 0, "failed": [], "launchers_failed": 0}
        contexts: list = []
        pinned: list = []
        for i, answer in enumerate(answers):
            if isinstance(answer, str):  # it died or did not start: its share compiles at launch
                result["failed"].append(f"compile worker {i + 1} of {count}: {answer}")
                continue
            result["variants"] = max(result["variants"], answer["variants"])
            result["compiled"] += answer["compiled"]
            result["failed"].extend(answer["failed"])
            result["launchers_failed"] += answer["launchers_failed"]
            contexts.append(answer.get("cuda_context"))
            pinned.append(answer.get("pinned"))
        return {**result, "workers": count, "pinned": pinned, "cuda_context": contexts}


class KernelWarmUp:
    """Work started on a daemon thread; :meth:`wait` joins it and returns what it returned (with
    ``seconds``, or ``error`` if it raised: a failed warm-up only means the launches compile lazily)."""

    def __init__(self, work: Callable[[], dict]) -> None:
        self._result: dict = {}
        self._started = time.perf_counter()
        self._thread = threading.Thread(
            target=self._run, args=(work,), name="sd3d-kernel-warmup", daemon=True
        )
        self._thread.start()

    def _run(self, work: Callable[[], dict]) -> None:
        try:
            self._result = dict(work())
        except Exception as exc:
            self._result = {"error": f"{type(exc).__name__}: {exc}"}
        self._result["seconds"] = round(time.perf_counter() - self._started, 3)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def wait(self) -> dict:
        self._thread.join()
        return self._result


def triton_cache_dir() -> Path:
    """Triton's on-disk kernel cache (``TRITON_CACHE_DIR``, else its default under the home folder)."""
    try:
        from triton import knobs

        return Path(knobs.cache.dir)
    except (ImportError, AttributeError):  # a Triton before its knobs module
        return _cache_dir_from_environment()


def _cache_dir_from_environment() -> Path:
    """Triton's cache folder as its environment names it, without importing Triton."""
    return Path(os.environ.get("TRITON_CACHE_DIR") or Path.home() / ".triton" / "cache")


def leave_marker(marker: Path, result: dict) -> None:
    """Leave ``marker`` once a warm-up has run, with what it did (written whole or not at all). Also
    after failures: a variant that failed compiles (or fails) at its launch as it would have without
    a warm-up, and a warm-up that failed once would fail again, costing every later process its
    seconds. A cache folder that cannot be written only means the next process warms up again."""
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        partial = marker.with_name(marker.name + f".{os.getpid()}.tmp")
        partial.write_text(json.dumps({k: result.get(k) for k in ("variants", "failed", "error")}) + "\n")
        partial.replace(marker)
    except OSError:
        pass


def _ask(process: subprocess.Popen, request: bytes) -> dict | str:
    """Hand one worker its request and wait: its answer, or why there is none."""
    try:
        out, err = process.communicate(request, timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    answer = _last_json_line(out.decode(errors="replace"))
    if process.returncode != 0 or answer is None:
        tail = err.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return f"exited with code {process.returncode}: {tail[0]}"
    return answer


def _last_json_line(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        with contextlib.suppress(ValueError):
            answer = json.loads(line)
            if isinstance(answer, dict) and "failed" in answer:
                return answer
    return None


def main(argv: list[str]) -> int:
    """The worker: imports ``argv[0]`` (the variants' module, and PyTorch and Triton with it) while
    the parent carries on, then one pickled request on stdin, one answer line on stdout (anything a
    compiler prints goes to stderr, so the answer stays the last line)."""
    importlib.import_module(argv[0])
    request = pickle.loads(sys.stdin.buffer.read())
    stdout = sys.stdout
    sys.stdout = sys.stderr
    variants = request["variants"](**request["kwargs"])
    answer = compile_share(variants, request["share"], request["gpu"])
    stdout.write(json.dumps({**answer, "cuda_context": cuda_context_current()}) + "\n")
    stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
