"""3DiM consistency score on the shared objects: ground-truth views vs the same views made inconsistent.

For each object: the GT views, the GT views with two training views swapped (5 <-> 9), and the GT views
each rotated in-plane by +-5 degrees (alternating). The score (held-out PSNR/SSIM, fit on 12 views)
must drop for the perturbed sets: it measures consistency, not image quality.

    python benchmarks/consistency.py [--shared ../shared] [--quality draft] [--steps N] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # before benchmarks/ itself, whose recon.py would shadow the package

from recon.consistency import consistency_score  # noqa: E402
from sd3d.core.io import ViewSet, read_views  # noqa: E402

OBJECTS = ("spot", "bob", "duck", "banana")


def swapped(views: ViewSet, i: int = 5, j: int = 9) -> ViewSet:
    order = list(range(views.num_views))
    order[i], order[j] = j, i
    return replace(views, images=views.images[order], alphas=views.alphas[order])


def rotated(views: ViewSet, degrees: float = 5.0) -> ViewSet:
    images, alphas = [], []
    for k, (im, a) in enumerate(zip(views.images, views.alphas, strict=True)):
        rgba = np.concatenate([im, a[..., None]], -1)
        pil = Image.fromarray(np.rint(rgba * 255).astype(np.uint8), "RGBA")
        arr = np.asarray(pil.rotate(degrees if k % 2 == 0 else -degrees, resample=Image.BILINEAR))
        arr = arr.astype(np.float32) / 255.0
        alpha = arr[..., 3:]
        images.append(arr[..., :3] * alpha + (1.0 - alpha))
        alphas.append(alpha[..., 0])
    return replace(views, images=np.stack(images), alphas=np.stack(alphas))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    ap.add_argument("--quality", default="draft")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--objects", default=",".join(OBJECTS))
    ap.add_argument("--json", default=None, help="write all numbers to this file")
    args = ap.parse_args()
    rows = []
    for name in args.objects.split(","):
        gt = read_views(Path(args.shared) / "data" / "objects" / name / "views")
        for variant, views in (("gt", gt), ("swap 5<->9", swapped(gt)), ("rotate +-5 deg", rotated(gt))):
            t = time.perf_counter()
            r = consistency_score(views, quality=args.quality, steps=args.steps, seed=0, device=args.device)
            rows.append(
                {
                    "object": name,
                    "views": variant,
                    "psnr": r.mean_psnr,
                    "ssim": r.mean_ssim,
                    "per_view_psnr": list(r.psnr),
                    "seconds": time.perf_counter() - t,
                }
            )
            print(
                f"{name:8s} {variant:16s} PSNR {r.mean_psnr:6.2f}  SSIM {r.mean_ssim:.4f}  "
                f"({rows[-1]['seconds']:.1f} s)",
                flush=True,
            )
    print("\n| object | GT views PSNR / SSIM | swapped 5<->9 | rotated +-5 deg |\n|---|---|---|---|")
    for name in args.objects.split(","):
        cells = [f"{r['psnr']:.2f} / {r['ssim']:.3f}" for r in rows if r["object"] == name]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
