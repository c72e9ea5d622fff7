"""Elevation estimation on the shared objects: 4 objects x input-e{0,15,30,45}.png, GT views.

    OMP_NUM_THREADS=1 python benchmarks/elevation.py [--shared ../shared] [--json out.json]

Each input goes through ``sd3d.preprocess.prepare_input`` (recentred to 256x256, object 200 px, as
the generator sees it) and its alpha is compared with the visual hull of the object's 16 GT views
(``views/000..015.png``). Prints a markdown table (paste into benchmarks/RESULTS.md); the bar is
within +-5 deg in at least 14 of the 16 cases and under 2 s per estimate on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OBJECTS = ("spot", "bob", "duck", "banana")
ELEVATIONS = (0, 15, 30, 45)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shared", type=Path, default=Path(os.environ.get("SD3D_SHARED", REPO.parent / "shared"))
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write every case (with score curves) here"
    )
    args = parser.parse_args(argv)

    import torch

    from sd3d.core.io import read_views
    from sd3d.preprocess import prepare_input
    from sd3d.workflows.elevation import estimate_elevation

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows, cases = [], []
    for name in OBJECTS:
        folder = args.shared / "data" / "objects" / name / "views"
        for true in ELEVATIONS:
            t0 = time.perf_counter()
            views = read_views(folder)
            prepared = prepare_input(folder / f"input-e{true}.png", crop_size=200, background="alpha")
            est = estimate_elevation(prepared.rgba[..., 3].astype("float32") / 255.0, views)
            total = time.perf_counter() - t0
            err = est.elevation_deg - true
            rows.append((name, true, est.elevation_deg, err, est.score, est.seconds, total))
            cases.append({"object": name, "true_deg": true, "total_seconds": total, **est.as_dict()})
    within = sum(abs(r[3]) <= 5.0 for r in rows)
    print(
        f"Elevation estimation (GT views, prepared inputs); {platform.processor() or platform.machine()}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print()
    print("| object | true (deg) | estimate (deg) | error (deg) | score | estimate s | incl. reading s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, true, est, err, score, secs, total in rows:
        print(f"| {name} | {true} | {est:.1f} | {err:+.1f} | {score:.3f} | {secs:.2f} | {total:.2f} |")
    errors = [abs(r[3]) for r in rows]
    print()
    print(
        f"within +-5 deg: {within}/{len(rows)}; mean |error| {sum(errors) / len(errors):.2f} deg, "
        f"max {max(errors):.1f} deg; estimate time max {max(r[5] for r in rows):.2f} s"
    )
    if args.json:
        args.json.write_text(json.dumps(cases, indent=1) + "\n")
    return 0 if within >= 14 else 1


if __name__ == "__main__":
    raise SystemExit(main())
