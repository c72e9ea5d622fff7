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
from support.triton_interpreter import run_interpreted

from sd3d.models.unet import GEGLU, set_geglu_implementation

TRITON = importlib.util.find_spec("triton") is not None
CUDA = torch.cuda.is_available()
SCRIPT = Path(__file__).parent / "support" / "triton_geglu_cases.py"


def check(result: dict, dtype: torch.dtype, same_erf: bool) -> None:
    """Within 2 ulps (float32) or 1 ulp (half precision) of the output dtype at the tensor's largest
    value: differences come only from erf, whose last bit differs between libraries and which sits in
    ``1 + erf`` near cancellation for very negative inputs. The interpreter's erf is not the GPU's
    (1.6 % of float16 outputs differ there, all near zero); on CUDA both sides call libdevice's, so
    there a half-precision output must equal PyTorch's but for a rare statistic of rounding."""
    assert result["shape_ok"] and result["contiguous_out"], result
    assert result["max_ulps"] <= (2 if dtype == torch.float32 else 1), result
    if same_erf and dtype != torch.float32:
        assert result["mismatch"] <= 1e-3, result


@pytest.fixture(scope="module")
def interpreted() -> dict:
    if not TRITON:
        pytest.skip("triton is not installed (CPU-only torch, as in CI): the interpreter needs it")
    if CUDA:
        pytest.skip("on a CUDA machine the compiled kernel is tested on these cases instead")
    return run_interpreted(SCRIPT, *CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_kernel_in_the_interpreter(interpreted, name):
    check(interpreted[name], CASES[name][2], same_erf=False)


@pytest.mark.skipif(not (TRITON and CUDA), reason="needs Triton and a CUDA device")
@pytest.mark.parametrize("name", list(CASES))
def test_kernel_on_cuda(name):
    check(measure(name, "cuda"), CASES[name][2], same_erf=True)


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
