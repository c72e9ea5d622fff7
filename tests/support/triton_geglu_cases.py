"""The fused GEGLU kernel (sd3d.models.kernels.geglu) against PyTorch's ``a * F.gelu(g)``.

:func:`measure` compares one case on the tensors' device; run as a script (in Triton's interpreter,
``TRITON_INTERPRET=1``, see support.triton_interpreter) it measures every case on the CPU and prints
one JSON object. A case's numbers: ``mismatch`` (fraction of outputs that differ at all),
``max_ulps`` (the largest difference in units of the output dtype's spacing at that value) and
``rel_l2``.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
import torch.nn.functional as F

# name: (leading shape, F, dtype, padded rows: the projection a slice of a wider tensor)
CASES = {
    "small_fp32": ((3, 7), 5, torch.float32, False),
    "ff_bf16": ((2, 64), 320, torch.bfloat16, False),
    "ff_fp16": ((2, 64), 320, torch.float16, False),
    "odd_bf16": ((5,), 1001, torch.bfloat16, False),
    "padded_bf16": ((4, 9), 96, torch.bfloat16, True),
    "ff_fp32": ((2, 64), 320, torch.float32, False),
}


def case_input(name: str, device: str | torch.device = "cpu") -> torch.Tensor:
    lead, width, dtype, padded = CASES[name]
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    h = (torch.randn(*lead, 2 * width + (8 if padded else 0), generator=gen) * 2).to(dtype).to(device)
    return h[..., : 2 * width] if padded else h


def reference(h: torch.Tensor) -> torch.Tensor:
    a, g = h.chunk(2, dim=-1)
    return a * F.gelu(g)


def spacing(value: float, dtype: torch.dtype) -> float:
    """The distance from ``|value|`` to the next ``dtype`` number."""
    bits = {torch.float32: 24, torch.bfloat16: 8, torch.float16: 11}[dtype]
    return float(np.exp2(np.floor(np.log2(max(abs(value), 2.0**-126))) - (bits - 1)))


def compare(actual: torch.Tensor, expected: torch.Tensor) -> dict:
    """``max_ulps`` in units of the output dtype's spacing at the tensor's largest value: GELU of a
    very negative input is ``1 + erf`` near cancellation, so a one-ulp difference in erf (another
    library's) is many ulps of such a tiny output but not of the tensor."""
    a = actual.float().cpu().numpy().astype(np.float64)
    e = expected.float().cpu().numpy().astype(np.float64)
    diff = np.abs(a - e)
    return {
        "mismatch": float((diff > 0).mean()),
        "max_ulps": float(diff.max() / spacing(float(np.abs(e).max()), expected.dtype)),
        "rel_l2": float(np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-30)),
        "contiguous_out": bool(actual.is_contiguous()),
        "shape_ok": tuple(actual.shape) == tuple(expected.shape),
    }


def measure(name: str, device: str | torch.device = "cpu") -> dict:
    from sd3d.models.kernels import geglu

    h = case_input(name, device)
    return compare(geglu.geglu(h), reference(h))


def main(names: list[str]) -> int:
    print(json.dumps({name: measure(name) for name in names or list(CASES)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
