"""Set-up of the Ray worker processes in tests (``worker_process_setup_hook``).

Every worker gets the object-decoder double (tests/support/object_decoder.py) and a smaller
``draft`` reconstruction preset (these tests check scheduling, faults and storage; the preset's own
quality is tested elsewhere, and the smaller one more than halves the CPU time per image). One-shot faults:
when the folder named by ``SD3D_TEST_FAULTS`` holds a file ``kill-<step>``, the first worker process
that reaches that step deletes the file, writes ``killed-<step>`` (its pid) and kills itself with
SIGKILL, as a crash or the kernel's out-of-memory killer would. Steps: ``reconstruct`` (inside a
GPU worker's call) and ``export`` (inside the CPU task, after it wrote part of its result folder).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from support import object_decoder


def _maybe_die(step: str) -> None:
    folder = os.environ.get("SD3D_TEST_FAULTS")
    if not folder:
        return
    try:
        (Path(folder) / f"kill-{step}").unlink()  # only one process wins the unlink
    except FileNotFoundError:
        return
    (Path(folder) / f"killed-{step}").write_text(str(os.getpid()))
    os.kill(os.getpid(), signal.SIGKILL)


def setup() -> None:
    from dataclasses import replace

    import recon.presets
    import sd3d.workflows.run

    object_decoder.install()
    draft = recon.presets.PRESETS["draft"]
    recon.presets.PRESETS["draft"] = replace(
        draft, init_steps=40, occupancy_res=48, mesh_res=64, texture_size=128, rays_per_batch=256
    )
    reconstruct, export = sd3d.workflows.run.reconstruct_views, sd3d.workflows.run.export_mesh

    def reconstruct_views(*args, **kwargs):
        _maybe_die("reconstruct")
        return reconstruct(*args, **kwargs)

    def export_mesh(*args, **kwargs):
        _maybe_die("export")
        return export(*args, **kwargs)

    sd3d.workflows.run.reconstruct_views = reconstruct_views
    sd3d.workflows.run.export_mesh = export_mesh  # the name write_run_folder calls
