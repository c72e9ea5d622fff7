"""The fused GEGLU kernel (sd3d/models/kernels/geglu.py) against its PyTorch reference.

In Triton's interpreter on the CPU (a subprocess; skipped without Triton, as in CI) and compiled on
CUDA (skipped without a GPU). The kernel is opt-in (``GEGLU.implementation``) until a GPU measures it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from support.triton_geglu_cases import CASES, measure
from support.triton_interpreter import interpreted_cases

from sd3d.models.unet import GEGLU, set_geglu_implementation

TRITON = importlib.util.find_spec("triton") is not None
CUDA = torch.cuda.is_available()
SCRIPT = Path(__file__).parent / "support" / "triton_geglu_cases.py"


def check(result: dict, dtype: torch.dtype) -> None:
    """Within 2 ulps (float32) or 1 ulp (half precision) of the output dtype at the tensor's largest
    value: differences come only from erf, whose last bit differs between libraries and which sits in
    ``1 + erf`` near cancellation for very negative inputs. The interpreter's erf is not the GPU's
    (1.6 % of float16 outputs differ there, all near zero)."""
    assert result["shape_ok"] and result["contiguous_out"], result
    assert result["max_ulps"] <= (2 if dtype == torch.float32 else 1), result


@pytest.fixture(scope="module")
def interpreted() -> dict:
    return interpreted_cases(SCRIPT, CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_in_the_interpreter(interpreted, name):
    check(interpreted[name], CASES[name][2])


@pytest.mark.skipif(not (TRITON and CUDA), reason="needs Triton and a CUDA device")
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_on_cuda(name):
    check(measure(name, "cuda"), CASES[name][2])


HALF_CASES = [name for name, case in CASES.items() if case[2] != torch.float32]


@pytest.mark.xfail(
    strict=True,
    reason="measured on an H100 in session 16: 0.26-0.87 % of the half-precision outputs differ from "
    "PyTorch's in their last bit (at most 0.001 of an ulp at the tensor's largest value), where equal "
    "erf implementations were expected to give none; the cause (floating-point contraction around "
    "erf, or another erf) is not found, so the kernel stays opt-in",
)
@pytest.mark.skipif(not (TRITON and CUDA), reason="needs Triton and a CUDA device")
@pytest.mark.parametrize("name", HALF_CASES)
def test_kernel_rounds_as_pytorch_on_cuda(name):
    """The module's claim, bit for bit but for a rare statistic of rounding: on CUDA both sides call
    libdevice's erf, so a half-precision output should equal PyTorch's."""
    assert measure(name, "cuda")["mismatch"] <= 1e-3


@pytest.mark.skipif(not (TRITON and CUDA), reason="needs Triton and a CUDA device")
def test_the_layer_routes_to_the_kernel_on_cuda():
    layer = GEGLU(64, 96).cuda().to(torch.bfloat16).eval()
    x = torch.randn(2, 50, 64, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        reference = layer(x)
        layer.implementation = "triton"
        fused = layer(x)
    assert layer.kernel_unavailable(layer.proj(x).detach()) is None
    assert (fused.float() - reference.float()).abs().max() <= 2**-6 * reference.float().abs().max()


def test_the_layer_keeps_pytorch_where_the_kernel_does_not_run():
    """``torch`` (the default) and ``auto`` off CUDA run the reference code; ``triton`` where the
    kernel cannot run says why instead of quietly running something else."""
    torch.manual_seed(0)
    layer = GEGLU(8, 12).eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        reference = layer(x)
        set_geglu_implementation(layer, "auto")
        assert torch.equal(layer(x), reference)
        assert layer.kernel_unavailable(layer.proj(x)) == "a cpu tensor"
        set_geglu_implementation(layer, "triton")
        with pytest.raises(RuntimeError, match="cannot run its kernel here"):
            layer(x)
    with pytest.raises(ValueError, match="unknown GEGLU implementation"):
        set_geglu_implementation(layer, "fused")


def test_a_kernel_that_fails_falls_back_to_pytorch_once_and_says_so(monkeypatch):
    """The fused GEGLU is the CUDA default: a launch that fails (a GPU Triton cannot compile for)
    warns and returns PyTorch's result, and the layer does not try again; ``"triton"`` raises.
    Simulated on the CPU with the device check waived."""
    from types import SimpleNamespace

    from sd3d.models import kernels

    calls = []

    def failing(h):
        calls.append(1)
        raise RuntimeError("Triton Error [CUDA]: device kernel image is invalid\nmore")

    monkeypatch.setattr(
        kernels, "geglu_module", lambda: SimpleNamespace(geglu=failing, unsupported_reason=lambda h: None)
    )
    real_refusal = kernels.refusal

    def on_cuda(implementation, device, *args):  # the device check waived, the rest as it is
        return real_refusal(implementation, torch.device("cuda"), *args)

    monkeypatch.setattr(kernels, "refusal", on_cuda)
    torch.manual_seed(0)
    layer = GEGLU(8, 12).eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        expected = layer(x)
        layer.implementation = "auto"
        with pytest.warns(RuntimeWarning, match="GEGLU failed .*device kernel image is invalid"):
            out = layer(x)
        assert torch.equal(out, expected) and len(calls) == 1
        assert torch.equal(layer(x), expected) and len(calls) == 1  # not tried again
        explicit = GEGLU(8, 12).eval()
        explicit.implementation = "triton"
        with pytest.raises(RuntimeError, match="kernel image"):
            explicit(x)
