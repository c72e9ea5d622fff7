"""The hash-grid kernel variants a small fit and its meshing launch, against those the warm-up
enumerates (tests/test_hash_grid_warmup.py). Runs in Triton's interpreter, which must be switched on
before Triton is imported, hence a script:

    TRITON_INTERPRET=1 python tests/support/hash_grid_fit_launches.py

prints one JSON object: ``{"launched": [variant key, ...], "enumerated": [variant key, ...]}``, each
key as a string (:func:`sd3d.core.triton_precompile.variant_key`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from recon.encoding import HashGridConfig  # noqa: E402
from recon.kernels import hash_grid  # noqa: E402
from recon.kernels.warmup import fit_variants  # noqa: E402
from recon.mesh import extract_mesh  # noqa: E402
from recon.presets import get_preset  # noqa: E402
from recon.train import train  # noqa: E402
from sd3d.core.io import read_views  # noqa: E402
from sd3d.core.triton_precompile import variant_key  # noqa: E402

# a small grid and large blocks: the interpreter runs each program in Python
GRID = HashGridConfig(n_levels=4, log2_hashmap_size=10, base_resolution=4, max_resolution=64)
BLOCK = 4096


def main() -> None:
    torch.set_num_threads(1)
    hash_grid.BLOCK = BLOCK
    launched: set[str] = set()
    run = hash_grid.run

    def recording(launch) -> None:
        launched.add(str(variant_key(launch)))
        run(launch)

    hash_grid.run = recording
    base = get_preset("draft")
    preset = replace(
        base,
        steps=6,
        init_steps=4,
        rays_per_batch=64,
        occupancy_res=16,
        occupancy_every=2,
        field=replace(base.field, grid=GRID, encoding_backend="triton"),
    )
    cpu = torch.device("cpu")
    out = train(read_views(REPO / "examples" / "spot"), preset, cpu, seed=0)
    extract_mesh(out.field, out.grid, 24, cpu)
    enumerated = [str(variant_key(launch)) for launch in fit_variants(GRID, block=BLOCK)]
    print(json.dumps({"launched": sorted(launched), "enumerated": enumerated}))


if __name__ == "__main__":
    main()
