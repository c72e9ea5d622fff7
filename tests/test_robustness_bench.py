"""benchmarks/robustness.py: ``--set`` parsing, and a CPU smoke run of one small procedural case."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from PIL import Image

from recon.presets import ROBUSTNESS_OFF, get_preset

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "robustness.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("robustness_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_set_overrides_parse_by_the_fields_type(bench):
    draft = get_preset("draft")
    out = bench.apply_overrides(
        draft,
        (
            ("w_eikonal", "0.05"),
            ("steps", "120"),
            ("max_samples_per_ray", "64"),  # int | None, currently None: typed by its annotation
            ("field.grid.n_levels", "6"),
            ("name", "probe"),
        ),
    )
    assert out.w_eikonal == 0.05 and isinstance(out.steps, int) and out.steps == 120
    assert out.max_samples_per_ray == 64 and out.field.grid.n_levels == 6 and out.name == "probe"
    assert out.field.grid.max_resolution == draft.field.grid.max_resolution  # the rest untouched
    assert bench.apply_overrides(out, (("max_samples_per_ray", "none"),)).max_samples_per_ray is None
    for key, value, message in (
        ("no_such_field", "1", "has no field"),
        ("steps", "1.5", "integer"),
        ("field", "3", "set one of its fields"),
        ("w_rgb", "none", "could not convert"),
    ):
        with pytest.raises(ValueError, match=message):
            bench.apply_overrides(draft, ((key, value),))


@dataclass(frozen=True)
class Knobs:
    """Field types a new Preset field may have."""

    on: bool = False
    scale: float = 1  # an int value, declared float
    mode: Literal["fast", "exact"] = "fast"
    weights: tuple[float, ...] = (1.0, 2.0)
    cap: int | None = None


def test_plain_switches_every_robustness_method_off_before_the_callers_items(bench):
    preset = get_preset("standard")
    plain = bench.apply_overrides(preset, tuple(bench.parse_overrides([], plain=True)))
    assert plain == replace(preset, **ROBUSTNESS_OFF)
    one_back = bench.apply_overrides(preset, tuple(bench.parse_overrides(["level_ramp=0.2"], plain=True)))
    assert one_back == replace(preset, **{**ROBUSTNESS_OFF, "level_ramp": 0.2})
    with pytest.raises(ValueError, match="KEY=VALUE"):
        bench.parse_overrides(["level_ramp"])


def test_every_field_type_parses_by_its_declaration(bench):
    assert bench.override(Knobs(), "on", "true").on is True
    assert bench.override(Knobs(True), "on", "0").on is False
    assert bench.override(Knobs(), "scale", "0.5").scale == 0.5
    assert bench.override(Knobs(), "mode", "exact").mode == "exact"
    assert bench.override(Knobs(), "weights", "0.5,3").weights == (0.5, 3.0)
    assert bench.override(Knobs(), "cap", "12").cap == 12
    for key, value, message in (("on", "maybe", "true/false"), ("mode", "slow", "choose from fast, exact")):
        with pytest.raises(ValueError, match=message):
            bench.override(Knobs(), key, value)


def test_cpu_smoke_run_writes_json_table_and_figure(bench, tmp_path, capsys):
    """One procedural case (no shared data needed), draft quality, 30 steps, a small export (the
    UV unwrap of the preset's 20k faces alone takes seconds): the whole chain, ~20 s of CPU time."""
    out = tmp_path / "out"
    code = bench.main(
        [
            "--quality", "draft", "--steps", "30", "--device", "cpu",
            "--objects", "cup", "--perturbations", "warp:2",
            "--set", "w_eikonal=0.05", "--set", "init_steps=50",
            "--set", "uv_max_faces=4000", "--set", "texture_size=256",
            "--metric-samples", "20000", "--iou-grid", "64", "--figure-size", "32",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr()
    row = json.loads((out / "cases" / "cup__warp-2.json").read_text())
    assert row["status"] == "ok" and row["case"] == "cup/warp-2"
    assert row["preset"]["w_eikonal"] == 0.05 and row["preset"]["steps"] == 30  # --set reached training
    assert row["faces"] <= 4000  # ... and the export
    assert 0 < row["chamfer"] < 0.2 and 0 <= row["fscore_0.01"] <= 1 and 0 <= row["volume_iou"] <= 1
    assert 0 < row["normal_deg"] < 90 and row["app_psnr"] > 5 and 0 < row["app_ssim"] <= 1
    assert len(row["app_per_view"]) == 16
    assert all(v["max_displacement_px"] == pytest.approx(2.0) for v in row["record"]["per_view"])
    for stage in ("perturb", "reconstruct", "recon_train", "geometry_metrics", "appearance", "total"):
        assert row["seconds"][stage] > 0
    table = (out / "results.md").read_text()
    assert "| cup/warp-2 | local warp: max 2 px" in table and "w_eikonal=0.05" in table
    summary = json.loads((out / "results.json").read_text())
    assert [r["case"] for r in summary["rows"]] == ["cup/warp-2"]
    figure = np.asarray(Image.open(out / "figures" / "cup__warp-2.png"))
    assert figure.shape == (64, 16 * 32, 3)
    assert (out / "meshes" / "cup__warp-2.glb").is_file()
    assert len(list((out / "cache").glob("cup-*/views/0*.png"))) == 16


def test_cold_cli_runs_the_command_and_reports_its_wall_time():
    """benchmarks/cold_cli.py: the command's own output and exit code, then one JSON line."""
    script = SCRIPT.parent / "cold_cli.py"
    res = subprocess.run(
        [sys.executable, str(script), "--version"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("cold_cli ")
    record = json.loads(last.removeprefix("cold_cli "))
    assert record["rc"] == 0 and record["argv"] == ["--version"] and record["peak_gib"] is None
    assert record["split_s"] is None  # only reconstruct is split into its parts
    assert 0 < record["wall_s"] <= record["since_exec_s"] < 120
    bad = subprocess.run(
        [sys.executable, str(script), "reconstruct"], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and json.loads(bad.stdout.strip().splitlines()[-1][9:])["rc"] == 2


def test_cold_cli_splits_a_reconstruction_at_its_marks():
    """The split adds up to the wall time: before the reconstruction, in it, in the export, after."""
    spec = importlib.util.spec_from_file_location("cold_cli", SCRIPT.parent / "cold_cli.py")
    cold_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cold_cli)
    marks = {"reconstruct_start": 5.0, "reconstruct_end": 21.0, "export_start": 21.0, "export_end": 25.5}
    assert cold_cli._split(marks, 26.0) == {"before": 5.0, "reconstruct": 16.0, "export": 4.5, "after": 0.5}
    assert cold_cli._split({"reconstruct_start": 5.0}, 6.0) is None  # failed before the export ended
    marks.update(imports_start=0.1, torch_imported=3.1, modules_imported=4.0)
    before = cold_cli._before(marks)
    assert before == {"to_imports": 0.1, "import_torch": 3.0, "import_modules": 0.9, "command": 1.0}
    assert sum(before.values()) == pytest.approx(marks["reconstruct_start"])
    assert cold_cli._before({"reconstruct_start": 5.0}) is None  # not a reconstruct: nothing imported first
