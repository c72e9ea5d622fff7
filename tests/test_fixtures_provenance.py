"""The in-repository reference fixtures are byte-for-byte copies of the shared originals.

The parity suite reads ``tests/fixtures/`` so that it runs without ``../shared``; this test catches a
copy that drifted from (or was never refreshed after) a correction of the shared reference.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
COPIES = sorted(p for p in FIXTURES.rglob("*") if p.is_file() and p.name != "README.md")
ORIGIN = {"reference": ("reference",), "testset": ("data", "testset")}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fixtures_are_present():
    names = {p.relative_to(FIXTURES).as_posix() for p in COPIES}
    assert "reference/syncdreamer-golden-synthetic.npz" in names
    assert "reference/zero123-golden-synthetic.npz" in names
    assert "reference/syncdreamer-official-buffers.npz" in names
    assert {"testset/alarm.png", "testset/aircraft.png", "testset/kettle.png"} <= names


@pytest.mark.parametrize("copy", COPIES, ids=lambda p: p.relative_to(FIXTURES).as_posix())
def test_fixture_equals_its_shared_original(copy: Path, shared_dir: Path):
    origin = shared_dir.joinpath(*ORIGIN[copy.parent.name], copy.name)
    if not origin.is_file():
        pytest.fail(f"{copy.name}: no original at {origin}")
    assert _sha256(copy) == _sha256(origin), f"{copy} differs from {origin}: copy it again"
