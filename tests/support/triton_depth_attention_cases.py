"""The depth-attention kernel (sd3d.models.kernels.depth_attention) against float64 and against the
PyTorch path it replaces (the middle of ``DepthAttention.forward_folded``).

:func:`measure` runs one case on the tensors' device; run as a script (in Triton's interpreter,
``TRITON_INTERPRET=1``, see support.triton_interpreter) it measures every case on the CPU and prints
one JSON object. A case's numbers: ``kernel_rel_l2`` and ``torch_rel_l2``, each side's relative L2
error against the float64 computation from the same (rounded) inputs, ``kernel_max_rel`` (largest
error over the output's largest magnitude), and the layout checks.
"""

from __future__ import annotations

import json
import sys

import torch

# name: (b, P, heads, C, D, dtype, context layout: "native" (b, C, D, P) contiguous, "strided" a slice
# of a wider tensor, "float32" a float32 context with half-precision queries (autocast's mix)
CASES = {
    "tiny_fp32": (2, 9, 4, 8, 8, torch.float32, "native"),
    "level32_bf16": (2, 64, 4, 64, 48, torch.bfloat16, "native"),
    "level16_fp16": (2, 33, 4, 128, 48, torch.float16, "native"),
    "middle_bf16": (2, 16, 4, 512, 48, torch.bfloat16, "native"),
    "strided_bf16": (3, 20, 4, 16, 12, torch.bfloat16, "strided"),
    "mixed_context": (2, 24, 4, 32, 10, torch.bfloat16, "float32"),
    "peaked_fp32": (1, 17, 2, 16, 40, torch.float32, "native"),
}


def case_inputs(name: str, device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    b, pixels, heads, channels, depth, dtype, layout = CASES[name]
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    # logits of a few units, as the folded queries (scale included) give; "peaked" ones far larger,
    # so that the running maximum changes along the depth samples and must rescale
    spread = 3.0 if name.startswith("peaked") else 0.35
    q = (torch.randn(b, pixels, heads, channels, generator=gen) * spread).to(dtype)
    context_dtype = torch.float32 if layout == "float32" else dtype
    if layout == "strided":
        wide = torch.relu(torch.randn(b, channels + 3, depth, pixels + 5, generator=gen)).to(context_dtype)
        context = wide[:, 1 : channels + 1, :, 2 : pixels + 2]
    else:
        context = torch.relu(torch.randn(b, channels, depth, pixels, generator=gen)).to(context_dtype)
    return q.to(device), context.to(device)


def exact(q: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """The middle of the attention in float64 from the inputs as given."""
    ctx = context.double().permute(0, 3, 2, 1)  # (b, P, D, C)
    logits = torch.matmul(q.double(), ctx.transpose(-1, -2))  # (b, P, heads, D)
    return torch.matmul(torch.softmax(logits, dim=-1), ctx)


def pytorch_path(q: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """What ``forward_folded`` computes without the kernel (its roundings: the context and the logits
    in the compute dtype, the softmax in at least float32, the weights rounded back)."""
    dtype = q.dtype
    ctx = context.permute(0, 3, 2, 1).to(dtype, memory_format=torch.contiguous_format)
    logits = torch.matmul(q, ctx.transpose(-1, -2))
    attn = torch.softmax(logits.float() if dtype != torch.float64 else logits, dim=-1).to(dtype)
    return torch.matmul(attn, ctx)


def _errors(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    diff = actual.double() - expected
    rel_l2 = float(diff.norm() / expected.norm().clamp_min(1e-300))
    return rel_l2, float(diff.abs().max() / expected.abs().max().clamp_min(1e-300))


def measure(name: str, device: str | torch.device = "cpu") -> dict:
    from sd3d.models.kernels import depth_attention as K

    q, context = case_inputs(name, device)
    out = K.depth_attention(q, context)
    expected = exact(q, context)
    kernel_l2, kernel_max = _errors(out, expected)
    torch_l2, torch_max = _errors(pytorch_path(q, context), expected)
    return {
        "kernel_rel_l2": kernel_l2,
        "kernel_max_rel": kernel_max,
        "torch_rel_l2": torch_l2,
        "torch_max_rel": torch_max,
        "finite": bool(torch.isfinite(out).all()),
        "dtype_ok": out.dtype == q.dtype,
        "contiguous_out": bool(out.is_contiguous()),
        "shape_ok": tuple(out.shape) == tuple(q.shape),
    }


def measure_layer(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    """A whole folded ``DepthAttention`` with the kernel against itself without it (``kernel="torch"``),
    both against the float64 layer: relative L2 errors, and whether the kernel ran."""
    from sd3d.models.depth_attention import DepthAttention

    torch.manual_seed(5)
    layer = DepthAttention(32, 16, 4, 8).to(device).eval()
    x = torch.randn(2, 32, 5, 7, device=device)
    context = torch.relu(torch.randn(2, 16, 12, 5, 7, device=device))
    with torch.no_grad():
        exact_out = layer.double()(x.double(), context.double())
        layer.float()
        autocast = torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype != torch.float32)
        with autocast:
            plain = layer(x, context)
            layer.kernel = "triton"
            fused = layer(x, context)
            ran = layer.kernel_unavailable(*_folded_inputs(layer, x, context)) is None

    def err(t: torch.Tensor) -> float:
        return float((t.double() - exact_out).norm() / exact_out.norm())

    return {"torch_rel_l2": err(plain), "kernel_rel_l2": err(fused), "kernel_ran": ran}


def _folded_inputs(layer, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-ins of the shapes and dtypes the folded form hands the kernel (for its refusal check)."""
    b, _, h, w = x.shape
    dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
    q = torch.empty(b, h * w, layer.heads, context.shape[1], dtype=dtype, device=x.device)
    return q, context.reshape(b, context.shape[1], context.shape[2], h * w)


def measure_model_step() -> dict:
    """One guided denoising step of the tiny SyncDreamer (synthetic weights, float32) with the depth
    attention's kernel and the fused GEGLU (``"triton"``: the interpreter on the CPU) against the
    same step with PyTorch's code: the kernels in the real model's shapes, strides and batch split
    (the unconditional rows skip the depth attention), and how often each ran."""
    from sd3d.models import kernels
    from sd3d.models.configs import tiny_config
    from sd3d.models.depth_attention import set_depth_attention_kernel
    from sd3d.models.syncdreamer_checkpoint import load_syncdreamer
    from sd3d.models.synthetic import synthetic_state_dict
    from sd3d.models.unet import set_geglu_implementation

    config = tiny_config()
    model = load_syncdreamer(synthetic_state_dict(config), config, "cpu")
    calls = {"depth_attention": 0, "geglu": 0}
    for name in calls:
        module = getattr(kernels, f"{name}_module")()
        original = getattr(module, name)

        def counted(*args, _name=name, _original=original):
            calls[_name] += 1
            return _original(*args)

        setattr(module, name, counted)
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, config.image_size, config.image_size, generator=gen) * 2 - 1
    x = torch.randn(
        1, config.view_num, config.latent_channels, config.latent_size, config.latent_size, generator=gen
    )
    with torch.no_grad():
        cond = model.condition(image, [30.0], generator=gen)
        plain = model.predict_eps(x, torch.tensor(981), cond, 2.0, 8)
        set_depth_attention_kernel(model, "triton")
        set_geglu_implementation(model, "triton")
        fused = model.predict_eps(x, torch.tensor(981), cond, 2.0, 8)
    rel = float((fused - plain).norm() / plain.norm())
    return {"rel": rel, "calls": calls, "finite": bool(torch.isfinite(fused).all())}


def main(names: list[str]) -> int:
    out = {name: measure(name) for name in names or list(CASES)}
    out["layer"] = measure_layer()
    out["model_step"] = measure_model_step()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
