"""GPU memory policy without a GPU: the budget arithmetic under a per-process cap, the choosers
following it, and a CUDA out-of-memory error reaching the user as one line (exit 3)."""

from __future__ import annotations

import pytest
import torch

import recon.pipeline
from cli.app import OUT_OF_MEMORY_EXIT, main
from sd3d.core import device as device_mod
from sd3d.core.errors import UserError
from sd3d.models import inference

GIB = 2**30
CUDA = torch.device("cuda", 0)


def _fake_cuda(monkeypatch, *, free: int, total: int, allocated: int, reserved: int, fraction: float):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, total))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: allocated)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: reserved)
    monkeypatch.setattr(torch.cuda, "get_per_process_memory_fraction", lambda device=None: fraction)


def test_budget_without_a_cap_counts_the_cache_as_free(monkeypatch):
    # 100 GiB free on the card, and 3 of the 5 GiB PyTorch holds are cached but unused.
    _fake_cuda(
        monkeypatch, free=100 * GIB, total=140 * GIB, allocated=2 * GIB, reserved=5 * GIB, fraction=1.0
    )
    assert device_mod.cuda_memory_budget(CUDA) == 103 * GIB


def test_budget_under_a_cap_is_the_cap_minus_what_is_allocated(monkeypatch):
    # An 8 GB card emulated on a 140 GiB one: the card's free memory no longer decides.
    cap = 6 * GIB
    _fake_cuda(
        monkeypatch,
        free=100 * GIB,
        total=140 * GIB,
        allocated=2 * GIB,
        reserved=3 * GIB,
        fraction=cap / (140 * GIB),
    )
    assert abs(device_mod.cuda_memory_budget(CUDA) - 4 * GIB) <= 1
    _fake_cuda(
        monkeypatch,
        free=100 * GIB,
        total=140 * GIB,
        allocated=7 * GIB,
        reserved=7 * GIB,
        fraction=cap / (140 * GIB),
    )
    assert device_mod.cuda_memory_budget(CUDA) == 0


def test_view_chunks_and_offloading_follow_the_capped_budget(monkeypatch):
    total = 140 * GIB
    _fake_cuda(monkeypatch, free=130 * GIB, total=total, allocated=0, reserved=0, fraction=1.0)
    assert inference.choose_batch_view_num(CUDA, torch.bfloat16, samples=4) == 16
    # The same card capped at 1 GiB: 4 samples cost 4 x 0.12 GB per view, so two views (0.96 GB) pass
    # the 85% margin (0.91 GB) no more: one view per chunk.
    _fake_cuda(monkeypatch, free=130 * GIB, total=total, allocated=0, reserved=0, fraction=GIB / total)
    assert inference.choose_batch_view_num(CUDA, torch.bfloat16, samples=4) == 1
    assert inference.choose_decode_batch(CUDA, torch.bfloat16, 32) == 4  # 0.5 GiB / 0.1 GB = 5 > 4
    _fake_cuda(monkeypatch, free=130 * GIB, total=total, allocated=0, reserved=0, fraction=GIB / 4 / total)
    assert inference.choose_decode_batch(CUDA, torch.bfloat16, 32) == 1
    # Loaded weights count against the cap: 5.5 of 6 GiB allocated leaves less than the 6 GB margin.
    model = torch.nn.Linear(1, 1)
    model.device = CUDA  # the SyncDreamer model's attribute that should_offload reads
    _fake_cuda(monkeypatch, free=130 * GIB, total=total, allocated=0, reserved=0, fraction=1.0)
    assert not inference.should_offload(model)
    _fake_cuda(
        monkeypatch,
        free=130 * GIB,
        total=total,
        allocated=int(5.5 * GIB),
        reserved=0,
        fraction=6 * GIB / total,
    )
    assert inference.should_offload(model)


def test_out_of_memory_is_one_line_with_what_to_lower(monkeypatch, capsys, tmp_path):

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")

    monkeypatch.setattr(recon.pipeline, "reconstruct", oom)
    code = main(["reconstruct", "examples/spot", "-o", str(tmp_path / "m.glb"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == OUT_OF_MEMORY_EXIT
    assert len(err) == 1 and err[0].startswith("error: the GPU ran out of memory")
    assert "--samples" in err[0] and "--device cpu" in err[0]
    assert not (tmp_path / "m.glb").exists()


def test_other_errors_keep_their_traceback(monkeypatch, tmp_path):

    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(recon.pipeline, "reconstruct", bug)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["reconstruct", "examples/spot", "-o", str(tmp_path / "m.glb"), "--device", "cpu"])


def test_gpu_memory_cap_sets_the_fraction_of_the_card(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100 * GIB, 140 * GIB))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device=None: calls.append(f))
    device_mod.limit_gpu_memory(CUDA, 6.0)
    device_mod.limit_gpu_memory(CUDA, 500.0)  # more than the card: no cap
    device_mod.limit_gpu_memory(CUDA, None)
    device_mod.limit_gpu_memory(torch.device("cpu"), 6.0)  # nothing to cap on the CPU
    assert calls == [pytest.approx(6 / 140), 1.0]
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(UserError, match="--gpu-memory must be a positive number of GiB"):
            device_mod.limit_gpu_memory(CUDA, bad)


def test_run_settings_check_the_cap_before_any_work():
    from sd3d.workflows.run import RunSettings

    with pytest.raises(UserError, match="--gpu-memory"):
        RunSettings(gpu_memory_gib=0.0)
    settings = RunSettings(gpu_memory_gib=6.0, device="cpu").check()
    assert settings.device_and_dtype()[0] == torch.device("cpu")


@pytest.mark.parametrize("command", ["reconstruct", "generate", "run"])
def test_gpu_memory_option_is_checked_by_every_gpu_command(command, capsys, tmp_path):
    source = "examples/spot" if command == "reconstruct" else "examples/spot/000.png"
    out = tmp_path / ("out.glb" if command == "reconstruct" else "out")
    code = main([command, source, "-o", str(out), "--gpu-memory", "0", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: --gpu-memory must be a positive number of GiB, got 0.0"]
    assert not out.exists()


def test_a_cap_on_a_device_without_an_index_names_the_current_device(monkeypatch):
    """``--gpu-memory 6`` with ``--device cuda``: torch 2.11's set_per_process_memory_fraction
    refuses ``torch.device("cuda")`` (ValueError, seen on the GPU machine in session 9), so the cap
    is set on the current device's index."""
    calls = []

    def set_fraction(fraction, device=None):
        if not isinstance(device, int):
            raise ValueError(
                f"Expected a torch.device with a specified index or an integer, but got:{device}"
            )
        calls.append((fraction, device))

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70 * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", set_fraction)
    device_mod.limit_gpu_memory(torch.device("cuda"), 6)
    device_mod.limit_gpu_memory(torch.device("cuda:1"), 8)
    assert calls == [(6 / 80, 0), (8 / 80, 1)]
