"""trimesh is imported while the GPU works, not before the first step (sd3d.core.imports says why)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sd3d.core.imports import import_in_background

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "spot"


def _fresh(code: str) -> str:
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_the_commands_modules_import_no_trimesh_until_an_export_needs_it():
    """Importing the CLI, the reconstruction pipeline and the run workflow leaves trimesh out."""
    code = (
        "import sys; import cli.app, cli.reconstruct, recon.pipeline, sd3d.workflows.run; "
        "print('trimesh' in sys.modules)"
    )
    assert _fresh(code) == "False"


def test_export_imports_trimesh_in_the_background_while_xatlas_runs(tmp_path):
    """A two-step CPU fit of the example views, then a GLB: nothing imported trimesh before the
    export, the export started its import on the background thread, and the GLB was written."""
    code = (
        f"EXAMPLE, OUT = {str(EXAMPLE)!r}, {str(tmp_path / 'm.glb')!r}"
        + """
import sys, threading
from pathlib import Path
from recon.pipeline import export_mesh, reconstruct
from recon.presets import ReconSettings
names = []
real = threading.Thread.start
def start(self):
    names.append(self.name)
    return real(self)
threading.Thread.start = start
result = reconstruct(EXAMPLE, ReconSettings('draft', steps=2), device='cpu')
before = 'trimesh' in sys.modules
export_mesh(result, OUT, faces=2000)
print(before, names.count('sd3d-background-import'), Path(OUT).stat().st_size > 1000)
"""
    )
    assert _fresh(code) == "False 1 True"


def test_import_in_background_imports_and_skips_what_is_imported():
    assert import_in_background("sys", "os") is None  # nothing to do: no thread
    name = "sd3d_test_module_that_does_not_exist"
    thread = import_in_background("json", name)  # a failing import is left to the real import
    if thread is not None:
        thread.join(timeout=30)
        assert not thread.is_alive()
    assert "json" in sys.modules and name not in sys.modules
