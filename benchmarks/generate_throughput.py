"""Generation throughput over many photos in one process: images per hour for 1, 4 and 16 photos.

    python benchmarks/generate_throughput.py --json out.json                        # CUDA, full size
    python benchmarks/generate_throughput.py --device cpu --config tiny --steps 2 --counts 1 2   # smoke

Why: #14 asks for ``sd3d batch``'s generation throughput (images/hour, generation only) for 1, 4
and 16 images, next to ``--samples N``'s cost. One process loads the model once (the official-size
synthetic weights of docs/reference/syncdreamer.md §7.2 by default, prepared for inference as
``sd3d.pipelines.syncdreamer.load_model`` does), prepares the synthetic photos of
``benchmarks/batch_engines.py`` and generates one 16-view set per photo, one photo after another as
``sd3d batch`` does (50 DDIM steps, cfg 2, elevation 30 deg, the defaults otherwise). A first
generation warms the process (CUDA graph capture, kernel loads) and is reported on its own; each
count is then timed from its first photo to its last views on the host (the device synchronised).
Peak memory is ``torch.cuda.max_memory_allocated``. ``--samples`` runs the same with N samples per
photo (images/hour then counts photos, sets/hour counts view sets).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO / "tests"))


def main(argv: list[str] | None = None) -> int:
    from generate import add_model_arguments

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser, shared=False)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--samples", type=int, default=1, help="samples per photo")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch
    from batch_engines import make_photos

    from sd3d.core.device import resolve_device
    from sd3d.models.configs import config_by_name
    from sd3d.models.inference import prepare_for_inference
    from sd3d.models.syncdreamer_checkpoint import load_syncdreamer
    from sd3d.models.synthetic import synthetic_state_dict
    from sd3d.pipelines.syncdreamer import GenerationSettings, sample_views
    from sd3d.preprocess import prepare_input

    device = resolve_device(args.device)
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    t0 = time.perf_counter()
    config = config_by_name(args.config)
    weight_dtype = torch.bfloat16 if cuda else torch.float32
    model = prepare_for_inference(
        load_syncdreamer(synthetic_state_dict(config), config, device, weight_dtype), weight_dtype
    )
    gc.collect()
    print(f"# model built in {time.perf_counter() - t0:.1f} s on {device}", flush=True)
    photos = make_photos(Path(tempfile.mkdtemp(prefix="sd3d-throughput-")), max(args.counts))
    prepared = [prepare_input(p) for p in photos]
    settings = GenerationSettings(steps=args.steps, samples=args.samples)

    sync()
    t0 = time.perf_counter()
    sample_views(model, prepared[0], settings)
    sync()
    result: dict = {
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__,
        "config": args.config,
        "steps": args.steps,
        "samples": args.samples,
        "first_generation_s": time.perf_counter() - t0,
        "rows": [],
    }
    print(f"# first generation (warm-up): {result['first_generation_s']:.2f} s", flush=True)
    for count in args.counts:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        per_photo = []
        sync()
        start = time.perf_counter()
        for photo in prepared[:count]:
            t = time.perf_counter()
            sample_views(model, photo, settings)
            sync()
            per_photo.append(time.perf_counter() - t)
        total = time.perf_counter() - start
        row = {
            "photos": count,
            "seconds": total,
            "median_s_per_photo": statistics.median(per_photo),
            "images_per_hour": 3600 * count / total,
            "sets_per_hour": 3600 * count * args.samples / total,
            "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
        }
        result["rows"].append(row)
        print(
            f"{count:3d} photo(s) x {args.samples} sample(s): {total:.2f} s, "
            f"{row['median_s_per_photo']:.3f} s per photo (median), {row['images_per_hour']:.0f} images/h"
            + (f", peak {row['peak_gib']:.2f} GiB" if cuda else ""),
            flush=True,
        )
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
