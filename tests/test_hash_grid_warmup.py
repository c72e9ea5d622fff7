"""The hash grid's kernels compiled ahead in worker processes (recon/kernels/warmup.py): what it
enumerates against what a fit launches, when it starts, the marker that stops later processes, and
on a GPU that a fit after the workers compiles nothing.

The enumeration and the marker need Triton (skipped in CI, which installs none); the GPU test needs
CUDA; the CPU rule (no warm-up off CUDA) runs everywhere.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from support.early_pool import EarlyPool, check_early_start
from support.triton_interpreter import run_interpreted

from recon.presets import PRESETS
from sd3d.core.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TRITON = importlib.util.find_spec("triton") is not None
NO_TRITON = "triton is not installed (CPU-only torch, as in CI)"
STANDARD = PRESETS["standard"].field.grid


@pytest.mark.skipif(not TRITON, reason=NO_TRITON)
def test_the_enumeration_covers_every_variant_a_fit_and_its_meshing_launch():
    """A small fit with the Triton grid (in the interpreter), then marching cubes over its field:
    every kernel variant they launched is one the warm-up compiles, so a warm-up that finished
    leaves the fit nothing to compile. The fit meets both integer specialisations of the point
    count and the forward without Jacobian (the meshing's), so the check covers those kinds."""
    report = run_interpreted(REPO / "tests" / "support" / "hash_grid_fit_launches.py", timeout=300)
    launched, enumerated = set(report["launched"]), report["enumerated"]
    assert len(enumerated) == len(set(enumerated))  # each variant once
    assert launched <= set(enumerated), sorted(launched - set(enumerated))
    assert any("'WITH_JAC', False" in key for key in launched)  # the meshing's lookups
    assert any("_backward_kernel" in key for key in launched)
    # the first four are the training step's pair for both grids (dense and hashed levels):
    # round-robin workers compile what the fit needs first before the rest
    first = enumerated[:4]
    assert all("'WITH_JAC', True" in k or "('HAS_GFEAT', True), ('HAS_GJAC', True)" in k for k in first)
    assert set(first) <= launched


@pytest.mark.skipif(not TRITON, reason=NO_TRITON)
def test_every_preset_compiles_the_same_variants():
    """The presets' grids differ in sizes that are runtime arguments (levels, table rows), not in
    anything Triton specialises: one warm-up serves them all (the marker is named by the variants)."""
    from recon.kernels.warmup import fit_variants
    from sd3d.core.triton_precompile import variant_key

    keys = {
        name: sorted(str(variant_key(v)) for v in fit_variants(p.field.grid)) for name, p in PRESETS.items()
    }
    assert len({tuple(k) for k in keys.values()}) == 1, keys
    assert len(keys["standard"]) == 20  # 2 forwards + 3 backwards, x dense/hashed, x 2 point counts


def test_no_warm_up_off_cuda():
    """On the CPU (the PyTorch grid) nothing starts: no processes, no record."""
    from recon.kernels.warmup import start_hash_grid_warmup

    assert start_hash_grid_warmup(STANDARD, torch.device("cpu")) is None


class _Workers:
    """Stands in for CompileWorkers: records what it was asked, answers like the workers."""

    started: list[tuple] = []

    def __init__(self, count: int, preload: str) -> None:
        self.count, self.preload = count, preload

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def compile(self, variants, kwargs, gpu) -> dict:
        n = len(variants(**kwargs))
        _Workers.started.append((self.count, self.preload, gpu, n))
        return {"variants": n, "compiled": n, "failed": [], "workers": self.count}


@pytest.mark.skipif(not TRITON, reason=NO_TRITON)
def test_a_finished_warm_up_leaves_a_marker_and_later_processes_start_none(tmp_path, monkeypatch):
    """The first process on a GPU compiles in workers and leaves its marker in Triton's cache; a
    process that finds it starts no workers (eight processes importing PyTorch would only compete
    with the fit); ``force`` starts them anyway. A GPU of another architecture is another marker."""
    import recon.kernels.warmup as W
    from recon import kernels

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(W, "triton_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(W, "CompileWorkers", _Workers)
    monkeypatch.setattr(kernels, "hash_grid_module", lambda: object())
    arch = {"major": 9, "minor": 0}
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(name="GPU", **arch)
    )
    _Workers.started = []
    gpu = torch.device("cuda", 0)

    first = W.start_hash_grid_warmup(STANDARD, gpu, workers=3)
    assert first is not None
    record = first.wait()
    assert record["variants"] == record["compiled"] == 20 and record["failed"] == []
    assert _Workers.started == [(3, "recon.kernels.warmup", (0, (9, 0)), 20)]
    marker = W.warmup_marker(STANDARD, gpu)
    assert marker.exists() and json.loads(marker.read_text())["variants"] == 20

    assert W.start_hash_grid_warmup(STANDARD, gpu) is None  # the marker: nothing to do
    assert W.start_hash_grid_warmup(PRESETS["draft"].field.grid, gpu) is None  # same variants
    forced = W.start_hash_grid_warmup(STANDARD, gpu, workers=2, force=True)
    assert forced is not None and forced.wait()["compiled"] == 20
    assert len(_Workers.started) == 2

    arch["major"] = 10  # another architecture compiles other binaries
    assert W.warmup_marker(STANDARD, gpu) != marker


@pytest.mark.skipif(not TRITON, reason=NO_TRITON)
def test_a_warm_up_that_cannot_start_is_no_error(monkeypatch):
    """An optimisation only: a GPU query that fails means a warning and the kernels compile at their
    launches, as before."""
    import recon.kernels.warmup as W
    from recon import kernels

    monkeypatch.setattr(kernels, "hash_grid_module", lambda: object())

    def broken(device):
        raise RuntimeError("no device")

    monkeypatch.setattr(torch.cuda, "get_device_properties", broken)
    with pytest.warns(UserWarning, match="warm-up skipped: RuntimeError: no device"):
        assert W.start_hash_grid_warmup(STANDARD, torch.device("cuda", 0)) is None


_FIT_AFTER_WORKERS = """
import json, os, torch
from dataclasses import replace
from pathlib import Path
from recon.kernels.warmup import start_hash_grid_warmup
from recon.presets import get_preset
from recon.train import train
from recon.mesh import extract_mesh
from sd3d.core.io import read_views

cache = Path(os.environ["TRITON_CACHE_DIR"])
device = torch.device("cuda", 0)
preset = get_preset("standard")
record = start_hash_grid_warmup(preset.field.grid, device, workers=4).wait()
files = lambda: {str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file()}
after_workers = files()
preset = replace(preset, steps=40, init_steps=20, field=replace(preset.field, encoding_backend="triton"))
out = train(read_views(os.environ["SD3D_EXAMPLE"]), preset, device, seed=0)
extract_mesh(out.field, out.grid, 64, device)
torch.cuda.synchronize()
print(json.dumps({"record": record, "new_at_fit": sorted(files() - after_workers)}))
"""


@pytest.mark.skipif(not TRITON or not torch.cuda.is_available(), reason="needs Triton and a CUDA GPU")
def test_a_fit_after_the_workers_compiles_nothing(tmp_path):
    """On a GPU, in a fresh Triton cache: the workers compile the 20 variants (and their launchers)
    without making CUDA contexts, and a standard-preset fit plus its meshing then add nothing to the
    cache: every kernel it launched came from the workers."""
    env = {
        **os.environ,
        "TRITON_CACHE_DIR": str(tmp_path / "cache"),
        "SD3D_EXAMPLE": str(REPO / "examples" / "spot"),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", _FIT_AFTER_WORKERS], env=env, capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    record = report["record"]
    assert record["variants"] == record["compiled"] == 20 and record["failed"] == [], record
    assert record["launchers_failed"] == 0 and set(record["cuda_context"]) == {False}, record
    assert report["new_at_fit"] == [], report["new_at_fit"]


def test_reconstruct_starts_the_warm_up_before_the_fit_and_reports_it(monkeypatch):
    """``reconstruct`` starts the warm-up (for the preset's grid, on its device) before it reads the
    views and fits, does not wait for it, and hands its record on in the result (what the cold
    benchmark prints); with the PyTorch grid it starts none. The fit is a stand-in: this is the
    wiring; the GPU test above is the effect."""
    import time

    import recon.pipeline as P
    from recon.presets import ReconSettings
    from sd3d.core.triton_precompile import KernelWarmUp

    events: list[str] = []

    def start(cfg, device, workers=None, pool=None):
        events.append(f"warm-up {cfg.n_levels} levels on {device.type}")
        return KernelWarmUp(lambda: (time.sleep(0.1), {"variants": 20, "compiled": 20, "failed": []})[1])

    def fit(views, preset, device, **kwargs):
        events.append("fit")
        return types.SimpleNamespace(
            field=None, grid=None, final_loss=0.0, seconds=0.0, history=[], appearance=None, poses=None,
            graph_captures=0, phase_seconds={},
        )  # fmt: skip

    monkeypatch.setattr(P, "start_hash_grid_warmup", start)
    monkeypatch.setattr(P, "train", fit)
    monkeypatch.setattr(P, "resolve_backend", lambda backend, device: "triton")
    result = P.reconstruct(REPO / "examples" / "spot", ReconSettings(quality="standard"), device="cpu")
    assert events == ["warm-up 16 levels on cpu", "fit"]
    record = result.kernel_warmup
    assert record == {"running": True} or record["compiled"] == 20  # not waited for

    monkeypatch.setattr(P, "resolve_backend", lambda backend, device: "torch")
    events.clear()
    assert (
        P.reconstruct(REPO / "examples" / "spot", ReconSettings(quality="draft"), device="cpu").kernel_warmup
        is None
    )
    assert events == ["fit"]

    # a warm-up the caller started (`sd3d run` starts one before generating) is used, not another
    monkeypatch.setattr(P, "resolve_backend", lambda backend, device: "triton")
    events.clear()
    given = KernelWarmUp(lambda: {"variants": 20, "compiled": 20, "failed": [], "workers": 2})
    given.wait()
    result = P.reconstruct(
        REPO / "examples" / "spot", ReconSettings(quality="standard"), device="cpu", kernel_warmup=given
    )
    assert events == ["fit"] and result.kernel_warmup["workers"] == 2


def test_early_workers_start_only_where_a_gpu_may_want_them(tmp_path, monkeypatch):
    """``sd3d reconstruct`` starts the workers before it imports PyTorch, from what it knows then:
    not for ``--device cpu`` or a PyTorch-only hash grid, not without a CUDA driver showing a device,
    not when Triton's cache holds a warm-up marker (the exact check comes later, with PyTorch)."""
    from recon.warm_start import MARKER_GLOB, start_early_workers

    torch_grid = lambda: start_early_workers("auto", hash_grid="torch")  # noqa: E731
    check_early_start(
        start_early_workers, "recon.kernels.warmup", MARKER_GLOB, tmp_path, monkeypatch, refused=(torch_grid,)
    )


@pytest.mark.skipif(not TRITON, reason=NO_TRITON)
def test_early_workers_get_the_work_or_are_closed(tmp_path, monkeypatch):
    """Workers started early are given the 20 variants where the cache lacks them, and closed unused
    where an earlier warm-up left its marker."""
    import recon.kernels.warmup as W
    from recon import kernels

    monkeypatch.setattr(W, "triton_cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(kernels, "hash_grid_module", lambda: object())
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda d: types.SimpleNamespace(major=9, minor=0)
    )
    gpu = torch.device("cuda", 0)
    pool = EarlyPool()
    record = W.start_hash_grid_warmup(STANDARD, gpu, pool=pool).wait()
    assert pool.asked == [(20, (0, (9, 0)))] and record["compiled"] == 20 and pool.closed
    unused = EarlyPool()
    assert W.start_hash_grid_warmup(STANDARD, gpu, pool=unused) is None  # the marker: nothing to do
    assert unused.closed and unused.asked == []


def test_reconstruct_command_hands_its_early_workers_over_or_closes_them(run_cli, tmp_path, monkeypatch):
    """The command gives the early workers to the reconstruction, and closes them itself when a bad
    argument stops it before (no compiler processes left behind)."""
    import recon.pipeline
    import recon.warm_start

    pools: list[EarlyPool] = []

    def early(device, hash_grid="auto"):
        pools.append(EarlyPool())
        return pools[-1]

    monkeypatch.setattr(recon.warm_start, "start_early_workers", early)
    res = run_cli("reconstruct", REPO / "examples" / "spot", "-o", tmp_path / "m.fbx")
    assert res.code == 2 and pools[-1].closed  # stopped by the output name

    handed = []

    def stop(views, settings, **kwargs):
        handed.append(kwargs["compile_workers"])
        raise UserError("stopped here: the fit is not what this checks")

    monkeypatch.setattr(recon.pipeline, "reconstruct", stop)
    res = run_cli("reconstruct", REPO / "examples" / "spot", "-o", tmp_path / "m.glb", "--device", "cpu")
    assert res.code == 2 and "stopped here" in res.err
    assert handed == [pools[-1]] and not pools[-1].closed  # the reconstruction's to give work or close
