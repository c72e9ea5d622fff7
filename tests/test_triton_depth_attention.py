"""The depth-attention kernel (sd3d/models/kernels/depth_attention.py) against float64 and against
the PyTorch path it replaces.

In Triton's interpreter on the CPU (a subprocess; skipped without Triton, as in CI) and compiled on
CUDA (skipped without a GPU). The bound: the kernel computes in float32 and rounds once to the
output's dtype, so an element is off by at most the dtype's unit roundoff ``u`` of the output's
largest magnitude, plus float32's accumulation over at most a few hundred terms (< 2^-14 of it);
and over the whole tensor it must be no worse than the PyTorch path (which also rounds the logits
and the weights), within half again of its error. The kernel stays opt-in (``DepthAttention.kernel``)
until a GPU measures it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from support.triton_depth_attention_cases import CASES, measure, measure_layer
from support.triton_interpreter import interpreted_cases

from sd3d.models.depth_attention import DepthAttention, set_depth_attention_kernel

TRITON = importlib.util.find_spec("triton") is not None
CUDA = torch.cuda.is_available()
SCRIPT = Path(__file__).parent / "support" / "triton_depth_attention_cases.py"
UNIT = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


def check(result: dict, dtype: torch.dtype) -> None:
    assert result["finite"] and result["dtype_ok"] and result["contiguous_out"] and result["shape_ok"], result
    assert result["kernel_max_rel"] <= UNIT[dtype] + 2.0**-14, result
    assert result["kernel_rel_l2"] <= 1.5 * result["torch_rel_l2"] + 2.0**-20, result


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return interpreted_cases(SCRIPT, CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_in_the_interpreter(interpreted, name):
    check(interpreted[name], CASES[name][5])


def test_the_folded_layer_with_the_kernel_in_the_interpreter(interpreted):
    """The whole layer, float32: the kernel's middle in place of PyTorch's changes the result by
    round-off only (both within a few float32 ulps of the float64 layer)."""
    layer = interpreted["layer"]
    assert layer["kernel_ran"], layer
    assert layer["kernel_rel_l2"] <= 1.5 * layer["torch_rel_l2"] + 2.0**-20, layer


def test_a_model_step_with_both_kernels_in_the_interpreter(interpreted):
    """A whole guided step of the tiny model with the depth attention's kernel and the fused GEGLU
    (the CUDA defaults) equals the step with PyTorch's code to float32 round-off, and both kernels
    ran (the unconditional rows skip the depth attention, so the kernels saw the real batch split)."""
    step = interpreted["model_step"]
    assert step["finite"] and step["calls"]["depth_attention"] > 0 and step["calls"]["geglu"] > 0, step
    assert step["rel"] < 1e-5, step


@pytest.mark.skipif(not (TRITON and CUDA), reason="needs Triton and a CUDA device")
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_on_cuda(name):
    check(measure(name, "cuda"), CASES[name][5])


@pytest.mark.skipif(not (TRITON and CUDA), reason="needs Triton and a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_folded_layer_with_the_kernel_on_cuda(dtype):
    """Under bf16 autocast (the generation's setting) and in float32 (TF32 off, as PyTorch's default
    for matrix products)."""
    layer = measure_layer("cuda", dtype)
    assert layer["kernel_ran"], layer
    assert layer["kernel_rel_l2"] <= 1.5 * layer["torch_rel_l2"] + 2.0**-20, layer


def test_the_layer_keeps_pytorch_where_the_kernel_does_not_run():
    """``torch`` (the default) and ``auto`` off CUDA run PyTorch's middle; ``triton`` where the
    kernel cannot run says why instead of quietly running something else."""
    torch.manual_seed(0)
    layer = DepthAttention(16, 8, 4, 4).eval()
    x = torch.randn(2, 16, 3, 5)
    context = torch.randn(2, 8, 6, 3, 5)
    assert layer.kernel == "torch"
    with torch.no_grad():
        reference = layer(x, context)
        set_depth_attention_kernel(layer, "auto")
        assert torch.equal(layer(x, context), reference)
        set_depth_attention_kernel(layer, "triton")
        with pytest.raises(RuntimeError, match="cannot run its kernel here"):
            layer(x, context)
    with pytest.raises(ValueError, match="unknown depth attention implementation"):
        set_depth_attention_kernel(layer, "cuda")


def test_a_kernel_that_fails_falls_back_to_pytorch_once_and_says_so(monkeypatch):
    """The kernel is the CUDA default, so a GPU that Triton cannot compile for must still get the
    layer's result: with ``kernel="auto"`` a failing launch warns, PyTorch's middle runs, and the
    layer does not try again; ``"triton"`` (asked for by name) raises. Simulated on the CPU: the
    device check is waived and the kernel raises as a compile error would."""
    from types import SimpleNamespace

    from sd3d.models import kernels

    calls = []

    def failing(*args):
        calls.append(1)
        raise RuntimeError("Triton Error [CUDA]: device kernel image is invalid\nmore")

    fake = SimpleNamespace(depth_attention=failing, unsupported_reason=lambda *args: None)
    monkeypatch.setattr(kernels, "depth_attention_module", lambda: fake)
    real_refusal = kernels.refusal

    def on_cuda(implementation, device, *args):  # the device check waived, the rest as it is
        return real_refusal(implementation, torch.device("cuda"), *args)

    monkeypatch.setattr(kernels, "refusal", on_cuda)
    torch.manual_seed(0)
    layer = DepthAttention(16, 8, 4, 4).eval()
    x, context = torch.randn(2, 16, 3, 5), torch.randn(2, 8, 6, 3, 5)
    with torch.no_grad():
        expected = layer(x, context)  # kernel "torch": PyTorch's middle
        layer.kernel = "auto"
        with pytest.warns(RuntimeWarning, match="depth attention failed .*device kernel image is invalid"):
            out = layer(x, context)
        assert torch.equal(out, expected) and len(calls) == 1
        assert layer.kernel_error == "RuntimeError: Triton Error [CUDA]: device kernel image is invalid"
        assert torch.equal(layer(x, context), expected) and len(calls) == 1  # not tried again
        explicit = DepthAttention(16, 8, 4, 4).eval()
        explicit.kernel = "triton"
        with pytest.raises(RuntimeError, match="kernel image"):
            explicit(x, context)
