"""One ``sd3d`` command in this (fresh) process, timed from the process start, with its peak GPU memory.

    python benchmarks/cold_cli.py reconstruct examples/spot -o /tmp/m.glb --quality standard

Why not ``time sd3d ...``: the peak GPU memory is only known inside the process. The command runs
exactly as ``sd3d`` runs it (:func:`cli.app.main` with these arguments); the clock starts at the
interpreter's start (``time.perf_counter`` before any import here, plus the interpreter start-up,
read from the process's own start time), so imports and CUDA start-up count, as a user waits for
them. Prints one last line: ``cold_cli {"rc": ..., "wall_s": ..., "since_exec_s": ..., "peak_gib": ...}``.

For ``reconstruct`` it also splits the wall time (``split_s``): before the reconstruction starts
(interpreter, imports, CUDA's start, reading the views), the reconstruction, the export, and after it.
Why: a cold process on one H100 spent 6-8 s outside the command's own stages (on another, about
4 s), and only this split says where (it wraps :func:`recon.pipeline.reconstruct` and ``export_mesh``).
``train_phases_s`` splits the training further (:attr:`recon.train.TrainResult.phase_seconds`), and
``before_s`` the time before it (importing torch, our modules, the command's own start), since that
part moved by 3 s between machines of one kind in session 12. ``kernel_warmup``: what the hash
grid's warm-up did (:mod:`recon.kernels.warmup`); ``--no-kernel-warmup`` (this script's, taken out of
the command's arguments) starts none, for the comparison on a fresh Triton cache.
"""

import time

T0 = time.perf_counter()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _since_exec() -> float | None:
    """Seconds since this process was started (Linux: /proc start time in clock ticks), else None."""
    try:
        fields = Path(f"/proc/{os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
        start_ticks = int(fields[19])  # field 22 of stat, counted after the command name
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _mark_reconstruction(marks: dict[str, float], phases: dict[str, float], warmup: dict) -> None:
    """Record when :func:`recon.pipeline.reconstruct` and ``export_mesh`` start and end (the command
    imports them from the module when it runs, so wrapping the module's attributes is enough)."""
    import recon.pipeline as pipeline

    def marked(name: str, fn):
        def wrapper(*args, **kwargs):
            marks.setdefault(f"{name}_start", time.perf_counter() - T0)
            try:
                result = fn(*args, **kwargs)
                # the reconstruction's training by part (recon.train.TrainResult.phase_seconds)
                phases.update(getattr(result, "train_phases", None) or {})
                if getattr(result, "kernel_warmup", None) is not None:  # recon.kernels.warmup's record
                    warmup.update(result.kernel_warmup)
                return result
            finally:
                marks[f"{name}_end"] = time.perf_counter() - T0

        return wrapper

    pipeline.reconstruct = marked("reconstruct", pipeline.reconstruct)
    pipeline.export_mesh = marked("export", pipeline.export_mesh)


def _split(marks: dict[str, float], wall: float) -> dict[str, float] | None:
    """Seconds before the reconstruction, in it, in the export and after it."""
    if "export_end" not in marks:
        return None
    return {
        "before": round(marks["reconstruct_start"], 2),
        "reconstruct": round(marks["reconstruct_end"] - marks["reconstruct_start"], 2),
        "export": round(marks["export_end"] - marks["export_start"], 2),
        "after": round(wall - marks["export_end"], 2),
    }


def _before(marks: dict[str, float]) -> dict[str, float] | None:
    """Seconds of "before" by part: up to the command's start (the interpreter, the CLI's own modules,
    the warm-up's workers started), importing torch, then the reconstruction's modules (the command
    imports both anyway; here they are imported first, to time them), then the command's own start
    (arguments, CUDA's context, reading the views) up to the reconstruction."""
    if "reconstruct_start" not in marks or "modules_imported" not in marks:
        return None
    return {
        "to_imports": round(marks["imports_start"], 2),
        "import_torch": round(marks["torch_imported"] - marks["imports_start"], 2),
        "import_modules": round(marks["modules_imported"] - marks["torch_imported"], 2),
        "command": round(marks["reconstruct_start"] - marks["modules_imported"], 2),
    }


def main(argv: list[str]) -> int:
    no_warmup = "--no-kernel-warmup" in argv  # the A/B of recon.kernels.warmup: kernels compile at launch
    argv = [a for a in argv if a != "--no-kernel-warmup"]
    marks: dict[str, float] = {}
    phases: dict[str, float] = {}
    warmup: dict = {}
    if argv[:1] == ["reconstruct"]:
        # The command starts the warm-up's workers before it imports PyTorch (recon.warm_start); the
        # imports are timed, and the stages marked, right after that, in the command's own order.
        import recon.warm_start as warm_start

        start_early = warm_start.start_early_workers

        def early_then_imports(*args, **kwargs):
            pool = None if no_warmup else start_early(*args, **kwargs)
            marks["imports_start"] = time.perf_counter() - T0
            import torch  # noqa: F401

            marks["torch_imported"] = time.perf_counter() - T0
            import cli.reconstruct  # noqa: F401

            _mark_reconstruction(marks, phases, warmup)
            if no_warmup:
                import recon.pipeline

                recon.pipeline.start_hash_grid_warmup = lambda *args, **kwargs: None
            marks["modules_imported"] = time.perf_counter() - T0
            return pool

        warm_start.start_early_workers = early_then_imports
    from cli.app import main as sd3d

    try:
        rc = sd3d(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    peak = None
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peak = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    since = _since_exec()
    wall = time.perf_counter() - T0
    record = {
        "rc": rc,
        "wall_s": round(wall, 2),
        "since_exec_s": None if since is None else round(since, 2),
        "peak_gib": peak,
        "split_s": _split(marks, wall),
        "before_s": _before(marks),
        "train_phases_s": phases or None,
        "kernel_warmup": warmup or None,
        "argv": argv,
    }
    print("cold_cli " + json.dumps(record), flush=True)
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
