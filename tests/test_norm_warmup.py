"""The GroupNorm kernels compiled ahead (sd3d/models/norm_warmup.py): what it enumerates, how it is waited for.

The enumeration runs on the meta device and needs Triton only for the kernel's host code (skipped in
CI, which installs none); the compiling itself needs a GPU (benchmarks/RESULTS.md, session 14).
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sd3d.core.progress import Progress
from sd3d.core.triton_precompile import (
    CompileWorkers,
    KernelWarmUp,
    leave_marker,
    variant_key,
)
from sd3d.models.configs import tiny_config
from sd3d.models.depth_attention import DepthAttention
from sd3d.models.inference import prepare_for_inference, set_channels_last_
from sd3d.models.norm_warmup import (
    depth_attention_launches,
    geglu_launches,
    generation_launches,
    generation_norm_launches,
    norm_launches,
    start_norm_kernel_warmup,
    warmup_marker,
)
from sd3d.models.norms import GroupNorm
from sd3d.models.syncdreamer_checkpoint import load_syncdreamer
from sd3d.models.synthetic import synthetic_state_dict
from sd3d.models.unet import GEGLU
from sd3d.pipelines.syncdreamer import GenerationSettings, sample_views, wait_for_kernel_warmup

TRITON = importlib.util.find_spec("triton") is not None


@pytest.mark.skipif(
    not TRITON, reason="triton is not installed (CPU-only torch, as in CI): the kernel's host code needs it"
)
def test_the_meta_run_enumerates_the_launches_a_generation_makes(monkeypatch):
    """The launches the warm-up compiles are those a real generation makes: a tiny model prepared as
    on CUDA (bf16 weights and norms, channels-last UNet, convolution biases folded) generates on the CPU while every GroupNorm
    call records the launches the kernel would make for it (the same host code, real tensors); the
    meta-device enumeration must give the same set of variants -- a dtype, layout or chunking it got
    wrong would show here as a variant compiled for nothing and one compiled at its launch."""
    from sd3d.preprocess import prepare_input

    config = tiny_config()
    model = load_syncdreamer(synthetic_state_dict(config), config, "cpu", torch.bfloat16)
    prepare_for_inference(model, torch.bfloat16, half_norms=True, fold_conv_biases=True)
    set_channels_last_(model, unet=True, volume=False)
    seen: set = set()
    forward = GroupNorm.forward
    depth_refusal = DepthAttention.kernel_unavailable
    geglu_forward = GEGLU.forward

    def recording(self, x, pre_bias=None, activation=None):
        seen.update(variant_key(launch) for launch in norm_launches(self, x, pre_bias, activation, 132))
        return forward(self, x, pre_bias, activation)

    def recording_depth(self, q, context):
        seen.update(variant_key(launch) for launch in depth_attention_launches(q, context))
        return depth_refusal(self, q, context)

    def recording_geglu(self, x):
        seen.update(variant_key(launch) for launch in geglu_launches(self.proj(x)))
        return geglu_forward(self, x)

    monkeypatch.setattr(GroupNorm, "forward", recording)
    monkeypatch.setattr(DepthAttention, "kernel_unavailable", recording_depth)
    monkeypatch.setattr(GEGLU, "forward", recording_geglu)
    rgba = np.zeros((256, 256, 4), dtype=np.uint8)
    rgba[64:192, 64:192] = 200
    prepared = prepare_input(Image.fromarray(rgba, "RGBA"))
    settings = GenerationSettings(steps=2, batch_view_num=8)
    sample_views(model, prepared, settings, dtype=torch.bfloat16, cuda_graph=False)
    monkeypatch.setattr(GroupNorm, "forward", forward)
    monkeypatch.setattr(DepthAttention, "kernel_unavailable", depth_refusal)
    monkeypatch.setattr(GEGLU, "forward", geglu_forward)

    launches = generation_launches(config, torch.bfloat16, batch_view_num=8, decode_batch=16, sms=132)
    expected = {variant_key(launch) for launch in launches}
    assert seen and expected == seen, (sorted(expected - seen), sorted(seen - expected))
    names = {key[0] for key in expected}
    ours = {"_depth_attention_kernel", "_geglu_kernel"}  # the CUDA defaults since session 16
    assert ours <= names and names - ours <= {"_gn_fused_kernel", "_gn_partial_kernel", "_gn_apply_kernel"}, (
        names
    )
    gn_only = generation_norm_launches(config, torch.bfloat16, batch_view_num=8, decode_batch=16, sms=132)
    assert {variant_key(x) for x in gn_only} == {k for k in expected if k[0].startswith("_gn_")}


def test_nothing_is_started_off_cuda():
    assert start_norm_kernel_warmup(tiny_config(), torch.device("cpu"), torch.bfloat16) is None


def test_the_first_generation_waits_once_and_reports_it():
    """sample_views waits for the warm-up :func:`load_model` started (here a stand-in that takes
    0.2 s), says so on a progress line while it runs, records it, and clears it: a second generation
    does not wait again; a warm-up that failed is reported, not raised (the launches then compile
    themselves, as without a warm-up)."""

    class Model:
        kernel_warmup = None

    model = Model()
    model.kernel_warmup = KernelWarmUp(lambda: (time.sleep(0.2), {"variants": 5, "failed": ["x"]})[1])
    stream = io.StringIO()
    progress = Progress(enabled=True, plain=True, stream=stream)
    record = wait_for_kernel_warmup(model, progress)
    assert record["variants"] == 5 and record["failed"] == 1 and record["waited_s"] >= 0.1
    assert model.kernel_warmup is None and wait_for_kernel_warmup(model, progress) is None
    assert "compiling GPU kernels" in stream.getvalue()

    def broken() -> dict:
        raise RuntimeError("no warmup in this Triton")

    model.kernel_warmup = KernelWarmUp(broken)
    record = wait_for_kernel_warmup(model, progress)
    assert record["failed"] == 1 and record["variants"] == 0


def test_a_warm_up_that_ran_leaves_its_marker_with_what_it_did(tmp_path):
    """The marker (which stops later processes from warming up again) is written once a warm-up has
    run, failures included (they would recur: each later process would pay for them again), whole
    (no partial file left behind), and a folder that cannot be written is no error."""
    import json

    marker = tmp_path / "cache" / "sd3d-groupnorm-warm-x"
    leave_marker(marker, {"variants": 70, "failed": ["RuntimeError: ptxas"], "seconds": 3.0})
    assert json.loads(marker.read_text()) == {
        "variants": 70,
        "failed": ["RuntimeError: ptxas"],
        "error": None,
    }
    leave_marker(marker, {"variants": 70, "failed": []})
    assert json.loads(marker.read_text())["failed"] == []
    assert sorted(p.name for p in marker.parent.iterdir()) == [marker.name]
    (tmp_path / "file").write_text("")
    leave_marker(tmp_path / "file" / "marker", {"variants": 1, "failed": []})  # parent is a file: ignored
    assert not (tmp_path / "file" / "marker").exists()


@pytest.mark.skipif(not TRITON, reason="triton is not installed (CPU-only torch, as in CI)")
def test_the_marker_names_what_decides_the_variants(tmp_path, monkeypatch):
    """One marker per (kernel source, Triton, PyTorch, GPU, config, dtype, chunking), inside Triton's
    cache folder (so clearing the cache clears it): the same inputs name the same file, any change a
    different one."""
    from types import SimpleNamespace

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    gpu = SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: gpu)
    device = torch.device("cuda", 0)
    base = warmup_marker(tiny_config(), device, torch.bfloat16, batch_view_num=16, decode_batch=4)
    assert base == warmup_marker(tiny_config(), device, torch.bfloat16, batch_view_num=16, decode_batch=4)
    assert base.parent == tmp_path and base.name.startswith("sd3d-groupnorm-warm-")
    others = {
        warmup_marker(tiny_config(), device, torch.float16, batch_view_num=16, decode_batch=4),
        warmup_marker(tiny_config(), device, torch.bfloat16, batch_view_num=8, decode_batch=4),
        warmup_marker(tiny_config(), device, torch.bfloat16, batch_view_num=16, decode_batch=2),
    }
    gpu.multi_processor_count = 114
    others.add(warmup_marker(tiny_config(), device, torch.bfloat16, batch_view_num=16, decode_batch=4))
    assert base not in others and len(others) == 4


def test_compile_workers_compile_each_variant_once_in_other_processes(tmp_path, monkeypatch):
    """The workers compute the variants themselves (the same list in each) and compile a share
    each: every variant exactly once, with its tensors given by dtype and its scalars (the float
    ``eps`` included) as the launch has them; the workers are not this process, the work is shared
    out, and a compiler error is reported as a failure, not raised."""
    from support import fake_kernels

    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("SD3D_FAKE_KERNEL_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))  # where support.fake_kernels lives
    with CompileWorkers(2, "support.fake_kernels") as pool:
        result = pool.compile(fake_kernels.variants, {"ok": 5, "raising": 1}, None)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(c["constants"]["CG"] for c in calls) == [0, 1, 2, 3, 4]
    assert os.getpid() not in {c["pid"] for c in calls} and len({c["pid"] for c in calls}) == 2
    for call in calls:
        assert call["args"] == ["torch.bfloat16", "torch.bfloat16", "8", "16", "1e-06"]
        assert call["grid"] == [2, 4] and call["constants"]["num_warps"] == 4
    assert result["variants"] == 6 and result["compiled"] == 5 and result["workers"] == 2
    assert result["failed"] == ["_raising_kernel: RuntimeError: ptxas said no"]
    assert len(result["cuda_context"]) == 2 and result["pinned"] == [False, False]  # no GPU named


def test_a_worker_that_dies_gives_up_its_share_only(tmp_path, monkeypatch):
    """A worker that dies (a compiler crash) or cannot start (its module does not import) is named
    with its exit code among the failures, and nothing else is lost: the other worker still
    compiles its share, and no worker process is left running."""
    from support import fake_kernels

    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("SD3D_FAKE_KERNEL_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent))
    pool = CompileWorkers(2, "support.fake_kernels")
    with pool:  # variant 0 (ok) to the first worker, variant 1 (dies) to the second
        result = pool.compile(fake_kernels.variants, {"ok": 1, "dying": 1}, None)
    assert result["failed"] == ["compile worker 2 of 2: exited with code 3: no output"]
    assert result["compiled"] == 1 and len(log.read_text().splitlines()) == 1
    assert all(p.returncode is not None for p in pool._processes)

    with CompileWorkers(1, "support.no_such_module") as pool:
        result = pool.compile(fake_kernels.variants, {"ok": 2}, None)
    assert result["compiled"] == 0 and len(result["failed"]) == 1
    assert "exited with code 1: ModuleNotFoundError" in result["failed"][0]


_PROBE_MODULE = """
import torch
from sd3d.core.triton_precompile import distinct_variants
from sd3d.models.norm_warmup import norm_launches
from sd3d.models.norms import GroupNorm


def variants(sms):
    norm = GroupNorm(32, 320).to("meta", torch.bfloat16)
    x = torch.empty(2, 320, 16, 16, device="meta", dtype=torch.bfloat16)
    x = x.contiguous(memory_format=torch.channels_last)
    return distinct_variants(norm_launches(norm, x, None, "silu", sms))
"""

_LAUNCH_AFTER_WORKERS = """
import json, os, torch
from pathlib import Path
import probe_variants
from sd3d.models.kernels import group_norm as G
from sd3d.core.triton_precompile import CompileWorkers, KernelWarmUp, distinct_variants, leave_marker, variant_key

cache = Path(os.environ["TRITON_CACHE_DIR"])
sms = torch.cuda.get_device_properties(0).multi_processor_count
with CompileWorkers(2, "probe_variants") as pool:
    result = pool.compile(probe_variants.variants, {"sms": sms}, (0, torch.cuda.get_device_capability(0)))
after_workers = {p.name: sorted(f.name for f in p.iterdir()) for p in cache.iterdir()}
weight = torch.randn(320, device="cuda", dtype=torch.bfloat16)
bias = torch.randn(320, device="cuda", dtype=torch.bfloat16)
x = torch.randn(2, 320, 16, 16, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
y = G.group_norm(x, 32, weight, bias, 1e-5, activation="silu")
torch.cuda.synchronize()
after_launch = {p.name: sorted(f.name for f in p.iterdir()) for p in cache.iterdir()}
reference = torch.nn.functional.silu(torch.nn.functional.group_norm(x, 32, weight, bias, 1e-5))
print(json.dumps({"result": result, "after_workers": after_workers,
                  "new_at_launch": {k: v for k, v in after_launch.items() if k not in after_workers},
                  "max_diff": float((y.float() - reference.float()).abs().max())}))
"""


@pytest.mark.skipif(not TRITON or not torch.cuda.is_available(), reason="needs Triton and a CUDA GPU")
def test_a_launch_loads_what_the_workers_compiled(tmp_path):
    """The point of compiling in other processes: a fresh process whose launch finds the workers'
    kernels and launchers in Triton's on-disk cache compiles nothing (the cache has no new entry
    after the launch), because the workers, inheriting the environment, computed the same cache
    keys; and the workers did it without making a CUDA context (which would cost each of them GPU
    memory)."""
    import subprocess
    import sys

    (tmp_path / "probe_variants.py").write_text(_PROBE_MODULE)
    env = {**os.environ, "TRITON_CACHE_DIR": str(tmp_path / "cache")}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(tmp_path), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCH_AFTER_WORKERS], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    result = report["result"]
    assert result["variants"] >= 1 and result["compiled"] == result["variants"] and result["failed"] == []
    cubins = [name for files in report["after_workers"].values() for name in files if name.endswith(".cubin")]
    assert len(cubins) == result["variants"]
    assert report["new_at_launch"] == {}, report["new_at_launch"]
    assert result["pinned"] == [True, True] and result["cuda_context"] == [False, False]
    assert report["max_diff"] < 0.1


def test_a_regenerated_run_keeps_the_warm_up_its_first_generation_waited_for():
    """`sd3d run` regenerates when the estimated elevation is off, and its report shows the kept
    generation's record: the kernel warm-up the first generation waited for (a fresh GPU machine's
    seconds) must stay in it (on the GPU in session 15 it was lost)."""
    from sd3d.core import cameras as cam
    from sd3d.core.io import ViewSet
    from sd3d.workflows.run import carry_kernel_warmup

    def views(**provenance) -> ViewSet:
        images = np.ones((16, 4, 4, 3), np.float32)
        return ViewSet(images, cam.target_cameras(), provenance=dict(provenance))

    warm = {"variants": 70, "failed": 0, "seconds": 9.6, "waited_s": 2.7}
    kept = carry_kernel_warmup([views(model="a", kernel_warmup=warm)], [views(model="b"), views(model="c")])
    assert [v.provenance for v in kept] == [
        {"model": "b", "kernel_warmup": warm},
        {"model": "c", "kernel_warmup": warm},
    ]
    plain = [views(model="b")]
    assert carry_kernel_warmup([views(model="a")], plain) is plain


@pytest.mark.skipif(not TRITON, reason="triton is not installed (CPU-only torch, as in CI)")
def test_a_pinned_worker_answers_triton_without_asking_cuda():
    """A compile worker tells Triton's active driver the parent's GPU (index, architecture, the
    default stream) so that compiling never asks CUDA, whose questions made a CUDA context -- GPU
    memory -- in every worker on the H100 (session 15). Checked on a stand-in for the driver Triton
    would make (a CPU has none): afterwards its questions are answered from the pin alone."""
    from triton.runtime import driver

    from sd3d.core.triton_precompile import pin_triton_gpu

    class AsksCuda:
        def __init__(self) -> None:
            def ask(*args):
                raise AssertionError("asked CUDA")

            self.get_current_device = self.get_device_capability = self.get_current_stream = ask

        def get_current_target(self):  # as Triton's CUDA driver computes it
            capability = self.get_device_capability(self.get_current_device())
            return capability[0] * 10 + capability[1]

    stand_in = AsksCuda()
    previous = driver._active  # None until a driver was made; restored as it was
    driver.set_active(stand_in)
    try:
        assert pin_triton_gpu(1, (9, 0))
        assert stand_in.get_current_device() == 1 and stand_in.get_current_stream(1) == 0
        assert stand_in.get_current_target() == 90
        driver.set_active(object())  # a driver without those attributes: not pinned, no error
        assert pin_triton_gpu(0, (9, 0)) is False
    finally:
        driver.set_active(previous)


def test_early_generation_workers_start_only_where_a_gpu_may_want_them(tmp_path, monkeypatch):
    """``sd3d run`` / ``sd3d generate`` start the warm-up's workers before they import PyTorch, from
    what they know then: not for ``--device cpu``, not without a CUDA driver showing a device, not
    when Triton's cache holds a warm-up marker (the exact check comes later, with PyTorch)."""
    from support.early_pool import check_early_start

    from sd3d.models.warm_start import MARKER_GLOB, start_early_workers

    check_early_start(start_early_workers, "sd3d.models.norm_warmup", MARKER_GLOB, tmp_path, monkeypatch)


@pytest.mark.skipif(not TRITON, reason="triton is not installed: the warm-up's marker names its version")
def test_early_workers_get_the_generation_warm_up_or_are_closed(tmp_path, monkeypatch):
    """Workers started early get the warm-up where the cache lacks its marker (and the marker they
    leave is one the early start's glob finds next time), and are closed unused where it has one,
    or where no warm-up applies (not CUDA)."""
    import fnmatch
    import types

    from support.early_pool import EarlyPool

    from sd3d.models.warm_start import MARKER_GLOB

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    props = types.SimpleNamespace(name="H", major=9, minor=0, multi_processor_count=132)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: props)
    gpu = torch.device("cuda", 0)
    pool = EarlyPool(compiled=3)
    warm = start_norm_kernel_warmup(tiny_config(), gpu, torch.bfloat16, pool=pool)
    record = warm.wait()
    assert len(pool.asked) == 1 and pool.asked[0][1] == (0, (9, 0)) and pool.asked[0][0] > 0
    assert record["compiled"] == 3 and pool.closed
    marker = warmup_marker(tiny_config(), gpu, torch.bfloat16, batch_view_num=16, decode_batch=4)
    assert marker.exists() and fnmatch.fnmatch(marker.name, MARKER_GLOB)
    unused = EarlyPool()
    assert start_norm_kernel_warmup(tiny_config(), gpu, torch.bfloat16, pool=unused) is None
    assert unused.closed and unused.asked == []
    on_cpu = EarlyPool()
    assert start_norm_kernel_warmup(tiny_config(), torch.device("cpu"), torch.bfloat16, pool=on_cpu) is None
    assert on_cpu.closed and on_cpu.asked == []


def test_run_and_generate_hand_their_early_workers_over_and_close_them(run_cli, tmp_path, monkeypatch):
    """``sd3d run`` and ``sd3d generate`` give the workers they started before importing PyTorch to
    the model's loading, and close them when they end, also when a bad argument stops them first
    (no compiler processes left behind)."""
    from support.early_pool import EarlyPool

    import cli.generate
    import cli.run
    import sd3d.models.warm_start
    import sd3d.workflows.run
    from sd3d.core.errors import UserError

    pools: list[EarlyPool] = []
    monkeypatch.setattr(
        sd3d.models.warm_start, "start_early_workers", lambda device: pools.append(EarlyPool()) or pools[-1]
    )
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((64, 64, 4), 200, np.uint8), "RGBA").save(photo)

    handed = []
    res = run_cli("run", photo, "-o", tmp_path / "out", "--steps", "0")
    assert res.code == 2 and not pools  # refused by the option's own check: nothing was started
    stray = tmp_path / "views"
    stray.mkdir()
    (stray / "notes.txt").write_text("the user's")
    res = run_cli("generate", photo, "-o", stray)  # a folder sd3d did not write: refused in the command
    assert res.code == 2 and len(pools) == 1 and pools[-1].closed and "notes.txt" in os.listdir(stray)

    def refuse(**options):
        raise UserError("refused here: the settings are not what this checks")

    monkeypatch.setattr(cli.run, "_settings", refuse)
    res = run_cli("run", photo, "-o", tmp_path / "out")
    assert res.code == 2 and "refused here" in res.err and len(pools) == 2 and pools[-1].closed
    monkeypatch.undo()
    monkeypatch.setattr(
        sd3d.models.warm_start,
        "start_early_workers",
        lambda device: pools.append(EarlyPool()) or pools[-1],
    )

    def stop(*args, **kwargs):
        handed.append(kwargs.get("compile_workers", args[-1] if args else None))
        raise UserError("stopped here: the generation is not what this checks")

    monkeypatch.setattr(sd3d.workflows.run, "run_photo", stop)
    res = run_cli("run", photo, "-o", tmp_path / "out")
    assert res.code == 2 and "stopped here" in res.err
    assert handed == [pools[-1]] and pools[-1].closed
    monkeypatch.setattr(cli.generate, "_run_syncdreamer", stop)
    res = run_cli("generate", photo, "-o", tmp_path / "new-views")
    assert res.code == 2 and "stopped here" in res.err
    assert handed[-1] is pools[-1] and pools[-1].closed and len(pools) == 4 and handed[0] is pools[2]
