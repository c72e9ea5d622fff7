"""Compile, once, what the first import of sd3d's optional dependencies would otherwise compile.

    python scripts/warm_imports.py

Why: rembg imports pymatting, whose numba functions carry explicit signatures and so are compiled
when the module is imported: 48 s on a 2-core machine right after a fresh install, 1.5 s from then
on (numba keeps them in pymatting's ``__pycache__``; measured in session 17). Without this step the
first ``sd3d run`` or ``sd3d preprocess`` of a photo without an alpha channel stalls that long with
nothing on screen. ``make install`` runs it. Nothing to do where rembg is not installed; a failing
import only warns (exit 0): the background step reports its own errors when it is used.
"""

from __future__ import annotations

import importlib.util
import sys
import time


def main() -> int:
    if importlib.util.find_spec("rembg") is None:
        print("warm_imports: rembg is not installed; nothing to compile")
        return 0
    print(
        "warm_imports: importing rembg (its first import after an install compiles pymatting's numba "
        "kernels: about a minute on 2 cores)...",
        flush=True,
    )
    start = time.perf_counter()
    try:
        import rembg  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any failure here is reported, not fatal
        print(f"warm_imports: warning: importing rembg failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 0
    print(f"warm_imports: rembg ready in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
