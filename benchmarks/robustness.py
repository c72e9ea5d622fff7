"""Robustness benchmark: reconstruction from view sets made inconsistent in stated, controlled ways.

Real SyncDreamer views disagree a little with each other (pose, colour, local shape, mask edges,
details). For each case = object x perturbation (``recon.perturb``: ``clean``, ``pose:DEG``,
``colour:G``, ``warp:PX``, ``mask:PX``, ``detail:H``, options as ``pose:2,translation=0.02``):

1. render the object's 16 GT views (``recon.raster``, the shared views' lights and conventions),
   cached under ``<cache>/<object>-<hash>/views``; the shared objects (spot, bob, duck, banana:
   source mesh + ``mesh_normalized.ply``) and the procedural ``recon.shapes`` (blade, mug, cup, shell);
2. perturb them (the record of what was applied goes into the case's JSON);
3. ``reconstruct`` + ``export_mesh`` to ``<out>/meshes/<case>.glb`` (timed), with the views' alpha
   (``--masks alpha``) or, like generated views, RGB on white only (``--masks white``, default);
4. score: Chamfer / F-score@0.01 / volume IoU (``recon.metrics.mesh_metrics``, as ``sd3d eval mesh``;
   IoU is "n/a" for open GT surfaces), normal angle error (``recon.metrics.normal_angle_error``),
   appearance = the GLB rendered unlit (albedo only) at the 16 cameras vs the CLEAN views: PSNR
   over the pixels either covers, SSIM on the box around them; optionally (``--consistency``) the
   3DiM consistency score of the perturbed views (``recon.consistency``: one more fit, on 12 views,
   with the plain preset: it rates the views, not the method).

Writes ``<out>/cases/<case>.json`` per case (with timings), ``<out>/results.json``, ``<out>/results.md``
(a table per case and the mean per perturbation) and, for cases matching ``--figures``,
``<out>/figures/<case>.png``: the 16 input views in a row above the 16 renders of the mesh.
``--set KEY=VALUE`` (repeatable) overrides any field of ``recon.presets.Preset`` (dotted for nested
ones, e.g. ``field.grid.n_levels=12``), parsed by the field's type, to compare method toggles;
``--plain`` switches every robustness method off first (the plain NeuS, the "before" of a comparison).
``--jobs N`` runs cases in N worker processes (``--threads`` each; CUDA cases spread over the GPUs).

    python benchmarks/robustness.py --quality standard --device cuda --jobs 4 --out out/robust
    python benchmarks/robustness.py --quality draft --steps 30 --objects cup --perturbations clean warp:3
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import json
import math
import multiprocessing
import os
import platform
import resource
import sys
import time
import types
import typing
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # before benchmarks/ itself, whose recon.py would shadow the package

import numpy as np  # noqa: E402

from recon.perturb import Perturbation  # noqa: E402
from recon.presets import ROBUSTNESS_OFF, Preset, ReconSettings  # noqa: E402
from recon.shapes import SHAPES  # noqa: E402

SHARED_OBJECTS = ("spot", "bob", "duck", "banana")
OBJECTS = (*SHARED_OBJECTS, *SHAPES)
DEFAULT_PERTURBATIONS = ("clean", "pose:2", "colour:0.1", "warp:3", "mask:3", "detail:0.04")

# ------------------------------------------------------------------------------------------------
# --set: Preset overrides
# ------------------------------------------------------------------------------------------------


def _declared_type(current, hint):
    """The type a field's value must have: its annotation (without ``None``), else its value's type."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if isinstance(hint, type) or typing.get_origin(hint) in (tuple, typing.Literal):
        return hint
    return type(current)


def _parse_value(text: str, current, hint, key: str):
    """``text`` as a value of the field's declared type (``bool``: true/false/1/0/yes/no/on/off,
    ``int``, ``float``, ``str``, a ``Literal``'s choices, a tuple as comma-separated items); ``none``
    gives ``None`` where the field allows it (its value or annotation)."""
    if text.strip().lower() in ("none", "null") and (current is None or type(None) in typing.get_args(hint)):
        return None
    target = _declared_type(current, hint)
    origin = typing.get_origin(target)
    if origin is typing.Literal:
        for choice in typing.get_args(target):
            if str(choice) == text:
                return choice
        raise ValueError(f"--set {key}: choose from {', '.join(map(str, typing.get_args(target)))}")
    if target is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {key}: expected true/false, got {text!r}")
    if target is tuple or origin is tuple:
        args = typing.get_args(target)
        element = args[0] if args else (type(current[0]) if current else float)
        return tuple(_parse_value(t.strip(), None, element, key) for t in text.split(",") if t.strip())
    if target is int:
        number = float(text)
        if not number.is_integer():
            raise ValueError(f"--set {key}: expected an integer, got {text!r}")
        return int(number)
    if target in (float, str):
        return target(text)
    raise ValueError(f"--set {key}: fields of type {getattr(target, '__name__', target)} cannot be set")


def _type_hints(obj) -> dict:
    try:
        return typing.get_type_hints(type(obj))
    except Exception:  # an annotation that does not resolve: fall back to the values' types
        return {}


def override(obj, key: str, text: str):
    """``dataclasses.replace`` of the (nested) dataclass field ``key`` (dotted) by ``text`` parsed."""
    head, _, rest = key.partition(".")
    names = {f.name for f in dataclasses.fields(obj)}
    if head not in names:
        raise ValueError(
            f"--set {key}: {type(obj).__name__} has no field {head!r} (fields: {', '.join(sorted(names))})"
        )
    current = getattr(obj, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise ValueError(f"--set {key}: {head} is not a nested dataclass")
        value = override(current, rest, text)
    else:
        if dataclasses.is_dataclass(current):
            raise ValueError(f"--set {key}: {head} is a dataclass: set one of its fields ({head}.NAME)")
        value = _parse_value(text, current, _type_hints(obj).get(head), key)
    return dataclasses.replace(obj, **{head: value})


def parse_overrides(items: list[str], plain: bool = False) -> list[tuple[str, str]]:
    """``--set`` items as ``(key, text)`` pairs; ``plain`` puts :data:`ROBUSTNESS_OFF` first (so an
    item of the caller's can still switch one method back on)."""
    overrides = [(k, str(v)) for k, v in ROBUSTNESS_OFF.items()] if plain else []
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--set wants KEY=VALUE, got {item!r}")
        overrides.append((key.strip(), value.strip()))
    return overrides


def apply_overrides(preset: Preset, overrides: tuple[tuple[str, str], ...]) -> Preset:
    for key, text in overrides:
        preset = override(preset, key, text)
    return preset


@dataclasses.dataclass(frozen=True)
class OverriddenSettings(ReconSettings):
    """``ReconSettings`` whose preset has ``overrides`` (``(key, text)`` pairs of ``--set``) applied."""

    overrides: tuple[tuple[str, str], ...] = ()

    def preset(self, device):
        return apply_overrides(super().preset(device), self.overrides)


# ------------------------------------------------------------------------------------------------
# cases: objects, their GT renders (cached), perturbation, reconstruction, scores
# ------------------------------------------------------------------------------------------------


def load_object(name: str, shared: Path):
    """``(render mesh, GT trimesh, GT is watertight)`` of a shared object or a procedural shape."""
    import trimesh

    from recon.metrics import weld_vertices
    from recon.raster import load_mesh
    from recon.shapes import make_shape

    if name in SHAPES:
        shape = make_shape(name)
        return shape.render_mesh(), shape.trimesh(), shape.watertight
    folder = shared / "data" / "objects" / name
    record = json.loads((folder / "views" / "cameras.json").read_text())
    norm = record["normalization"]
    texture = record.get("texture_override")
    mesh = load_mesh(
        folder / "source" / Path(record["source_mesh"]).name,
        up=norm["up_axis"],
        yaw_deg=norm["yaw_deg"],
        texture=folder / "source" / Path(texture).name if texture else None,
    )
    loaded = trimesh.load(folder / "mesh_normalized.ply", process=False)
    gt = trimesh.Trimesh(*weld_vertices(loaded.vertices, loaded.faces), process=False)  # UV seams: not holes
    return mesh, gt, bool(gt.is_watertight)


def mesh_key(mesh) -> str:
    """A short hash of everything the renders depend on, naming the cache entry."""
    h = hashlib.sha1()
    for a in (mesh.vertices, mesh.faces, mesh.face_color, mesh.uvs, mesh.vertex_colors, mesh.face_texture):
        if a is not None:
            h.update(np.ascontiguousarray(a).tobytes())
    for t in mesh.textures:
        h.update(np.ascontiguousarray(t).tobytes())
    return h.hexdigest()[:12]


def cached_views(name: str, shared: Path, cache: Path, device: str = "cpu") -> Path:
    """The views folder of the object's 16 GT renders, rendered once (``sd3d render``'s format)."""
    from recon.raster import orbit_cameras, render_mesh, write_renders
    from sd3d.core import cameras as cam

    mesh, _, _ = load_object(name, shared)
    folder = cache / f"{name}-{mesh_key(mesh)}" / "views"
    if not (folder / "cameras.json").is_file():
        cameras = orbit_cameras(None, None, cam.TARGET_DISTANCE, cam.IMAGE_SIZE)
        renders = render_mesh(mesh, cameras, device=device)
        write_renders(folder, renders, cameras, extra={"benchmark_object": name}, overwrite=True)
    return folder


def appearance(glb: Path, clean, device: str) -> tuple[dict, np.ndarray]:
    """The GLB rendered unlit at the clean views' cameras vs the clean views: per-view PSNR over the
    pixels either image covers, SSIM on the box around them (padded by 5 px); means. Also returns
    the renders on white (for the figure)."""
    from recon.metrics import psnr, ssim
    from recon.raster import Lighting, load_mesh, render_mesh

    mesh = load_mesh(glb, normalize=False)
    unlit = Lighting(ambient=1.0, directions=(), weights=())  # albedo only: the baked texture as is
    renders = render_mesh(mesh, clean.cameras, lighting=unlit, device=device)
    pred = renders.on_white()
    psnrs, ssims = [], []
    for i in range(clean.num_views):
        covered = (clean.alphas[i] > 0) | (renders.rgba[i, ..., 3] > 0)
        rows, cols = np.flatnonzero(covered.any(1)), np.flatnonzero(covered.any(0))
        if len(rows) == 0:
            continue
        psnrs.append(psnr(pred[i][covered], clean.images[i][covered]))
        h, w = covered.shape
        box = np.s_[max(rows[0] - 5, 0) : min(rows[-1] + 6, h), max(cols[0] - 5, 0) : min(cols[-1] + 6, w)]
        ssims.append(ssim(pred[i][box], clean.images[i][box]))
    out = {
        "app_psnr": float(np.mean(psnrs)) if psnrs else None,
        "app_ssim": float(np.mean(ssims)) if ssims else None,
        "app_per_view": [{"psnr": p, "ssim": s} for p, s in zip(psnrs, ssims, strict=True)],
    }
    return out, pred


def write_figure(path: Path, inputs: np.ndarray, renders: np.ndarray, size: int) -> None:
    """The 16 input views in a row above the 16 mesh renders, each scaled to ``size`` px."""
    from PIL import Image

    from sd3d.core.io import save_image_atomic, to_uint8

    def row(images):
        tiles = [Image.fromarray(to_uint8(im)).resize((size, size), Image.Resampling.BOX) for im in images]
        return np.concatenate([np.asarray(t) for t in tiles], axis=1)

    save_image_atomic(path, np.concatenate([row(inputs), row(renders)], axis=0))


def _peak_memory_gb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def case_id(obj: str, perturbation: Perturbation) -> str:
    return f"{obj}/{perturbation.slug}"


def run_case(task: dict) -> dict:
    """One case, end to end (see the module docstring); returns its row (also written as JSON)."""
    import torch

    from recon.metrics import mesh_metrics, normal_angle_error
    from recon.perturb import apply
    from recon.pipeline import export_mesh, reconstruct
    from recon.raster import load_trimesh
    from sd3d.core.device import resolve_device
    from sd3d.core.io import read_views, write_json_atomic

    cfg = task["config"]
    pert = Perturbation(**task["perturbation"])
    name = task["object"]
    out = Path(task["out"])
    stem = f"{name}__{pert.slug}"
    device = resolve_device(_WORKER_DEVICE or task["device"])
    timings: dict[str, float] = {}
    t_case = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.set_device(0 if device.index is None else device.index)
        torch.cuda.reset_peak_memory_stats(device)

    t = time.perf_counter()
    mesh, gt, gt_closed = load_object(name, Path(task["shared"]))
    clean = read_views(task["views"])
    views = apply(pert, clean, mesh, device=device)
    record = views.provenance.get("perturbation", {})
    fed = dataclasses.replace(views, alphas=None) if cfg["masks"] == "white" else views
    timings["perturb"] = time.perf_counter() - t
    row: dict = {
        "case": case_id(name, pert),
        "object": name,
        "perturbation": pert.as_dict(),
        "gt_watertight": gt_closed,
        "config": cfg,
        "device": str(device),
    }
    try:
        if cfg["consistency"]:
            from recon.consistency import consistency_score

            t = time.perf_counter()
            score = consistency_score(
                fed, quality=cfg["quality"], steps=cfg["steps"], seed=cfg["seed"], device=str(device)
            )
            timings["consistency"] = time.perf_counter() - t
            row["consistency"] = score.as_dict()
            row["consistency_psnr"] = score.mean_psnr
        settings = OverriddenSettings(
            cfg["quality"],
            cfg["steps"],
            cuda_graph=cfg.get("cuda_graph"),
            overrides=tuple(map(tuple, cfg["overrides"])),
        )
        t = time.perf_counter()
        result = reconstruct(fed, settings, seed=cfg["seed"], device=device)
        glb = out / "meshes" / f"{stem}.glb"
        exported = export_mesh(result, glb)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings["reconstruct"] = time.perf_counter() - t
        timings.update({f"recon_{k}": v for k, v in {**result.timings, **exported.timings}.items()})
        row["peak_memory_gb"] = _peak_memory_gb(device)

        t = time.perf_counter()
        pred = load_trimesh(glb)
        n = cfg["metric_samples"]
        row.update(mesh_metrics(pred, gt, num_samples=n, seed=cfg["seed"], grid=cfg["iou_grid"]))
        row["normal_deg"] = normal_angle_error(pred, gt, num_samples=n, seed=cfg["seed"])
        timings["geometry_metrics"] = time.perf_counter() - t
        t = time.perf_counter()
        app, renders = appearance(glb, clean, str(device))
        row.update(app)
        timings["appearance"] = time.perf_counter() - t
        if any(fnmatch.fnmatch(row["case"], pat) for pat in task["figures"]):
            write_figure(out / "figures" / f"{stem}.png", views.images, renders, cfg["figure_size"])
        row.update(
            faces=exported.num_faces,
            textured=exported.textured,
            final_loss=result.final_loss,
            preset=dataclasses.asdict(result.preset),
        )
        row["status"] = "ok"
    except Exception as exc:  # a failed case is a result too (e.g. an empty surface); the rest go on
        row["status"] = f"failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    timings["total"] = time.perf_counter() - t_case
    row["seconds_total"] = timings["total"]
    row["seconds"] = timings
    row["record"] = record
    write_json_atomic(out / "cases" / f"{stem}.json", row)
    return row


# ------------------------------------------------------------------------------------------------
# workers
# ------------------------------------------------------------------------------------------------


_WORKER_DEVICE: str | None = None  # a worker process's own GPU when cases spread over several


def _init_worker(threads: int, device: str, gpus: int, counter, warmup_views: str | None) -> None:
    """Each worker: its own thread count; with ``device == "cuda"`` and several GPUs, GPU
    ``k % gpus`` for the k-th worker started; on CUDA a short fit first, so that the first case's
    timing does not include the CUDA context, cuBLAS handles and the allocator's growth."""
    global _WORKER_DEVICE
    import torch

    torch.set_num_threads(threads)
    if counter is not None:
        with counter.get_lock():
            k = counter.value
            counter.value += 1
        if device == "cuda" and gpus > 1:
            _WORKER_DEVICE = device = f"cuda:{k % gpus}"
    if warmup_views and device.startswith("cuda"):
        from recon.pipeline import reconstruct
        from sd3d.core.io import read_views

        index = torch.device(device).index  # "cuda" (one GPU) has none: set_device wants one
        torch.cuda.set_device(0 if index is None else index)
        reconstruct(read_views(warmup_views), ReconSettings("draft", steps=20), device=device)


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–" if value is None else str(value)
    return format(value, spec)


def markdown_table(rows: list[dict], config: dict) -> str:
    """Per-case table, then the mean per perturbation over the objects that ran it (and its change
    from the same objects' clean runs)."""
    head = "| case | perturbation | Chamfer ↓ | F@0.01 ↑ | IoU ↑ | normal ° ↓ | app PSNR ↑ | app SSIM ↑ | cons PSNR | s |"
    rule = "|" + "---|" * 10
    lines = [
        f"Robustness benchmark: quality {config['quality']}, steps {config['steps'] or 'preset'}, "
        f"masks {config['masks']}, seed {config['seed']}"
        + (
            f", overrides {' '.join(f'{k}={v}' for k, v in config['overrides'])}"
            if config["overrides"]
            else ""
        ),
        "",
        head,
        rule,
    ]
    for r in rows:
        if r["status"] != "ok":
            cells = [
                r["case"],
                r["perturbation"]["describe"],
                r["status"],
                *[""] * 6,
                f"{r['seconds_total']:.0f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        iou = r["volume_iou"] if r["gt_watertight"] else None
        lines.append(
            f"| {r['case']} | {r['perturbation']['describe']} | {_fmt(r['chamfer'], '.4f')} | "
            f"{_fmt(r['fscore_0.01'], '.3f')} | {_fmt(iou, '.3f')} | {_fmt(r['normal_deg'], '.1f')} | "
            f"{_fmt(r['app_psnr'], '.2f')} | {_fmt(r['app_ssim'], '.3f')} | "
            f"{_fmt(r.get('consistency_psnr'), '.2f')} | {r['seconds_total']:.0f} |"
        )
    ok = [r for r in rows if r["status"] == "ok"]
    clean = {r["object"]: r for r in ok if r["perturbation"]["kind"] == "none"}
    groups: dict[str, list[dict]] = {}
    for r in ok:
        groups.setdefault(r["perturbation"]["describe"].split(" (seed")[0], []).append(r)
    lines += [
        "",
        "Mean over objects (in brackets: change from the same objects' clean runs; IoU over watertight GT only)",
        "",
        "| perturbation | objects | Chamfer ↓ | F@0.01 ↑ | IoU ↑ | normal ° ↓ | app PSNR ↑ | app SSIM ↑ |",
        "|" + "---|" * 8,
    ]
    for label, group in groups.items():
        cells = []
        for key, spec in (
            ("chamfer", ".4f"),
            ("fscore_0.01", ".3f"),
            ("volume_iou", ".3f"),
            ("normal_deg", ".1f"),
            ("app_psnr", ".2f"),
            ("app_ssim", ".3f"),
        ):
            use = [r for r in group if key != "volume_iou" or r["gt_watertight"]]
            vals = [r[key] for r in use if r.get(key) is not None and math.isfinite(r[key])]
            if not vals:
                cells.append("–")
                continue
            mean = float(np.mean(vals))
            base = [clean[r["object"]][key] for r in use if r["object"] in clean]
            delta = (
                f" ({mean - float(np.mean(base)):+{spec}})"
                if len(base) == len(use) and group[0]["perturbation"]["kind"] != "none"
                else ""
            )
            cells.append(format(mean, spec) + delta)
        lines.append(f"| {label} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quality", default="standard")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0, help="reconstruction, metrics and perturbation seed")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--objects", nargs="+", default=list(OBJECTS), help=f"from {', '.join(OBJECTS)}")
    ap.add_argument(
        "--perturbations", nargs="+", default=list(DEFAULT_PERTURBATIONS), help="clean or KIND:MAG[,OPT=V...]"
    )
    ap.add_argument(
        "--cases", nargs="+", default=["*"], help="glob patterns on case ids (e.g. 'mug/*' '*/clean')"
    )
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument(
        "--plain",
        action="store_true",
        help="every robustness method off (recon.presets.ROBUSTNESS_OFF, as --set items before yours)",
    )
    ap.add_argument("--masks", choices=("white", "alpha"), default="white")
    ap.add_argument(
        "--consistency", action="store_true", help="also the 3DiM consistency score (one more fit)"
    )
    ap.add_argument("--metric-samples", type=int, default=100_000)
    ap.add_argument("--iou-grid", type=int, default=128)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads per worker (default: cores / jobs)"
    )
    ap.add_argument("--figures", nargs="*", default=["*"], help="glob patterns of the cases that get a PNG")
    ap.add_argument("--figure-size", type=int, default=128)
    ap.add_argument("--resume", action="store_true", help="keep cases whose JSON has the same config")
    ap.add_argument(
        "--shared", type=Path, default=Path(os.environ.get("SD3D_SHARED", REPO.parent / "shared"))
    )
    ap.add_argument("--cache", type=Path, default=None, help="GT render cache (default: <out>/cache)")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "bench-robustness")
    ap.add_argument("--no-warmup", action="store_true", help="skip the short CUDA warm-up fit per worker")
    ap.add_argument(
        "--cuda-graph",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train with the steps replayed from CUDA graphs (default: as sd3d, on with a CUDA device)",
    )
    args = ap.parse_args(argv)

    import torch

    from sd3d.core.device import resolve_device
    from sd3d.core.errors import UserError

    try:
        perturbations = [Perturbation.parse(s, seed=args.seed) for s in args.perturbations]
    except ValueError as exc:
        ap.error(str(exc))
    try:
        overrides = parse_overrides(args.overrides, args.plain)
    except ValueError as exc:
        ap.error(str(exc))
    unknown = [o for o in args.objects if o not in OBJECTS]
    if unknown:
        ap.error(f"unknown object {unknown[0]!r}: choose from {', '.join(OBJECTS)}")
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")
    try:
        device = resolve_device(args.device)
        settings = OverriddenSettings(args.quality, args.steps, overrides=tuple(overrides))
        settings.preset(device)  # a bad --quality/--steps/--set fails here, before any work
    except (UserError, ValueError) as exc:
        ap.error(str(exc))
    if args.jobs == 1:
        threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))
    else:
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)

    objects = list(args.objects)
    if not args.shared.is_dir():
        missing = [o for o in objects if o in SHARED_OBJECTS]
        if missing and args.objects != list(OBJECTS):
            ap.error(
                f"{', '.join(missing)} need the shared folder, not found at {args.shared} (set SD3D_SHARED)"
            )
        if missing:
            print(f"skipping {', '.join(missing)}: shared folder not found at {args.shared}", file=sys.stderr)
        objects = [o for o in objects if o not in SHARED_OBJECTS]
    config = {
        "quality": args.quality,
        "steps": args.steps,
        "seed": args.seed,
        "overrides": overrides,
        "masks": args.masks,
        "consistency": args.consistency,
        "metric_samples": args.metric_samples,
        "iou_grid": args.iou_grid,
        "figure_size": args.figure_size,
        "cuda_graph": args.cuda_graph,
    }
    cache = args.cache or args.out / "cache"
    args.out.mkdir(parents=True, exist_ok=True)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    tasks, kept = [], []
    for obj in objects:
        for pert in perturbations:
            cid = case_id(obj, pert)
            if not any(fnmatch.fnmatch(cid, pat) for pat in args.cases):
                continue
            json_path = args.out / "cases" / f"{obj}__{pert.slug}.json"
            if args.resume and json_path.is_file():
                old = json.loads(json_path.read_text())
                if old.get("config") == json.loads(json.dumps(config)) and old.get("status") == "ok":
                    kept.append(old)
                    continue
            tasks.append({"object": obj, "perturbation": dataclasses.asdict(pert)})
    if not tasks and not kept:
        ap.error("no case matches --objects / --perturbations / --cases")
    views_of = {
        o: str(cached_views(o, args.shared, cache, str(device))) for o in {t["object"] for t in tasks}
    }
    for task in tasks:
        task.update(
            config=config,
            device=str(device),
            views=views_of[task["object"]],
            shared=str(args.shared),
            out=str(args.out),
            figures=args.figures,
        )
    print(f"{len(tasks)} case(s) to run, {len(kept)} kept from earlier runs; {args.jobs} job(s)", flush=True)

    rows = list(kept)

    def report(row: dict) -> None:
        rows.append(row)
        if row["status"] == "ok":
            print(
                f"{row['case']:24s} chamfer {row['chamfer']:.4f}  F@0.01 {row['fscore_0.01']:.3f}  "
                f"IoU {row['volume_iou']:.3f}  normal {row['normal_deg']:.1f}°  "
                f"app {_fmt(row['app_psnr'], '.2f')} dB  time {row['seconds_total']:.1f}s",
                flush=True,
            )
        else:
            print(f"{row['case']:24s} {row['status']}", flush=True)

    warm = None if args.no_warmup or device.type != "cuda" else next(iter(views_of.values()), None)
    if args.jobs == 1:
        _init_worker(threads, str(device), 1, None, warm)
        for task in tasks:
            report(run_case(task))
    else:
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        with ProcessPoolExecutor(
            max_workers=args.jobs,
            mp_context=context,
            initializer=_init_worker,
            initargs=(threads, str(device), gpus, context.Value("i", 0), warm),
        ) as pool:
            futures = [pool.submit(run_case, task) for task in tasks]
            for future in as_completed(futures):
                report(future.result())

    order = {case_id(o, p): (i, j) for i, o in enumerate(objects) for j, p in enumerate(perturbations)}
    rows.sort(key=lambda r: order.get(r["case"], (len(order), 0)))
    summary = {
        "config": config,
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "jobs": args.jobs,
        "threads_per_job": threads,
        "rows": [{k: v for k, v in r.items() if k not in ("record", "app_per_view", "preset")} for r in rows],
    }
    from sd3d.core.io import write_bytes_atomic, write_json_atomic

    write_json_atomic(args.out / "results.json", summary)
    write_bytes_atomic(args.out / "results.md", markdown_table(rows, config).encode())
    print(f"wrote {args.out / 'results.md'} and {args.out / 'results.json'}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
