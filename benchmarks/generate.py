"""SyncDreamer generation benchmark: one table from the fp32 baseline to the fast default.

    python benchmarks/generate.py --json out.json             # CUDA: everything below (< 8 min on an H100)
    python benchmarks/generate.py --render out.json           # print the table of a saved run again
    python benchmarks/generate.py --device cpu --config tiny --steps 2 --skip-parity   # smoke test

The official-size model is built once with the synthetic weights of docs/reference/syncdreamer.md §7.2 (no checkpoint file
needed), in one process. Every row is a full generation -- conditioning, 1 sample x 16 views x 50
DDIM steps at cfg 2 (``batch_view_num`` 16), decoding -- timed from the input image to the uint8
views with the device synchronised (median of ``--repeats`` runs after a first call, which is
reported on its own: it includes graph capture, cuDNN autotuning or compilation). Columns:

* peak: ``torch.cuda.max_memory_allocated`` over the timed runs (weights included);
* dev: relative L2 distance of the final latents from the fp32 baseline's (same seed, same noise);
  PSNR: of the uint8 views against the baseline's;
* floor: the generation's matrix FLOPs (:mod:`sd3d.models.flops`, counted on the meta device) over
  790 TFLOP/s, the dense bf16 rate of an H100; x floor = median time / floor.

Rows, cumulative unless marked (side): fp32 with TF32 off and the reference depth attention (the
code before the fast paths); + re-associated depth attention (exact); (side) TF32; + bf16
autocast with fp32 weights (the previous bf16 path); + bf16 weights; + CUDA graph of the step;
+ channels-last UNet; + half-precision norms; + the Triton GroupNorm with the bias and SiLU fused
(``norm_kernel="auto"``, the default since session 14: PyTorch's CUDA roundings, its deviation,
``norm_deviation.py``; the rows above use PyTorch's norms); + the folded depth attention (the
default since session 15; the rows above use the re-associated "fast" form); + its middle as one
Triton kernel (``depth_kernel="auto"``); + the fused GEGLU (``geglu_kernel="auto"``; both the
default since session 16); + convolution biases folded into the next norm or a 1x1 projection's
matrix product (``fold_conv_biases``, CUDA only, session 17); (side) conditioning encoders offloaded;
(side) --samples 4; (side) DDIM eta 0 and the DPM-Solver++ / UniPC 20-step samplers (dev against
DDIM eta 0, 50 steps); then optional speed-ups, kept only if they pay: channels-last 3D nets,
torch.compile (cold, then again with warm on-disk caches; skipped when the time budget is short).
(cuDNN autotuning was measured too: no gain, 2.535 vs 2.536 s.) Since session 17 every row skips
the unread norm2 of the one-token cross-attention and keeps the depth transformers' zero-context
offset (both exact; ``--quick`` measures them apart, with stand-ins for the code before). Then where the default's time
goes (part timings, kernel profile) and the CUDA parity check against the golden fixture in fp32
with TF32 off (norms ``auto``: the Triton kernel on CUDA, PyTorch's elsewhere).

Results are written to ``--json`` after every row, so a run cut short still leaves its numbers
(print them with ``--render``). Never asks for input.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GIB = 2**30


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
def _input(shared: Path | None):
    """The fixture's input image (alarm, crop 200) when available, else a synthetic disc."""
    import numpy as np

    from sd3d.preprocess import PreparedInput

    npz = shared / "reference" / "syncdreamer-golden-synthetic.npz" if shared else None
    if npz is not None and npz.is_file():
        with np.load(npz) as data:
            rgb = data["input_image_alarm_crop200"].astype(np.float32)
    else:
        yy, xx = np.mgrid[:256, :256]
        rgb = np.ones((256, 256, 3), np.float32)
        rgb[(yy - 128) ** 2 + (xx - 128) ** 2 < 90**2] = (0.6, -0.2, -0.7)
    u8 = np.clip((rgb + 1) * 127.5, 0, 255).astype(np.uint8)
    rgba = np.concatenate([u8, np.full((256, 256, 1), 255, np.uint8)], axis=-1)
    return PreparedInput(rgba=rgba, model_rgb=rgb, crop_box=(0, 0, 256, 256), background="alpha", source=None)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _tf32(on: bool | None) -> None:
    """True/False: both matmul and cuDNN TF32; None: PyTorch's defaults (matmul off, cuDNN on)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = bool(on)
    torch.backends.cudnn.allow_tf32 = True if on is None else bool(on)


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def describe_run(args, device, config):
    """The run's environment record (device, versions, FLOP counts) and a cached FLOP counter
    ``flops(samples, steps)``; prints the device."""
    import torch

    from sd3d.models.flops import count_generation_flops

    cuda = device.type == "cuda"
    env = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(device) if cuda else platform.processor() or "cpu",
        "device_type": device.type,
        "python": platform.python_version(),
        "config": args.config,
        "steps": args.steps,
    }
    print(f"# device: {env['device']} (torch {env['torch']})", flush=True)
    flop_cache: dict = {}

    def flops(samples: int, steps: int):
        if (samples, steps) not in flop_cache:
            flop_cache[samples, steps] = count_generation_flops(config, samples, steps)
        return flop_cache[samples, steps]

    f = flops(1, args.steps)
    env["flops"] = {
        "step": f.step,
        "step_unet": f.step_unet,
        "step_depth_attention": f.step_depth_attention,
        "step_volume": f.step_volume,
        "conditioning": f.conditioning,
        "decode": f.decode,
        "total": f.total,
        "floor_s": f.floor_seconds(),
    }
    return env, flops


class Bench:
    """Runs rows, keeps the reference outputs, writes the JSON after every row."""

    def __init__(self, args, model, prepared, device, env, flops) -> None:
        self.args, self.model, self.prepared, self.device = args, model, prepared, device
        self.env, self.flops = env, flops
        self.rows: list[dict] = []
        self.refs: dict[str, object] = {}
        self.started = time.perf_counter()
        self.result: dict = {"env": env, "rows": self.rows, "parity": [], "notes": []}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def save(self) -> None:
        if self.args.json:
            tmp = Path(str(self.args.json) + ".tmp")
            tmp.write_text(json.dumps(self.result, indent=1, default=str))
            tmp.replace(self.args.json)

    def note(self, text: str) -> None:
        print(f"# {text}", flush=True)
        self.result["notes"].append(text)
        self.save()

    def record_breakdown(self) -> None:
        """Where the time of the model's current configuration goes (:func:`_breakdown`)."""
        try:
            self.result["breakdown"] = _breakdown(self.model, self.prepared, self.device)
            self.save()
        except Exception as exc:
            traceback.print_exc()
            self.note(f"time breakdown failed: {type(exc).__name__}: {exc}")

    def record_parity(self, fp32_model) -> None:
        """The golden-fixture parity check (:func:`_parity`) when ``--shared`` holds the fixture;
        ``fp32_model()`` returns the float32 model to check (only called when it runs)."""
        shared = self.args.shared
        if not (shared / "reference" / "syncdreamer-golden-synthetic.npz").is_file():
            self.note(f"parity skipped: no fixture under {shared}")
            return
        import torch

        t0 = time.perf_counter()
        try:
            model = fp32_model()
            with torch.no_grad():
                self.result["parity"] = _parity(model, shared)
            self.note(f"parity check (fp32, TF32 off) took {time.perf_counter() - t0:.1f} s")
        except Exception as exc:
            traceback.print_exc()
            self.note(f"parity check failed to run: {type(exc).__name__}: {exc}")

    def run(
        self,
        name: str,
        *,
        dtype: str,
        cuda_graph: bool,
        repeats: int,
        samples: int = 1,
        steps: int | None = None,
        sampler: str = "ddim",
        eta: float = 1.0,
        ref: str | None = "fp32",
        keep_ref: str | None = None,
        side: bool = False,
    ) -> dict:
        import torch

        from sd3d.pipelines.syncdreamer import GenerationSettings, sample_views

        steps = self.args.steps if steps is None else steps
        settings = GenerationSettings(
            steps=steps,
            samples=samples,
            batch_view_num=self.args.batch_view_num,
            sampler=sampler,
            eta=eta,
            seed=self.args.seed,
        )
        row: dict = {"name": name, "side": side, "samples": samples, "steps": steps, "sampler": sampler}
        cuda = self.device.type == "cuda"
        try:
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(self.device)
            _sync(self.device)
            t0 = time.perf_counter()
            first = sample_views(self.model, self.prepared, settings, dtype, cuda_graph=cuda_graph)
            _sync(self.device)
            row["first_s"] = time.perf_counter() - t0
            peak_first = torch.cuda.max_memory_allocated(self.device) if cuda else 0
            if cuda:
                torch.cuda.reset_peak_memory_stats(self.device)
            times = []
            for _ in range(repeats):
                _sync(self.device)
                t0 = time.perf_counter()
                sample_views(self.model, self.prepared, settings, dtype, cuda_graph=cuda_graph)
                _sync(self.device)
                times.append(time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated(self.device) if cuda and repeats else peak_first
            row["times_s"] = times
            row["median_s"] = statistics.median(times) if times else row["first_s"]
            row["peak_gib"] = peak / GIB
            row["peak_first_gib"] = peak_first / GIB
            row["dtype"] = first.record["settings"]["dtype"]
            row["batch_view_num"] = first.record["settings"]["batch_view_num"]
            row["cuda_graph"] = first.record["cuda_graph"]
            if ref is not None and ref in self.refs and samples == 1:
                ref_latents, ref_views = self.refs[ref]
                row["dev"] = _rel(first.latents, ref_latents)
                row["psnr"] = _psnr(first.views_u8, ref_views)
                row["dev_vs"] = ref
            if keep_ref:
                self.refs[keep_ref] = (first.latents.detach().clone(), first.views_u8.copy())
            work = self.flops(samples, steps)
            row["floor_s"] = work.floor_seconds()
            row["x_floor"] = row["median_s"] / row["floor_s"]
            del first
        except Exception as exc:  # one failing row must not lose the others
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            traceback.print_exc()
            if cuda:
                torch.cuda.synchronize(self.device)
                torch.cuda.empty_cache()
        self.rows.append(row)
        self.save()
        print(f"# row: {json.dumps(row, default=str)}", flush=True)
        return row


# --------------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------------
def _fmt(value, spec: str, missing: str = "-") -> str:
    if value is None:
        return missing
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def render(result: dict) -> str:
    env = result["env"]
    lines = [
        f"## SyncDreamer generation: 1 sample x 16 views x {env.get('steps', 50)} DDIM steps, cfg 2, "
        "batch_view_num 16 (unless the row says)",
        "",
        f"device: {env.get('device')}, torch {env.get('torch')}, CUDA {env.get('cuda')}; "
        f"synthetic weights built in {env.get('build_s', 0):.1f} s.",
    ]
    if env.get("flops"):
        f = env["flops"]
        lines.append(
            f"FLOPs (matrix work, meta-device count): one denoising step {f['step'] / 1e12:.2f} T "
            f"(UNet x32 with CFG {f['step_unet'] / 1e12:.2f} T, depth attention {f['step_depth_attention'] / 1e12:.3f} T, "
            f"volume nets {f['step_volume'] / 1e12:.3f} T); conditioning {f['conditioning'] / 1e12:.2f} T; "
            f"decoding 16 views {f['decode'] / 1e12:.2f} T; whole generation {f['total'] / 1e12:.1f} T "
            f"-> bf16 floor {f['floor_s']:.3f} s at 790 TFLOP/s."
        )
    lines += [
        "",
        "| # | configuration | first call s | median s | peak GiB | dev (rel L2 latents) | PSNR dB | floor s | x floor |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, r in enumerate(result["rows"], 1):
        name = r["name"]
        if r.get("kept") is False:
            name += " (not kept)"
        if "error" in r:
            lines.append(f"| {i} | {name} | {r['error']} | | | | | | |")
            continue
        dev = _fmt(r.get("dev"), ".2e")
        if r.get("dev_vs") and r.get("dev_vs") != "fp32" and r.get("dev") is not None:
            dev += f" vs {r['dev_vs']}"
        lines.append(
            f"| {i} | {name} | {_fmt(r.get('first_s'), '.2f')} | {_fmt(r.get('median_s'), '.3f')} | "
            f"{_fmt(r.get('peak_gib'), '.2f')} | {dev} | {_fmt(r.get('psnr'), '.1f')} | "
            f"{_fmt(r.get('floor_s'), '.3f')} | {_fmt(r.get('x_floor'), '.1f')} |"
        )
    for note in result.get("notes", []):
        lines.append(f"\n- {note}")
    if result.get("breakdown"):
        lines += _render_breakdown(result["breakdown"])
    parity = result.get("parity") or []
    if parity:
        ok = all(p[3] for p in parity)
        lines += [
            "",
            f"### Parity vs the golden fixture on {env.get('device_type')} (fp32, TF32 off): "
            f"{'PASS' if ok else 'FAIL'}",
            "",
            "| stage | rel error | bound | ok |",
            "| --- | ---: | ---: | :---: |",
        ]
        for name, err, tol, good in parity:
            lines.append(f"| {name} | {err:.2e} | {tol:.0e} | {'yes' if good else 'NO'} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# where the time of the default configuration goes
# --------------------------------------------------------------------------------------------------
_CATEGORIES = (
    ("attention (flash / SDPA)", ("flash", "fmha", "attention")),
    (
        "convolutions and matrix products",
        ("gemm", "xmma", "cutlass", "conv", "nvjet", "sm90", "sm80", "cudnn"),
    ),
    ("norms (GroupNorm / LayerNorm)", ("norm", "moments", "welford", "_gn_")),
    ("grid_sample", ("grid_sampler",)),
    ("copies, cat, casts", ("copy", "cat", "index")),
    ("softmax", ("softmax",)),
)


def _category(kernel: str) -> str:
    low = kernel.lower()
    for name, keys in _CATEGORIES:
        if any(k in low for k in keys):
            return name
    return "other elementwise / reductions"


def _breakdown(model, prepared, device) -> dict:
    """Per-part times (CUDA events, eager) and a kernel profile of one step, default configuration."""
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile

    out: dict = {}
    image = torch.from_numpy(np.array(prepared.model_rgb)).permute(2, 0, 1)[None].to(device)

    cuda = device.type == "cuda"

    def timed(fn, n: int = 5) -> float:
        fn()
        _sync(device)
        if not cuda:
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - t0) / n
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / n / 1000.0

    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        gen = torch.Generator(device).manual_seed(0)
        cond = model.condition(image, [30.0], generator=gen)
        x = torch.randn(1, 16, 4, 32, 32, device=device, generator=gen)
        t = torch.tensor(981, device=device)
        t_embed = model.embed_time(t.reshape(1))
        volume = model.build_spatial_volume(x, t_embed, cond)
        targets = torch.arange(16, device=device)
        frustum = model.frustum_features(volume, t_embed, cond, targets)
        ctx = cond.contexts[0]
        concat = cond.concat_latent.expand(16, -1, -1, -1)
        flat = x[0]
        parts = {
            "conditioning (VAE encoder + CLIP), once": lambda: model.condition(image, [30.0], generator=gen),
            "spatial volume (target encoder, grid_sample, 32^3 net)": lambda: model.build_spatial_volume(
                x, t_embed, cond
            ),
            "frustum volumes (grid_sample, 3D net) for 16 views": lambda: model.frustum_features(
                volume, t_embed, cond, targets
            ),
            "UNet x32 (cond + uncond) with depth attention": lambda: model.unet_eps(
                flat, t.expand(16), ctx, frustum, concat, 2.0
            ),
            "one whole step (eager)": lambda: model.predict_eps(x, t, cond, 2.0, 16),
            "decoding 16 views (4 per call), once": lambda: model.decode_latents(flat, 4),
        }
        out["parts_s"] = {name: timed(fn) for name, fn in parts.items()}

        steps = 3
        activity = ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU
        with profile(activities=[activity]) as prof:
            for _ in range(steps):
                model.predict_eps(x, t, cond, 2.0, 16)
            _sync(device)
        out["copy_sites"] = _copy_sites(model, x, t, cond, device)
    kernels: dict[str, list] = {}
    for event in prof.key_averages():
        if cuda:
            us = getattr(event, "self_device_time_total", None)
            if us is None:
                us = getattr(event, "self_cuda_time_total", 0)
        else:
            us = event.self_cpu_time_total
        if us and us > 0:
            entry = kernels.setdefault(event.key, [0.0, 0])
            entry[0] += us / steps
            entry[1] += event.count // steps
    total = sum(v[0] for v in kernels.values())
    categories: dict[str, float] = {}
    for name, (us, _) in kernels.items():
        categories[_category(name)] = categories.get(_category(name), 0.0) + us
    out["step_kernel_us"] = total
    out["kernels_per_step"] = sum(v[1] for v in kernels.values())
    out["categories_us"] = dict(sorted(categories.items(), key=lambda kv: -kv[1]))
    out["top_kernels"] = sorted(([k, v[0], v[1]] for k, v in kernels.items()), key=lambda r: -r[1])[:12]
    return out


COPY_OPS = ("aten::copy_", "aten::cat")
"""The operators that do the copying (``clone``, ``contiguous``, ``_to_copy`` and ``to`` all end in
``copy_``), so that no copy is counted twice."""


def _copy_sites(model, x, t, cond, device) -> list:
    """Where one eager step's copies come from: each copying operator (:data:`COPY_OPS`) grouped by
    the sd3d frames that called it, with the device time of the kernels it launched. Why: the kernel
    profile of session 15 put 3.85 of 32.3 ms a step in 72 strided copies, and a trace on the meta
    device could not say where (its layouts differ from cuDNN's and flash's)."""
    from torch.profiler import ProfilerActivity, _ExperimentalConfig, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    verbose = _ExperimentalConfig(verbose=True)  # without it this PyTorch records no Python stacks
    with profile(activities=activities, with_stack=True, experimental_config=verbose) as prof:
        model.predict_eps(x, t, cond, 2.0, 16)
        _sync(device)
    sites: dict[tuple, list] = {}
    for event in prof.key_averages(group_by_stack_n=12):
        if event.key not in COPY_OPS:
            continue
        if cuda:
            us = getattr(event, "device_time_total", None)
            us = getattr(event, "cuda_time_total", 0) if us is None else us
        else:
            us = event.cpu_time_total
        stack = event.stack or []
        module = next((f.removeprefix("nn.Module: ") for f in stack if f.startswith("nn.Module: ")), None)
        ours = [f.split("sd3d/", 1)[-1] for f in stack if f.startswith("sd3d/") or "/sd3d/" in f]
        frames = tuple(([module] if module else []) + ours[:3])
        entry = sites.setdefault((event.key, frames), [0.0, 0])
        entry[0] += us
        entry[1] += event.count
    ranked = sorted(
        ([op, us, n, list(frames)] for (op, frames), (us, n) in sites.items()), key=lambda r: -r[1]
    )
    return ranked[:15]


def _render_breakdown(b: dict) -> list[str]:
    lines = [
        "",
        "### Where the time goes (the Triton-norm row's configuration, eager timings with CUDA events)",
        "",
    ]
    lines += ["| part | ms |", "| --- | ---: |"]
    for name, sec in b.get("parts_s", {}).items():
        lines.append(f"| {name} | {1000 * sec:.2f} |")
    if "step_kernel_us" in b:
        total = b["step_kernel_us"]
        lines += [
            "",
            f"Kernel profile of one step: {total / 1000:.2f} ms of GPU time in {b['kernels_per_step']} "
            "kernels (torch.profiler, mean of 3 steps).",
            "",
            "| kernel category | ms / step | share |",
            "| --- | ---: | ---: |",
        ]
        for name, us in b["categories_us"].items():
            lines.append(f"| {name} | {us / 1000:.2f} | {100 * us / total:.0f}% |")
        lines += ["", "| top kernels | ms / step | calls / step |", "| --- | ---: | ---: |"]
        for name, us, count in b["top_kernels"]:
            short = name if len(name) <= 90 else name[:87] + "..."
            lines.append(f"| `{short.replace('|', '/')}` | {us / 1000:.2f} | {count} |")
    if b.get("copy_sites"):
        lines += [
            "",
            "| copying operator | called from (innermost module, sd3d frames) | ms / step | calls |",
        ]
        lines += ["| --- | --- | ---: | ---: |"]
        for op, us, count, frames in b["copy_sites"]:
            where = " < ".join(frames) or "(outside sd3d)"
            lines.append(f"| `{op}` | {where.replace('|', '/')} | {us / 1000:.2f} | {count} |")
    return lines


# --------------------------------------------------------------------------------------------------
# parity
# --------------------------------------------------------------------------------------------------
def _parity(model, shared: Path) -> list[tuple[str, float, float, bool]]:
    import numpy as np

    from sd3d.models import golden as g

    with np.load(shared / "reference" / "syncdreamer-golden-synthetic.npz") as data:
        fixture = {k: data[k] for k in data.files}
    _tf32(False)
    stages = g.run_stages(model, fixture)
    rows = [(n, err, tol, err <= tol) for n, err, tol in g.compare(stages, fixture)]
    sens = g.rel_err(stages["eps_view2_zero_volume"], fixture["eps_nocfg_views0to3"][2])
    rows.append(("eps_view2_zero_volume (must exceed)", sens, 5 * g.OUTPUT_RTOL, sens > 5 * g.OUTPUT_RTOL))
    return rows


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------
def add_model_arguments(parser: argparse.ArgumentParser, shared: bool = True) -> None:
    """The options every generation benchmark shares (this one, norm_deviation.py,
    generate_throughput.py): the shared folder (fixture input), device, model size, DDIM steps."""
    if shared:
        parser.add_argument(
            "--shared", type=Path, default=Path(os.environ.get("SD3D_SHARED", REPO.parent / "shared"))
        )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--config", default="official", help="official or tiny (smoke tests)")
    parser.add_argument("--steps", type=int, default=50)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--seed", type=int, default=6033)
    parser.add_argument("--batch-view-num", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per fast row (median)")
    parser.add_argument("--slow-repeats", type=int, default=1, help="timed runs per fp32 row")
    parser.add_argument("--budget-s", type=float, default=400.0, help="skip optional rows past this")
    parser.add_argument("--compile-budget-s", type=float, default=230.0, help="try compile only before this")
    parser.add_argument("--skip-parity", action="store_true")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the fp32 baseline, the default, and the opt-in kernels' side rows only (a short GPU call)",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--render", type=Path, default=None, help="print the table of a saved --json")
    args = parser.parse_args(argv)

    if args.render:
        print(render(json.loads(args.render.read_text())))
        return 0

    import torch

    from sd3d.core.device import resolve_device
    from sd3d.models.configs import config_by_name
    from sd3d.models.conv_bias import set_conv_bias_folding
    from sd3d.models.depth_attention import set_depth_attention_impl, set_depth_attention_kernel
    from sd3d.models.inference import (
        cast_weights_,
        compile_step_modules_,
        offload_conditioning_,
        onload_conditioning_,
        set_channels_last_,
    )
    from sd3d.models.norms import set_norm_implementation
    from sd3d.models.syncdreamer_checkpoint import load_syncdreamer
    from sd3d.models.synthetic import synthetic_state_dict
    from sd3d.models.unet import set_geglu_implementation

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if not cuda:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    config = config_by_name(args.config)
    env, flops = describe_run(args, device, config)

    t0 = time.perf_counter()
    state_dict = synthetic_state_dict(config)
    model = load_syncdreamer(state_dict, config, device)  # fp32 weights, as the parity check needs
    del state_dict
    gc.collect()
    env["build_s"] = time.perf_counter() - t0
    print(f"# model built with synthetic weights in {env['build_s']:.1f} s", flush=True)

    prepared = _input(args.shared)
    bench = Bench(args, model, prepared, device, env, flops)
    if not args.skip_parity:
        set_norm_implementation(model, "auto")  # parity of the Triton GroupNorm where it runs
        bench.record_parity(lambda: model)
    set_norm_implementation(model, "torch")  # the code before the Triton GroupNorm, up to its row

    fast, slow = args.repeats, args.slow_repeats
    # A short untimed warm-up: CUDA context, cuBLAS/cuDNN handles, first kernel loads.
    from sd3d.pipelines.syncdreamer import GenerationSettings, sample_views

    sample_views(model, prepared, GenerationSettings(steps=2, batch_view_num=args.batch_view_num), "fp32")
    # ---- fp32 rows ------------------------------------------------------------------------------
    _tf32(False)
    set_depth_attention_impl(model, "reference")
    bench.run(
        "fp32, TF32 off, eager (baseline: our code before the fast paths)",
        dtype="fp32",
        cuda_graph=False,
        repeats=slow,
        keep_ref="fp32",
    )
    if args.quick:
        return _quick_rows(args, bench, model, cuda)
    set_depth_attention_impl(model, "fast")
    bench.run("+ depth attention re-associated (exact)", dtype="fp32", cuda_graph=False, repeats=slow)
    if cuda:
        _tf32(True)
        bench.run("(side) + TF32 matmul and cuDNN", dtype="fp32", cuda_graph=False, repeats=slow, side=True)
    _tf32(None)  # PyTorch's defaults from here on: what users get

    # decoder precision alone: the baseline's latents decoded in fp32 and under bf16 autocast
    if cuda and "fp32" in bench.refs:
        try:
            import numpy as np

            from sd3d.pipelines.syncdreamer import quantize_official

            latents = bench.refs["fp32"][0].reshape(-1, *bench.refs["fp32"][0].shape[2:])
            with torch.inference_mode():
                a = quantize_official(model.decode_latents(latents, 4))
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    b = quantize_official(model.decode_latents(latents, 4))
            bench.note(
                f"VAE decoder alone, bf16 autocast vs fp32 on the same latents: PSNR {_psnr(b, a):.1f} dB, "
                f"max |diff| {int(np.abs(a.astype(int) - b.astype(int)).max())} / 255"
            )
        except Exception as exc:
            bench.note(f"decoder precision check failed: {exc}")

    # ---- bf16 -----------------------------------------------------------------------------------
    bench.run(
        "+ bf16 autocast (fp32 weights, eager: the previous bf16 path)",
        dtype="bf16",
        cuda_graph=False,
        repeats=fast,
    )
    cast_weights_(model, torch.bfloat16)
    gc.collect()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bench.note(f"weights in bf16 (norms fp32): {weight_bytes / GIB:.2f} GiB on the device")
    bench.run("+ bf16 weights (norms fp32)", dtype="bf16", cuda_graph=False, repeats=fast)
    bench.run("+ CUDA graph of the step", dtype="bf16", cuda_graph=cuda, repeats=fast)
    if cuda:
        set_channels_last_(model, unet=True, volume=False)
    bench.run("+ channels-last UNet", dtype="bf16", cuda_graph=cuda, repeats=fast)
    cast_weights_(model, torch.bfloat16, half_norms=True)
    bench.run("+ half-precision norms (float32 statistics)", dtype="bf16", cuda_graph=cuda, repeats=fast)
    set_norm_implementation(model, "auto")
    bench.run(
        "+ Triton GroupNorm (channels-last, bias / SiLU fused)",
        dtype="bf16",
        cuda_graph=cuda,
        repeats=fast,
    )
    set_depth_attention_impl(model, "folded")
    bench.run(
        "+ depth attention folded (projections merged, channels-last)",
        dtype="bf16",
        cuda_graph=cuda,
        repeats=fast,
    )
    set_depth_attention_kernel(model, "auto")
    bench.run(
        "+ depth attention's middle as one Triton kernel (no transposed context copy)",
        dtype="bf16",
        cuda_graph=cuda,
        repeats=fast,
    )
    set_geglu_implementation(model, "auto")
    bench.run("+ fused GEGLU (Triton)", dtype="bf16", cuda_graph=cuda, repeats=fast)
    set_conv_bias_folding(model, cuda)
    default = bench.run(
        "+ convolution biases folded (sd3d.models.conv_bias) = default",
        dtype="bf16",
        cuda_graph=cuda,
        repeats=fast,
        keep_ref="default",
    )
    if cuda or args.config == "tiny":
        bench.record_breakdown()

    # ---- side rows with the default configuration ------------------------------------------------
    if cuda:
        offload_conditioning_(model)
        bench.run(
            "(side) default + conditioning encoders offloaded to pinned host memory",
            dtype="bf16",
            cuda_graph=True,
            repeats=fast,
            side=True,
        )
        onload_conditioning_(model)
    bench.run("(side) default, --samples 4", dtype="bf16", cuda_graph=cuda, repeats=2, samples=4, side=True)
    if "median_s" in default and "median_s" in bench.rows[-1]:
        bench.note(
            f"--samples 4: {bench.rows[-1]['median_s']:.3f} s vs 4 x one sample = "
            f"{4 * default['median_s']:.3f} s ({bench.rows[-1]['median_s'] / default['median_s']:.2f}x one sample)"
        )
    bench.run(
        "(side) default, DDIM eta 0",
        dtype="bf16",
        cuda_graph=cuda,
        repeats=fast,
        eta=0.0,
        ref=None,
        keep_ref="ddim-eta0",
        side=True,
    )
    for name in ("dpmpp", "unipc"):
        bench.run(
            f"(side) default, {name} 20 steps",
            dtype="bf16",
            cuda_graph=cuda,
            repeats=fast,
            sampler=name,
            steps=20,
            ref="ddim-eta0",
            side=True,
        )

    # ---- optional speed-ups: kept only if they pay ----------------------------------------------
    best = default.get("median_s", float("inf"))

    def keep(row: dict) -> bool:
        nonlocal best
        ok = "median_s" in row and row["median_s"] < 0.97 * best
        row["kept"] = ok
        if ok:
            best = row["median_s"]
        bench.save()
        return ok

    if cuda and bench.elapsed() < args.budget_s:
        set_channels_last_(model, unet=True, volume=True)
        if not keep(bench.run("+ channels-last 3D nets", dtype="bf16", cuda_graph=True, repeats=fast)):
            set_channels_last_(model, unet=True, volume=False)
    if cuda and not args.skip_compile:
        if bench.elapsed() < args.compile_budget_s:
            compile_step_modules_(model)
            row = bench.run(
                "+ torch.compile (UNet, 3D nets; the first call compiles, cold caches)",
                dtype="bf16",
                cuda_graph=True,
                repeats=fast,
            )
            keep(row)
            if "error" not in row and bench.elapsed() < args.budget_s:
                torch._dynamo.reset()  # as a new process: in-memory caches gone, on-disk caches warm
                model.step_modules_compiled = False
                compile_step_modules_(model)
                bench.run(
                    "(side) torch.compile after torch._dynamo.reset(): warm on-disk caches (a second process)",
                    dtype="bf16",
                    cuda_graph=True,
                    repeats=1,
                    side=True,
                )
        else:
            bench.note(f"torch.compile skipped: {bench.elapsed():.0f} s used of the time budget")

    bench.note(f"benchmark wall time {bench.elapsed():.0f} s")
    print()
    print(render(bench.result))
    parity_ok = all(p[3] for p in bench.result["parity"])
    return 0 if parity_ok else 1


@contextlib.contextmanager
def _norm2_computed():
    """The transformer blocks as before 321d064: norm2 computed for a one-token context, its output
    unread (the layer's one-key path ignores its queries), for the A/B of that commit."""
    from sd3d.models.unet import BasicTransformerBlock

    plain = BasicTransformerBlock.forward

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x

    BasicTransformerBlock.forward = forward
    try:
        yield
    finally:
        BasicTransformerBlock.forward = plain


@contextlib.contextmanager
def _offset_recomputed():
    """The depth transformers as before a1da2a8: the zero-context offset computed every call."""
    from sd3d.models.depth_attention import DepthTransformer

    plain = DepthTransformer.zero_context_offset
    DepthTransformer.zero_context_offset = DepthTransformer._compute_zero_context_offset
    try:
        yield
    finally:
        DepthTransformer.zero_context_offset = plain


def _quick_rows(args, bench, model, cuda: bool) -> int:
    """``--quick``: from the fp32 baseline straight to the default configuration, then the opt-in
    kernels one by one and together, the time breakdown with both, and ``--samples 4`` with both."""
    import torch

    from sd3d.models.conv_bias import set_conv_bias_folding
    from sd3d.models.depth_attention import set_depth_attention_impl, set_depth_attention_kernel
    from sd3d.models.inference import cast_weights_, set_channels_last_
    from sd3d.models.norms import set_norm_implementation
    from sd3d.models.unet import set_geglu_implementation

    _tf32(None)
    cast_weights_(model, torch.bfloat16, half_norms=True)
    if cuda:
        set_channels_last_(model, unet=True, volume=False)
    set_norm_implementation(model, "auto")
    set_depth_attention_impl(model, "folded")
    fast = args.repeats
    graph = cuda
    set_depth_attention_kernel(model, "torch")
    with _norm2_computed(), _offset_recomputed():  # the code before 321d064 and a1da2a8
        bench.run(
            "session 15's default (bf16, CUDA graph, Triton norms, folded)",
            dtype="bf16",
            cuda_graph=graph,
            repeats=fast,
        )
        set_depth_attention_kernel(model, "auto")
        bench.run("+ depth-attention kernel", dtype="bf16", cuda_graph=graph, repeats=fast)
        set_geglu_implementation(model, "auto")
        bench.run("+ fused GEGLU (session 16's default)", dtype="bf16", cuda_graph=graph, repeats=fast)
        set_conv_bias_folding(model, cuda)
        bench.run("+ convolution biases folded", dtype="bf16", cuda_graph=graph, repeats=fast)
    with _offset_recomputed():
        bench.run("+ one-token cross-attention skips norm2", dtype="bf16", cuda_graph=graph, repeats=fast)
    bench.run("+ zero-context offset kept = default", dtype="bf16", cuda_graph=graph, repeats=fast)
    if cuda or args.config == "tiny":
        bench.record_breakdown()
    bench.run(
        "(side) the default, --samples 4", dtype="bf16", cuda_graph=graph, repeats=2, samples=4, side=True
    )
    if "median_s" in bench.rows[-2] and "median_s" in bench.rows[-1]:
        bench.note(
            f"--samples 4 with the default: {bench.rows[-1]['median_s']:.3f} s, "
            f"{bench.rows[-1]['median_s'] / bench.rows[-2]['median_s']:.2f}x one sample"
        )
    bench.note(f"benchmark wall time {bench.elapsed():.0f} s")
    print()
    print(render(bench.result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
