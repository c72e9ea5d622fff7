"""Importing a module that a command needs later on a background thread, while it does other work.

Why: a cold ``sd3d reconstruct`` on the GPU machines spent 1.3-2.7 s importing our modules and
their dependencies before its first step (benchmarks/RESULTS.md, sessions 11-13), and trimesh,
needed only to write the mesh at the end, was 0.85 s of it on one H100. The modules that need it
late therefore import it where they use it (``recon.export``, ``recon.raster``), and
:func:`recon.pipeline.export_mesh` starts its import as the UV unwrap starts: the main thread then
waits for xatlas' child process (about a second) and holds no GIL. Not earlier, during training:
measured there, the GPU fit's host thread needs the GIL before every step, and the import slowed the
step loop by as much as it saved (session 13).

Python's import system is thread-safe: a main thread that reaches ``import trimesh`` while the
background import runs waits for it and gets the same module. A failing background import is
ignored; the import where the module is used raises the error, with its usual traceback.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import threading


def import_in_background(*names: str) -> threading.Thread | None:
    """Start importing ``names`` (in order) on a daemon thread; ``None`` if all are imported already.

    Returns the thread (``join()`` waits for the imports)."""
    missing = [name for name in names if name not in sys.modules]
    if not missing:
        return None

    def work() -> None:
        for name in missing:
            # a failure is reported by the import where the module is used
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    thread = threading.Thread(target=work, name="sd3d-background-import", daemon=True)
    thread.start()
    return thread
