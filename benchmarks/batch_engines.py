"""``sd3d batch`` throughput: ``--engine local`` against ``--engine ray``, images per hour and GPU use.

    python benchmarks/batch_engines.py --json batch.json                  # GPU machine: 8 images
    python benchmarks/batch_engines.py --images 16 --ray auto --ray 2x0.5 # Ray configurations to try
    python benchmarks/batch_engines.py --tiny                             # CPU smoke test (minutes)

The photos are synthetic (ellipses at different places), the checkpoint has the official layout and
size with synthetic weights (written once to ``--weights-cache``, ~5.6 GB; ``--tiny``: the tiny test
config), and the decoder is the object test double of ``tests/support/object_decoder.py`` so that
every view set shows an object the reconstruction accepts. Every other step is the real one, with
``sd3d run``'s defaults (elevation estimated, 50 DDIM steps, standard reconstruction on a GPU, MP4
preview) unless ``--args`` says otherwise.

Each engine runs as its own ``sd3d batch`` process into a fresh output folder, timed from start to
exit (model loading and Ray start-up included, as a user sees it). GPU utilisation is sampled every
``--interval`` seconds with ``nvidia-smi`` over that run (every GPU: the mean over samples of the
mean over GPUs, and the share of samples in which the busiest GPU was above 0 %). Ray configurations
are ``WORKERSxGPUS`` (``2x0.5``: two workers sharing each GPU) or ``auto`` (one worker per GPU).
Prints a markdown table; ``--json`` also writes every number. Never asks for input.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

TINY_ARGS = "--steps 2 --quality draft --recon-steps 10 --preview none --faces 400 --device cpu"


# --------------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------------
def make_photos(folder: Path, count: int) -> list[Path]:
    from support.photos import object_photo

    folder.mkdir(parents=True, exist_ok=True)
    return [object_photo(folder / f"photo-{i:03d}.png", shift=(i * 7) % 40 - 20) for i in range(count)]


def make_checkpoint(cache: Path, tiny: bool) -> Path:
    """The synthetic checkpoint, written once per cache folder."""
    from sd3d.models.configs import SyncDreamerConfig, tiny_config
    from sd3d.models.synthetic import make_synthetic_checkpoint

    path = cache / ("syncdreamer-synthetic-tiny.ckpt" if tiny else "syncdreamer-synthetic-full.ckpt")
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        make_synthetic_checkpoint(path, tiny_config() if tiny else SyncDreamerConfig())
        print(
            f"# wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in {time.perf_counter() - start:.0f} s"
        )
    return path


# --------------------------------------------------------------------------------------------------
# GPU sampling
# --------------------------------------------------------------------------------------------------
class GpuSampler:
    """``nvidia-smi`` polled in a thread: per sample, the utilisation (%) and memory (MiB) of each GPU."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.samples: list[list[tuple[float, float]]] = []
        self.available = shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _poll(self) -> list[tuple[float, float]] | None:
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
            return [tuple(float(v) for v in line.split(",")) for line in out.strip().splitlines()]
        except (OSError, ValueError, subprocess.SubprocessError):
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            sample = self._poll()
            if sample:
                self.samples.append(sample)
            self._stop.wait(self.interval)

    def __enter__(self) -> GpuSampler:
        if self.available:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.available:
            self._thread.join()

    def summary(self) -> dict:
        if not self.samples:
            return {"gpus": 0, "samples": 0, "util_mean": None, "busy_share": None, "mem_peak_mib": None}
        means = [statistics.fmean(u for u, _ in s) for s in self.samples]
        return {
            "gpus": len(self.samples[0]),
            "samples": len(self.samples),
            "util_mean": round(statistics.fmean(means), 1),
            "util_median": round(statistics.median(means), 1),
            "busy_share": round(sum(max(u for u, _ in s) > 0 for s in self.samples) / len(self.samples), 3),
            "mem_peak_mib": max(max(m for _, m in s) for s in self.samples),
        }


def _pythonpath() -> str:
    """The repository and its tests first, then whatever the caller had (packages installed elsewhere)."""
    parts = [
        str(REPO),
        str(REPO / "tests"),
        *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)),
    ]
    return os.pathsep.join(dict.fromkeys(parts))


# --------------------------------------------------------------------------------------------------
# one engine run (in a child process: it installs the decoder double, and Ray's workers get it too)
# --------------------------------------------------------------------------------------------------
def _install_object_decoder_on_import() -> None:
    """Install the object-decoder double when ``sd3d.models.syncdreamer`` is first imported, not now:
    the double imports PyTorch, and ``sd3d run`` / ``sd3d generate`` start their kernel warm-up's
    workers before they import it (:mod:`sd3d.models.warm_start`); installed here, PyTorch would
    already be imported and the timings would not be a user's."""
    import importlib.abc
    import importlib.util

    target = "sd3d.models.syncdreamer"

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target_=None):
            if name != target:
                return None
            sys.meta_path.remove(self)
            spec = importlib.util.find_spec(name)
            original = spec.loader

            class Loader(importlib.abc.Loader):
                def create_module(self, spec_):
                    return original.create_module(spec_)

                def exec_module(self, module):
                    original.exec_module(module)
                    from support import object_decoder

                    object_decoder.install()

            spec.loader = Loader()
            return spec

    sys.meta_path.insert(0, Finder())


def child(argv: list[str]) -> int:
    """``batch_engines.py --child ENGINE -- <sd3d batch args>``: the ``sd3d batch`` command with the
    object-decoder double installed here and, for Ray, in every worker process."""
    engine, args = argv[0], argv[2:]
    if os.environ.get("SD3D_BENCH_IMPORT_TORCH_FIRST"):
        import torch  # noqa: F401  (the A/B of the early warm-up start: the order before it existed)
    if engine == "local":
        _install_object_decoder_on_import()
    else:
        from support import object_decoder

        object_decoder.install()
    if engine == "ray":
        import ray

        env = {"PYTHONPATH": _pythonpath()}
        if "OMP_NUM_THREADS" in os.environ:
            env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]
        ray.init(
            runtime_env={"worker_process_setup_hook": "support.object_decoder.install", "env_vars": env},
            include_dashboard=False,
            log_to_driver=False,
        )
    from cli.app import main

    return main(args)


def run_engine(
    name: str, engine_args: list[str], photos: Path, out: Path, common: list[str], interval: float
) -> dict:
    engine = "ray" if "ray" in engine_args else "local"
    cmd = [sys.executable, __file__, "--child", engine, "--", "--quiet", "batch", str(photos), "-o", str(out)]
    cmd += common + engine_args
    print(f"# {name}: {' '.join(cmd[5:])}", flush=True)
    env = {**os.environ, "PYTHONPATH": _pythonpath()}
    start = time.perf_counter()
    with GpuSampler(interval) as sampler:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    record = json.loads((out / "batch.json").read_text()) if (out / "batch.json").is_file() else {"items": []}
    items = record["items"]
    done = sum(i["status"] == "done" for i in items)
    stage_seconds: dict[str, list[float]] = {}
    for item in items:
        report = out / Path(item["image"]).stem / "report.json"
        if item["status"] == "done" and report.is_file():
            for stage, secs in json.loads(report.read_text())["stage_seconds"].items():
                stage_seconds.setdefault(stage, []).append(secs)
    result = {
        "name": name,
        "command": cmd[5:],
        "exit_code": proc.returncode,
        "wall_s": round(wall, 1),
        "done": done,
        "failed": sum(i["status"] == "failed" for i in items),
        "images_per_hour": round(done / wall * 3600.0, 1) if done else 0.0,
        "per_image_s_median": round(statistics.median([i["seconds"] for i in items]), 1) if items else None,
        "stage_seconds_median": {k: round(statistics.median(v), 2) for k, v in stage_seconds.items()},
        "gpu": sampler.summary(),
    }
    if proc.returncode != 0:
        result["stderr_tail"] = proc.stderr[-3000:]
        print(proc.stderr[-3000:], file=sys.stderr)
    errors = sorted({i["error"] for i in items if i.get("error")})
    if errors:
        result["errors"] = errors[:5]
    print(
        f"#   {json.dumps({k: result[k] for k in ('wall_s', 'done', 'failed', 'images_per_hour')})}",
        flush=True,
    )
    return result


def render(result: dict) -> str:
    env = result["env"]
    lines = [
        f"sd3d batch engines: {env['images']} images, {env['device']}, args `{env['args']}`",
        "",
        "| engine | done | failed | wall s | images/h | GPU util mean % | GPU busy share | GPU mem peak MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        gpu = row["gpu"]
        lines.append(
            f"| {row['name']} | {row['done']} | {row['failed']} | {row['wall_s']:.0f} | {row['images_per_hour']:.0f} "
            f"| {gpu['util_mean'] if gpu['util_mean'] is not None else '-'} "
            f"| {gpu['busy_share'] if gpu['busy_share'] is not None else '-'} "
            f"| {gpu['mem_peak_mib'] if gpu['mem_peak_mib'] is not None else '-'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None, help="photos to process (default 8; --tiny: 3)")
    parser.add_argument("--tiny", action="store_true", help="tiny checkpoint, CPU, few steps (a smoke test)")
    parser.add_argument(
        "--ray", action="append", default=None, metavar="auto|WxG|none", help="Ray configuration (repeatable)"
    )
    parser.add_argument("--no-local", action="store_true", help="skip the local engine")
    parser.add_argument(
        "--args", default=None, help="extra options of sd3d run (default: none; --tiny: fast ones)"
    )
    parser.add_argument(
        "--weights-cache", type=Path, default=Path(tempfile.gettempdir()) / "sd3d-bench-weights"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where photos and outputs go (default: temp)"
    )
    parser.add_argument("--interval", type=float, default=0.5, help="GPU sampling period (s)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    images = args.images or (3 if args.tiny else 8)
    extra = args.args if args.args is not None else (TINY_ARGS if args.tiny else "")
    configs = [c for c in (args.ray or (["1x0"] if args.tiny else ["auto", "2x0.5"])) if c != "none"]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sd3d-bench-batch-"))
    photos = work / "photos"
    make_photos(photos, images)
    weights = make_checkpoint(args.weights_cache, args.tiny)
    common = ["--weights", str(weights), *extra.split()]

    device = "cpu"
    if GpuSampler(args.interval).available:
        names = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True
        ).stdout.split("\n")
        device = f"{len([n for n in names if n.strip()])}x {names[0].strip()}"
    result = {
        "env": {
            "images": images,
            "device": device,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "args": extra,
            "tiny": args.tiny,
        },
        "rows": [],
    }
    runs = [] if args.no_local else [("local", [])]
    for config in configs:
        engine_args = ["--engine", "ray"]
        if config != "auto":
            workers, gpus = config.lower().split("x")
            engine_args += ["--workers", workers, "--gpus-per-worker", gpus]
        runs.append((f"ray {config}", engine_args))
    for name, engine_args in runs:
        out = work / f"out-{name.replace(' ', '-')}"
        shutil.rmtree(out, ignore_errors=True)
        result["rows"].append(run_engine(name, engine_args, photos, out, common, args.interval))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    print(render(result))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["exit_code"] == 0 for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
