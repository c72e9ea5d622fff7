"""GroupNorm micro-benchmark: PyTorch (as the model ran before) against the Triton kernel, on a GPU.

    python benchmarks/norm_kernels.py                  # the real shapes of a SyncDreamer step, bf16
    python benchmarks/norm_kernels.py --quick          # three shapes, a few seconds
    python benchmarks/norm_kernels.py --sweep          # also other launch plans than plan_launch's
    python benchmarks/norm_kernels.py --step           # + one full SyncDreamer step, PyTorch vs Triton norms
    python benchmarks/norm_kernels.py --json out.json  # the numbers as JSON too

For every shape (the UNet's norms at N = 32 = 16 views x 2 for guidance, in channels-last bf16 with
bf16 parameters, which is how the CUDA default runs them; the depth-attention context, the frustum
net's first block and the VAE decoder's largest map, in their contiguous layouts) and every fused
variant (norm; norm + SiLU / ReLU; the per-(N, C) bias added before it + norm + activation):

* ``torch``: the PyTorch path of :class:`sd3d.models.norms.GroupNorm32` (``implementation="torch"``:
  bias add, ``F.group_norm``, the activation), which returns NCHW for a channels-last input;
* ``torch+NHWC``: the same plus the copy back to channels-last that the next convolution makes;
* ``triton``: the kernel (one call; output already in the input's layout).

Times are CUDA-event medians with the L2 cache flushed before every call (a 256 MiB write), so
each call reads its input from HBM as it would inside a step. GB/s is the kernel's minimal traffic
(input read once, output written once) over its time. ``err``: max |y - exact| / max |exact|
against float64 on the same rounded input. Prints a markdown table; needs CUDA and Triton.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (label, shape, groups, layout, activation, bias terms)
UNET_CHANNELS = ((320, 32), (640, 16), (1280, 8), (1280, 4), (960, 32), (1920, 16), (2560, 8), (640, 32))
VOLUMES = (
    ("depth-attention context", (16, 64, 48, 32, 32), 8, "contiguous", "relu", 0),
    ("frustum net, first block", (16, 64, 48, 32, 32), 8, "contiguous", "silu", 2),
    ("spatial net, first block", (2, 64, 32, 32, 32), 8, "contiguous", "silu", 1),
    ("VAE decoder, last level", (4, 128, 256, 256), 32, "contiguous", "silu", 0),
)


def shapes(quick: bool) -> list[tuple]:
    out = []
    for c, h in UNET_CHANNELS[:2] if quick else UNET_CHANNELS:
        label = f"UNet {c}x{h}x{h}"
        variants = [(None, 0), ("silu", 0), ("silu", 1)] if not quick else [("silu", 1)]
        out += [(label, (32, c, h, h), 32, "channels_last", act, k) for act, k in variants]
    out += [VOLUMES[0]] if quick else list(VOLUMES)
    return out


class Timer:
    """CUDA-event median of single calls, the L2 cache flushed before each (on a CPU, for smoke
    runs in Triton's interpreter: wall-clock medians)."""

    def __init__(self, device, reps: int) -> None:
        import torch

        self.torch = torch
        self.reps = reps
        self.cuda = device.type == "cuda"
        self.flush = torch.empty(256 * 2**20 if self.cuda else 1, dtype=torch.uint8, device=device)

    def __call__(self, fn) -> float:
        torch = self.torch
        fn()  # warm-up: compilation, allocator
        if self.cuda:
            torch.cuda.synchronize()
        times = []
        for _ in range(self.reps):
            self.flush.zero_()
            if not self.cuda:
                t0 = time.perf_counter()
                fn()
                times.append(1000 * (time.perf_counter() - t0))
                continue
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        return statistics.median(times)


def bench_shape(spec: tuple, timer: Timer, sweep: bool, device) -> dict:
    import torch
    import torch.nn.functional as F

    from sd3d.models.kernels import group_norm as gk
    from sd3d.models.norms import GroupNorm32

    label, shape, groups, layout, activation, terms = spec
    gen = torch.Generator(device).manual_seed(0)
    n, c = shape[:2]
    x = torch.randn(shape, generator=gen, device=device).bfloat16()
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    ones = (1,) * (len(shape) - 2)
    biases = tuple(torch.randn(n, c, *ones, generator=gen, device=device).bfloat16() for _ in range(terms))
    norm = GroupNorm32(groups, c).to(device).bfloat16()  # half parameters: the CUDA default
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.2, generator=gen)
        norm.bias.normal_(0.0, 0.2, generator=gen)
    pre = biases or None

    def run(impl: str):
        norm.implementation = impl
        return norm(x, pre_bias=pre, activation=activation)

    def run_restore():
        y = run("torch")
        return y.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else y

    with torch.inference_mode():
        exact = x.double()
        for b in biases:
            exact = exact + b.double()
        exact = F.group_norm(exact, groups, norm.weight.double(), norm.bias.double(), norm.eps)
        exact = {"silu": F.silu, "relu": F.relu, None: lambda t: t}[activation](exact)
        scale = float(exact.abs().max())
        err = {impl: float((run(impl).double() - exact).abs().max()) / scale for impl in ("torch", "triton")}
        del exact
        row = {
            "label": label,
            "shape": list(shape),
            "groups": groups,
            "layout": layout,
            "op": " + ".join((["bias"] * bool(terms)) + ["GN"] + ([activation] if activation else [])),
            "torch_ms": timer(lambda: run("torch")),
            "torch_nhwc_ms": timer(run_restore) if layout == "channels_last" else None,
            "triton_ms": timer(lambda: run("triton")),
            "err_torch": err["torch"],
            "err_triton": err["triton"],
        }
        s = x[0, 0].numel()
        plan = gk.plan_launch(n, c, groups, s, layout != "contiguous", 2, gk.sm_count(device))
        row["plan"] = repr(plan)
        row["gbps"] = 2 * x.numel() * x.element_size() / (row["triton_ms"] * 1e6)
        if sweep and (terms or layout == "contiguous"):  # the fused ResBlock pattern and the volumes
            row["sweep"] = sweep_plans(x, norm, pre, activation, plan, timer)
    norm.implementation = "auto"
    return row


def sweep_plans(x, norm, pre, activation, default, timer: Timer) -> list[tuple[str, float]]:
    """Times of nearby launch plans (one group per block or the heuristic's blocks; no split, the
    heuristic's, twice it; tiles of 2048 / 4096 / 8192 elements with 4 / 8 / 8 warps), to check
    :func:`~sd3d.models.kernels.group_norm.plan_launch`; returns (plan, ms) sorted by time."""
    from sd3d.models.kernels import group_norm as gk

    s = x[0, 0].numel()
    cg = x.shape[1] // norm.num_groups
    candidates = {default}
    for gpb in {1, default.groups_per_block}:
        block_c = gk.next_pow2(gpb * cg)
        for split in {1, default.split, 2 * default.split}:
            for tile, warps in ((2048, 4), (4096, 8), (8192, 8)):
                block_s = max(1, min(tile // block_c, gk.next_pow2(s)))
                candidates.add(gk.Plan(gpb, block_c, block_s, split, warps))
    out = []
    for plan in candidates:
        try:
            ms = timer(
                lambda plan=plan: gk.group_norm(
                    x, norm.num_groups, norm.weight, norm.bias, norm.eps,
                    activation=activation, pre_bias=pre, out_dtype=x.dtype, plan=plan,
                )
            )  # fmt: skip
            out.append((repr(plan), ms))
        except Exception as exc:  # a plan the compiler rejects (too many registers): skip it
            out.append((f"{plan!r} failed: {type(exc).__name__}", float("inf")))
    return sorted(out, key=lambda r: r[1])


def bench_step(reps: int) -> dict:
    """One SyncDreamer denoising step (official size, synthetic weights, bf16, channels-last UNet,
    batch_view_num 16), eager and replayed from a CUDA graph, with PyTorch's and with the Triton
    GroupNorm; the relative difference of the two eps."""
    import torch

    from sd3d.models.configs import official_config
    from sd3d.models.inference import prepare_for_inference
    from sd3d.models.norms import set_norm_implementation
    from sd3d.models.syncdreamer_checkpoint import load_syncdreamer
    from sd3d.models.synthetic import synthetic_state_dict
    from sd3d.sampling.cuda_graph import GraphedEps

    device = torch.device("cuda")
    t0 = time.perf_counter()
    config = official_config()
    model = load_syncdreamer(synthetic_state_dict(config), config, device)
    prepare_for_inference(model, torch.bfloat16)
    build_s = time.perf_counter() - t0
    gen = torch.Generator(device).manual_seed(0)
    image = torch.rand(1, 3, 256, 256, generator=gen, device=device) * 2 - 1
    x = torch.randn(1, 16, 4, 32, 32, generator=gen, device=device)
    out: dict = {"build_s": build_s}
    eps = {}
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        cond = model.condition(image, [30.0], generator=gen)

        def step(x_t, t):
            return model.predict_eps(x_t, t, cond, 2.0, 16).float()

        # auto = the kernel's default rounding (unfused: where PyTorch's code rounds); fused = one rounding
        variants = {"torch": ("torch", "unfused"), "auto": ("auto", "unfused"), "fused": ("auto", "fused")}
        for impl, (kernel, rounding) in variants.items():
            set_norm_implementation(model, kernel, rounding=rounding)
            t = torch.tensor(581, device=device)
            eps[impl] = step(x, t)
            times = []
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                step(x, t)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            graphed = GraphedEps(step, device)
            for _ in range(3):  # eager warm-up, capture, first replay
                graphed(x, 581)
            torch.cuda.synchronize()
            gtimes = []
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                graphed(x, 581)
                end.record()
                end.synchronize()
                gtimes.append(start.elapsed_time(end))
            out[impl] = {"eager_ms": statistics.median(times), "graph_ms": statistics.median(gtimes)}
            graphed.release()
    set_norm_implementation(model, "torch", rounding="unfused")
    out["rel_diff"] = float((eps["auto"] - eps["torch"]).norm() / eps["torch"].norm())
    out["rel_diff_fused"] = float((eps["fused"] - eps["torch"]).norm() / eps["torch"].norm())
    return out


def render(result: dict) -> str:
    env = result["env"]
    lines = [
        f"## GroupNorm: PyTorch vs Triton ({env['device']}, torch {env['torch']}, triton {env['triton']})",
        "",
        "bf16 activations and parameters; ms = CUDA-event median, L2 flushed; GB/s = (read + write once) / "
        "Triton time; err = max |y - exact| / max |exact| vs float64.",
        "",
        "| tensor | shape | layout | op | torch ms | torch+NHWC ms | triton ms | speed-up | triton GB/s "
        "| err torch | err triton |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        base = r["torch_nhwc_ms"] or r["torch_ms"]
        nhwc = f"{r['torch_nhwc_ms']:.3f}" if r["torch_nhwc_ms"] else "-"
        lines.append(
            f"| {r['label']} | {'x'.join(map(str, r['shape']))} | {r['layout']} | {r['op']} | {r['torch_ms']:.3f} "
            f"| {nhwc} | {r['triton_ms']:.3f} | {base / r['triton_ms']:.2f}x | {r['gbps']:.0f} "
            f"| {r['err_torch']:.1e} | {r['err_triton']:.1e} |"
        )
    total_t = sum(r["torch_nhwc_ms"] or r["torch_ms"] for r in result["rows"])
    total_k = sum(r["triton_ms"] for r in result["rows"])
    lines.append(
        f"\nSum over the rows: PyTorch {total_t:.2f} ms, Triton {total_k:.2f} ms ({total_t / total_k:.2f}x)."
    )
    sweeps = [r for r in result["rows"] if r.get("sweep")]
    if sweeps:
        lines += [
            "",
            "| tensor | op | plan_launch's plan | ms | best swept plan | ms |",
            "| --- | --- | --- | ---: | --- | ---: |",
        ]
        for r in sweeps:
            best, ms = r["sweep"][0]
            lines.append(
                f"| {r['label']} | {r['op']} | `{r['plan']}` | {r['triton_ms']:.3f} | `{best}` | {ms:.3f} |"
            )
    if result.get("step"):
        s = result["step"]
        lines += [
            "",
            "### One SyncDreamer step (official size, synthetic weights, bf16, channels-last UNet, 16 views, cfg 2)",
            "",
            "| norms | eager ms | CUDA graph ms |",
            "| --- | ---: | ---: |",
            f'| PyTorch (`implementation="torch"`) | {s["torch"]["eager_ms"]:.2f} | {s["torch"]["graph_ms"]:.2f} |',
            f'| Triton (`"auto"`, rounding "unfused") | {s["auto"]["eager_ms"]:.2f} | {s["auto"]["graph_ms"]:.2f} |',
        ]
        if "fused" in s:
            lines.append(
                f'| Triton (`"auto"`, rounding "fused") | {s["fused"]["eager_ms"]:.2f} | {s["fused"]["graph_ms"]:.2f} |'
            )
        lines += [
            "",
            f"eps relative difference Triton vs PyTorch norms: {s['rel_diff']:.2e}"
            + (f" (fused {s['rel_diff_fused']:.2e})" if "rel_diff_fused" in s else "")
            + f" (model built in {s['build_s']:.0f} s).",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="three shapes, few repetitions")
    parser.add_argument(
        "--sweep", action="store_true", help="also time other launch plans (a few minutes: each compiles)"
    )
    parser.add_argument("--step", action="store_true", help="also one full SyncDreamer step A/B")
    parser.add_argument("--reps", type=int, default=None, help="timed calls per measurement (median)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from sd3d.models import kernels

    if not torch.cuda.is_available():
        print("norm_kernels.py needs a CUDA device (the Triton kernel's compiled path)", file=sys.stderr)
        return 2
    module = kernels.group_norm_module()
    if module is None:
        print(f"Triton is not available: {kernels.unavailable_reason()}", file=sys.stderr)
        return 2
    import triton

    reps = args.reps or (5 if args.quick else 30)
    result = {
        "env": {
            "device": torch.cuda.get_device_name(),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "sms": torch.cuda.get_device_properties(0).multi_processor_count,
        },
        "rows": [],
    }
    timer = Timer(torch.device("cuda"), reps)
    for spec in shapes(args.quick):
        row = bench_shape(spec, timer, args.sweep, torch.device("cuda"))
        result["rows"].append(row)
        print(f"# {json.dumps({k: v for k, v in row.items() if k != 'sweep'})}", flush=True)
    if args.step:
        result["step"] = bench_step(reps=5 if args.quick else 20)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print()
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
