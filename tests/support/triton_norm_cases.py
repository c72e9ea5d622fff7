"""Measurements behind tests/test_triton_norms.py, runnable in-process (CUDA) or as a script (CPU,
Triton's interpreter, which must be switched on before Triton is imported: hence a subprocess).

    TRITON_INTERPRET=1 python tests/support/triton_norm_cases.py CASE [CASE ...] [--modules]

prints one JSON object: ``{case name: measure(case), ..., "modules": module_parity()}``.

Every error is measured against float64 on the same rounded inputs: the kernel's and PyTorch's own
path at the case's dtype (``x + bias`` rounded to that dtype, ``F.group_norm``, then the activation
rounded again), so a test can demand that the kernel's ``rounding="fused"`` be no worse than PyTorch.
Its default, ``rounding="unfused"``, rounds where PyTorch's CUDA path does, so it is compared with that
path itself: how many elements differ, and by how many units in the last place. On CUDA that path is
``F.group_norm``; elsewhere (the interpreter) it is :func:`cuda_group_norm`, which reproduces the
CUDA kernel's roundings (PyTorch's CPU GroupNorm rounds differently), and on CUDA the two are
compared too, so the emulation the interpreter trusts is checked against the real thing.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Significand bits (with the implicit one): rounding to nearest is off by at most 2^-p relative.
PRECISION_BITS = {"fp32": 24, "bf16": 8, "fp16": 11}
EPS = 1e-5


@dataclass(frozen=True)
class Case:
    """One GroupNorm call: ``shape`` (N, C, *spatial) in ``layout`` (``contiguous``,
    ``channels_last``, ``channels_last_3d``, ``batch_slice``: rows 1.. of a channels-last batch),
    ``bias_terms`` per-(N, C) terms added before the norm, ``offset`` added to the input (a large
    common offset tests the statistics), ``plan`` a forced launch (Plan fields) or None."""

    name: str
    shape: tuple[int, ...]
    groups: int
    dtype: str = "bf16"
    layout: str = "channels_last"
    activation: str | None = None
    bias_terms: int = 0
    offset: float = 0.0
    plan: tuple[int, int, int, int, int] | None = None


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "channels_last_3d":
        return x.contiguous(memory_format=torch.channels_last_3d)
    if layout == "batch_slice":
        big = torch.cat([x[:1], x], dim=0).contiguous(memory_format=torch.channels_last)
        return big[1:]
    return x.contiguous()


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation == "silu":
        return F.silu(y)
    if activation == "relu":
        return F.relu(y)
    return y


def cuda_group_norm(
    x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """PyTorch's CUDA GroupNorm, its roundings reproduced on any device (N-d inputs, more than one
    position per channel): mean and 1/std in float32, rounded to the input's dtype unless a
    parameter is of another dtype (native_group_norm returns them in that dtype, and the CUDA
    affine reads them back from it); then a = rstd * weight (float32), b = fma(-a, mean, bias) and
    y = fma(a, x, b), rounded once to the input's dtype; without parameters y = (x - mean) * rstd.
    An fma is emulated in float64 (the product of two float32 is exact there)."""
    n, c = x.shape[:2]
    flat = x.double().reshape(n, groups, -1)
    mean = flat.mean(-1).float()
    rstd = torch.rsqrt(flat.var(-1, unbiased=False).float() + eps)
    mixed = any(p is not None and p.dtype != x.dtype for p in (weight, bias))
    if x.dtype != torch.float32 and not mixed:
        mean, rstd = mean.to(x.dtype).float(), rstd.to(x.dtype).float()
    per_channel = (n, c) + (1,) * (x.dim() - 2)
    mean = mean.repeat_interleave(c // groups, dim=1).reshape(per_channel)
    rstd = rstd.repeat_interleave(c // groups, dim=1).reshape(per_channel)
    if weight is None and bias is None:
        return ((x.float() - mean) * rstd).to(x.dtype)
    a = rstd * (weight.float().reshape(1, c, *per_channel[2:]) if weight is not None else 1.0)
    beta = bias.double().reshape(1, c, *per_channel[2:]) if bias is not None else 0.0
    b = (-a.double() * mean.double() + beta).float()
    return (x.double() * a.double() + b.double()).float().to(x.dtype)


def inputs(case: Case, device: torch.device) -> dict:
    """The case's rounded inputs on ``device`` (seeded: the same numbers on every machine)."""
    gen = torch.Generator().manual_seed(sum(map(ord, case.name)))
    dtype = DTYPES[case.dtype]
    n, c = case.shape[:2]
    x = torch.randn(case.shape, generator=gen) * 1.5 + case.offset
    x = _layout(x.to(dtype).to(device), case.layout)
    param = dtype  # a half-precision norm has half-precision parameters (the CUDA default)
    weight = (torch.randn(c, generator=gen) * 0.5 + 1.0).to(param).to(device)
    bias = (torch.randn(c, generator=gen) * 0.5).to(param).to(device)
    ones = (1,) * (len(case.shape) - 2)
    terms = [(torch.randn(n, c, *ones, generator=gen)).to(dtype).to(device) for _ in range(case.bias_terms)]
    return {"x": x, "weight": weight, "bias": bias, "terms": terms}


def measure(case: Case, device: torch.device) -> dict:
    """Errors of the kernel and of PyTorch's path against float64, and the output's dtype/layout.

    ``rounding_ratio``: the largest elementwise error over its bound (tests/test_triton_norms.py);
    ``rounding``: ``nearest``, or ``truncate`` for bf16 in Triton's interpreter, whose float32 ->
    bf16 cast drops the low bits (the compiled kernel rounds to nearest)."""
    from sd3d.models.kernels.group_norm import INTERPRETED, Plan, group_norm, unsupported_reason

    data = inputs(case, device)
    x, weight, bias, terms = data["x"], data["weight"], data["bias"], data["terms"]
    dtype = DTYPES[case.dtype]
    exact_in = x.double()
    for t in terms:
        exact_in = exact_in + t.double()
    exact = _activate(
        F.group_norm(exact_in, case.groups, weight.double(), bias.double(), EPS), case.activation
    )

    pre_bias = None if not terms else (terms[0] if len(terms) == 1 else tuple(terms))
    plan = Plan(*case.plan) if case.plan else None
    y, unfused = (
        group_norm(
            x,
            case.groups,
            weight,
            bias,
            EPS,
            activation=case.activation,
            pre_bias=pre_bias,
            out_dtype=dtype,
            plan=plan,
            rounding=rounding,
        )
        if unsupported_reason(x, case.groups, dtype, rounding) is None
        else None
        for rounding in ("fused", "unfused")
    )
    ref_in = x
    for t in terms:
        ref_in = ref_in + t
    reference = _activate(F.group_norm(ref_in, case.groups, weight, bias, EPS), case.activation)
    # the unfused kernel's target: PyTorch's CUDA path (emulated off CUDA), which rounds the norm's
    # statistics; its CPU path, ``reference``, does not. One position per channel is left to PyTorch.
    emulated = _activate(cuda_group_norm(ref_in, case.groups, weight, bias, EPS), case.activation)
    target = reference if x.is_cuda else emulated

    scale = float(exact.abs().max())
    norm = float(exact.norm())
    err = (y.double() - exact).abs()
    ref_err = (reference.double() - exact).abs()
    # Elementwise: at most one rounding to the output dtype (half an ulp) plus float32 round-off
    # of the statistics and the affine map, a few float32 ulps of the output's scale.
    truncating = INTERPRETED and case.dtype == "bf16"
    half_ulp = 2.0 ** -(PRECISION_BITS[case.dtype] - truncating)  # truncation: a whole ulp
    bound = half_ulp * exact.abs() + 2.0**-17 * scale
    # the unfused kernel against PyTorch's path: units in the last place of the half dtype (its
    # spacing at the reference value); float32 has no roundings to reproduce (a float32 sum is what
    # both add), so there its error against float64, as the fused kernel's
    measured = {
        "max_err": float(err.max()) / scale,
        "l2_err": float(err.norm()) / norm,
        "torch_max_err": float(ref_err.max()) / scale,
        "torch_l2_err": float(ref_err.norm()) / norm,
        "rounding_ratio": float((err / bound).max()),
        "rounding": "truncate" if truncating else "nearest",
        "dtype_ok": y.dtype == dtype,
        "layout_ok": y.stride() == x.stride(),
        "finite": bool(torch.isfinite(y).all()),
    }
    if unfused is None:  # left to PyTorch (unsupported_reason says why)
        return {**measured, "unfused_skipped": unsupported_reason(x, case.groups, dtype, "unfused")}

    def ulps(values: torch.Tensor) -> torch.Tensor:
        """The spacing of the half dtype's values at ``values`` (one unit in the last place)."""
        tiny = 2.0**-14 if dtype == torch.float16 else 2.0**-126
        spacing = torch.exp2(torch.floor(torch.log2(values.double().abs().clamp_min(tiny))))
        return spacing * 2.0 ** -(PRECISION_BITS[case.dtype] - 1)

    def compare(prefix: str, got: torch.Tensor, want: torch.Tensor) -> dict:
        """How many elements differ; the largest difference in ulps of each element and in ulps of
        the tensor's largest value (a statistic that rounds the other way moves a whole group by
        about one ulp of its values, which near zero is many ulps of the element)."""
        diff = (got.double() - want.double()).abs()
        return {
            f"{prefix}_mismatch": float((diff > 0).double().mean()),
            f"{prefix}_max_ulps": float((diff / ulps(want)).max()),
            f"{prefix}_scale_ulps": float(diff.max() / ulps(want.abs().max())),
        }

    if dtype == torch.float32:
        diff = (unfused.double() - target.double()).abs()
        compared = {
            "unfused_l2_err": float((unfused.double() - exact).norm()) / norm,
            "unfused_mismatch": float((diff > 0).double().mean()),
        }
    else:
        compared = compare("unfused", unfused, target)
        if x.is_cuda:  # is the interpreter's target PyTorch's CUDA path?
            compared.update(compare("emulation", emulated, reference))
    return {
        **compared,
        "unfused_dtype_ok": unfused.dtype == dtype and unfused.stride() == x.stride(),
        **measured,
    }


def module_parity(device: torch.device, implementation: str = "triton") -> dict:
    """Small modules of every kind that uses GroupNorm (a tiny UNet, a depth transformer with
    zero-context rows, a 3D time block with two bias terms, a VAE ResnetBlock), float32, run with
    ``implementation`` and with ``"torch"``: relative L2 difference per module and the number of
    kernel calls (which must equal the number of GroupNorm calls)."""
    from sd3d.models import kernels
    from sd3d.models.configs import tiny_config
    from sd3d.models.depth_attention import DepthTransformer
    from sd3d.models.norms import GroupNorm, set_norm_implementation
    from sd3d.models.unet import UNetModel
    from sd3d.models.vae import ResnetBlock
    from sd3d.models.volume import SpatialTimeBlock

    module = kernels.group_norm_module()
    calls = {"kernel": 0, "norm": 0}
    kernel = module.group_norm

    def counting(*args, **kwargs):
        calls["kernel"] += 1
        return kernel(*args, **kwargs)

    torch.manual_seed(0)
    cfg = tiny_config()
    unet = UNetModel(replace(cfg.unet, depth_attention_dims=None))
    depth = DepthTransformer(dim=16, n_heads=2, d_head=4, context_dim=8, norm_groups=4)
    block = SpatialTimeBlock(cfg.volume, 8, 16, 1, view=True)
    resnet = ResnetBlock(cfg.vae, 8, 16)
    for m in (unet, depth, block, resnet):
        m.to(device).eval()
        for p in m.parameters():  # non-trivial norms and biases
            torch.nn.init.normal_(p, std=0.3)
    gen = torch.Generator().manual_seed(1)

    def rand(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    runs = {
        "unet": (
            unet,
            lambda m: m(
                rand(2, 8, 16, 16).contiguous(memory_format=torch.channels_last),
                torch.tensor([10, 500], device=device),
                rand(2, 1, 32),
            ),
        ),  # fmt: skip
        "depth_transformer": (depth, lambda m: m(rand(3, 16, 6, 6), rand(2, 8, 5, 6, 6))),
        "time_block_3d": (block, lambda m: m(rand(2, 8, 4, 5, 6), rand(2, 16, 1, 1, 1), rand(2, 4, 1, 1, 1))),
        "vae_resnet": (resnet, lambda m: m(rand(2, 8, 12, 12))),
    }
    out: dict = {}
    module.group_norm = counting
    try:
        for name, (m, call) in runs.items():
            hooks = [
                g.register_forward_hook(lambda *_: calls.__setitem__("norm", calls["norm"] + 1))
                for g in m.modules()
                if isinstance(g, GroupNorm)
            ]
            state = torch.get_rng_state()
            with torch.no_grad():
                set_norm_implementation(m, "torch")
                gen.manual_seed(2)
                ref = call(m)
                calls.update(kernel=0, norm=0)
                set_norm_implementation(m, implementation)
                gen.manual_seed(2)
                got = call(m)
            torch.set_rng_state(state)
            for h in hooks:
                h.remove()
            out[name] = {
                "rel": float((got.double() - ref.double()).norm() / ref.double().norm()),
                "kernel_calls": calls["kernel"],
                "norm_calls": calls["norm"],
            }
    finally:
        module.group_norm = kernel
    return out


# Small enough for the interpreter (a few seconds in all), covering both kernels (the forced
# ``plan`` splits the spatial axis), every layout, dtype and fusion, group sizes that are not powers
# of two, a partial last block of groups, spatial sizes that are not a multiple of the tile.
INTERPRETER_CASES = (
    Case("cg10_cl_fp32_silu_bias", (2, 40, 6, 5), 4, "fp32", activation="silu", bias_terms=1),
    Case("cg10_nchw_fp32", (2, 40, 6, 5), 4, "fp32", layout="contiguous"),
    Case("c320_cl_bf16_silu_bias", (2, 320, 4, 4), 32, activation="silu", bias_terms=1),
    Case("cg6_cl_bf16_relu_split", (3, 48, 7, 9), 8, activation="relu", plan=(2, 16, 8, 3, 4)),
    Case(
        "cg6_nchw_bf16_2bias_split",
        (3, 48, 7, 9),
        8,
        layout="contiguous",
        activation="silu",
        bias_terms=2,
        plan=(1, 8, 16, 2, 4),
    ),  # fmt: skip
    Case("cl3d_fp16_silu", (2, 16, 3, 4, 5), 4, "fp16", layout="channels_last_3d", activation="silu"),
    Case("ncdhw_fp32_split", (2, 16, 3, 4, 5), 4, "fp32", layout="contiguous", plan=(1, 4, 4, 5, 4)),
    Case("offset100_fp32", (2, 64, 5, 5), 8, "fp32", offset=100.0),
    Case("batch_slice_bf16_bias", (2, 24, 5, 3), 4, layout="batch_slice", bias_terms=1),
    Case("spatial1_fp16", (3, 8, 1, 1), 2, "fp16", layout="contiguous", activation="silu"),
)

# The real shapes of a SyncDreamer step (N = 16 views x 2 for classifier-free guidance; the UNet's
# output blocks normalise concatenations: 960, 1920, 2560 channels), the depth transformer's and 3D
# nets' volumes, the VAE decoder's largest map, plus odd ones. CUDA only.
_UNET = [(320, 32), (640, 16), (1280, 8), (1280, 4), (960, 32), (1920, 16), (2560, 8), (640, 32)]
CUDA_CASES = tuple(
    [
        Case(f"unet_c{c}_{h}x{h}_{dt}_{lay}_{act or 'none'}_{k}bias", (32, c, h, h), 32, dt, lay, act, k)
        for c, h in _UNET
        for dt, lay, act, k in (
            ("bf16", "channels_last", "silu", 1),
            ("bf16", "channels_last", None, 0),
            ("fp32", "channels_last", "silu", 0),
            ("fp16", "contiguous", "silu", 1),
            ("bf16", "contiguous", None, 0),
        )
    ]
    + [
        Case(
            "depth_ctx_16x64x48x32x32_relu", (16, 64, 48, 32, 32), 8, layout="contiguous", activation="relu"
        ),
        Case("depth_proj_in_16x128x32x32", (16, 128, 32, 32), 8, layout="batch_slice", activation="silu"),
        Case(
            "frustum_16x128x24x16x16_2bias",
            (16, 128, 24, 16, 16),
            8,
            layout="contiguous",
            activation="silu",
            bias_terms=2,
        ),  # fmt: skip
        Case(
            "spatial_2x64x32x32x32_cl3d",
            (2, 64, 32, 32, 32),
            8,
            layout="channels_last_3d",
            activation="silu",
            bias_terms=1,
        ),  # fmt: skip
        Case("vae_4x128x256x256", (4, 128, 256, 256), 32, layout="contiguous", activation="silu"),
        Case("vae_4x512x32x32_cl_fp32", (4, 512, 32, 32), 32, "fp32"),
        Case("odd_5x30x13x11", (5, 30, 13, 11), 3, activation="silu", bias_terms=1),
        Case("odd_3x48x7x9_nchw", (3, 48, 7, 9), 8, "fp16", layout="contiguous"),
        Case("odd_2x64x3x5x7", (2, 64, 3, 5, 7), 8, "fp32", layout="contiguous", activation="relu"),
        Case("offset100_32x320x32x32_fp32", (32, 320, 32, 32), 32, "fp32", offset=100.0),
        Case(
            "forced_split_32x320x32x32",
            (32, 320, 32, 32),
            32,
            activation="silu",
            bias_terms=1,
            plan=(12, 128, 32, 4, 4),
        ),  # fmt: skip
        Case("forced_single_gpb1", (32, 640, 16, 16), 32, activation="silu", plan=(1, 32, 64, 1, 4)),
    ]
)

CASES = {case.name: case for case in INTERPRETER_CASES + CUDA_CASES}


def main(argv: list[str]) -> int:
    device = torch.device("cpu")
    result: dict = {name: measure(CASES[name], device) for name in argv if name != "--modules"}
    if "--modules" in argv:
        result["modules"] = module_parity(device)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main(sys.argv[1:]))
