"""Hub-hosted weights against a fake Hugging Face Hub on 127.0.0.1 (tests/support/fake_hub.py).

A small registered file stands in for the SyncDreamer checkpoint: hosted in a Hugging Face *space*,
in a subfolder, like ``liuyuan-pal/SyncDreamer``'s ``ckpt/syncdreamer-pretrain.ckpt``. Every test runs
with its own Hugging Face cache, home folder (sd3d's stamps) and working directory. huggingface_hub
reads ``HF_HOME``/``HF_ENDPOINT``/``HF_HUB_OFFLINE`` at import, so in-process tests patch its
``constants`` or pass explicit arguments, and the tests of those variables run ``sd3d`` in a fresh
interpreter (tests/support/extra_weights.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import MappingProxyType, SimpleNamespace

import numpy as np
import pytest
from huggingface_hub import constants, file_download

from sd3d.core.errors import WeightsError
from sd3d.weights import REGISTRY, HubFile, WeightsEntry, locate, registry, require
from sd3d.weights.download import download
from sd3d.weights.hub import cached_file, file_url, stamp_for
from sd3d.weights.verify import file_status, verify_file
from tests.support.fake_hub import HubScript, serve
from tests.support.local_http import closed_port_url

REPO_ROOT = Path(__file__).resolve().parents[1]
CONTENT = np.random.default_rng(11).bytes(300_000)
SHA = hashlib.sha256(CONTENT).hexdigest()
HUB = HubFile(repo_id="me/Tiny", filename="tiny.ckpt", repo_type="space", subfolder="ckpt")
ENTRY = WeightsEntry(
    name="tiny-hub",
    filename="tiny.ckpt",
    size=len(CONTENT),
    sha256=SHA,
    url="https://huggingface.co/spaces/me/Tiny/resolve/main/ckpt/tiny.ckpt",
    licence="test",
    needed_by="tests",
    hub=HUB,
)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A clean world: own HF cache, home (sd3d's stamps, ~/.cache/sd3d), cwd without ./weights."""
    tmp_path = tmp_path.resolve()  # huggingface_hub returns resolved paths
    hf_cache, home, work = tmp_path / "hf" / "hub", tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SD3D_WEIGHTS", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # no user-agent telemetry: it would look up huggingface.co (the real one) once per process
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    # 64 KiB reads instead of 10 MB, so a cut inside this small file falls after whole chunks
    # (the library resumes from the last chunk it handed over).
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 65536)
    monkeypatch.setattr(registry, "REGISTRY", MappingProxyType({**registry.REGISTRY, ENTRY.name: ENTRY}))
    return SimpleNamespace(hf_cache=hf_cache, home=home, work=work, default=home / ".cache" / "sd3d")


@pytest.fixture
def hub(env) -> SimpleNamespace:
    script = HubScript(CONTENT, HUB.repo_id, HUB.path_in_repo, repo_type=HUB.repo_type)
    with serve(script) as endpoint:
        yield SimpleNamespace(script=script, endpoint=endpoint)


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def _snapshot(env, script: HubScript) -> Path:
    return env.hf_cache / "spaces--me--Tiny" / "snapshots" / script.commit / "ckpt" / "tiny.ckpt"


# --------------------------------------------------------------------------------------------------
# download into the Hugging Face cache
# --------------------------------------------------------------------------------------------------
def test_fresh_download_lands_in_the_hf_cache_and_is_used_in_place(env, hub) -> None:
    result = download("tiny-hub", hf_endpoint=hub.endpoint)
    assert result.downloaded and result.sha256 == SHA
    assert result.path == _snapshot(env, hub.script) and result.path.read_bytes() == CONTENT
    blob = env.hf_cache / "spaces--me--Tiny" / "blobs" / SHA  # the library names LFS blobs by sha256
    assert result.path.resolve() == blob
    # one HEAD of ours (fails fast without network), the library's HEAD, one GET of the whole file
    path = hub.script.url_path
    assert hub.script.requests == [("HEAD", path, None), ("HEAD", path, None), ("GET", path, None)]
    # the check is remembered outside the HF cache; nothing was written to sd3d's weights folder
    assert stamp_for(result.path).parent == env.default / "verified"
    assert [p.name for p in env.default.iterdir()] == ["verified"]
    assert file_status(ENTRY, result.path, stamp=stamp_for(result.path)).verified == "yes"

    # loading finds it in place, without a copy or any request
    assert require("tiny-hub") == result.path
    again = download("tiny-hub", hf_endpoint=hub.endpoint)
    assert not again.downloaded and again.path == result.path and len(hub.script.requests) == 3


def test_cut_connection_is_resumed_with_a_range_request(env, hub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(file_download, "time", SimpleNamespace(sleep=lambda _s: None))  # its 1 s pause
    hub.script.cuts = [200_000]  # the first GET breaks off after 200,000 of 300,000 bytes
    result = download("tiny-hub", hf_endpoint=hub.endpoint)
    assert result.path.read_bytes() == CONTENT and result.sha256 == SHA
    # the library asked for the rest from the last whole 64 KiB chunk it had written (3 x 65536)
    assert hub.script.gets() == [None, "bytes=196608-"]


def test_a_download_that_keeps_breaking_fails_in_one_line_and_the_next_call_completes(
    env, hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_download, "time", SimpleNamespace(sleep=lambda _s: None))  # no 1 s waits
    hub.script.cuts = [30_000] * 6  # the first try and 5 retries all break before a whole 64 KiB chunk
    with pytest.raises(WeightsError) as err:
        download("tiny-hub", hf_endpoint=hub.endpoint)
    message = _one_line(err)
    assert message.startswith("download of tiny.ckpt from 127.0.0.1:") and "run the same command" in message
    assert len(hub.script.gets()) == 6 and cached_file(HUB) is None
    with pytest.raises(WeightsError, match="^missing tiny.ckpt"):
        require("tiny-hub")

    result = download("tiny-hub", hf_endpoint=hub.endpoint)  # the server behaves again
    assert result.downloaded and result.path.read_bytes() == CONTENT


def test_offline_without_a_cached_file_fails_at_once_naming_host_and_place(env, hub) -> None:
    started = time.monotonic()
    with pytest.raises(WeightsError) as err:
        download("tiny-hub", hf_endpoint=hub.endpoint, hf_offline=True)
    assert time.monotonic() - started < 2.0
    message = _one_line(err)
    url = f"{hub.endpoint}/spaces/me/Tiny/resolve/main/ckpt/tiny.ckpt"
    assert message.startswith("cannot download tiny.ckpt from 127.0.0.1:") and "HF_HUB_OFFLINE" in message
    assert f"fetch {url} (Hugging Face space me/Tiny, file ckpt/tiny.ckpt) by hand" in message
    assert message.endswith(f"place it at {env.default / 'tiny.ckpt'}")
    assert hub.script.requests == []


def test_no_network_fails_at_once_without_the_librarys_back_off(env) -> None:
    started = time.monotonic()
    with pytest.raises(WeightsError) as err:
        download("tiny-hub", hf_endpoint=closed_port_url())
    assert time.monotonic() - started < 5.0  # hf_hub_download alone would retry for ~30 s
    message = _one_line(err)
    assert message.startswith("cannot download tiny.ckpt from 127.0.0.1:") and "ConnectError" in message
    assert message.endswith(f"place it at {env.default / 'tiny.ckpt'}")
    assert not env.hf_cache.exists()


def test_offline_with_a_cached_file_succeeds_and_verifies_it(env, hub) -> None:
    path = download("tiny-hub", hf_endpoint=hub.endpoint).path
    stamp = stamp_for(path)
    stamp.unlink()  # forget the check: an offline "download" must verify the cached file again
    seen = len(hub.script.requests)

    result = download("tiny-hub", hf_endpoint=hub.endpoint, hf_offline=True)
    assert not result.downloaded and result.path == path and result.sha256 == SHA
    assert stamp.is_file() and len(hub.script.requests) == seen

    # the cached bytes change on disk (same size): offline, the file is refused, by download and loading
    data = bytearray(CONTENT)
    data[1234] ^= 0xFF
    path.resolve().write_bytes(bytes(data))
    with pytest.raises(WeightsError) as err:
        download("tiny-hub", hf_endpoint=hub.endpoint, hf_offline=True)
    message = _one_line(err)
    assert message.startswith(f"sha256 mismatch for tiny.ckpt found in the Hugging Face cache ({path})")
    assert "sd3d will not use it" in message
    with pytest.raises(WeightsError, match="^sha256 mismatch for tiny.ckpt found"):
        require("tiny-hub")


def test_served_bytes_with_another_hash_are_left_in_the_cache_and_always_refused(env, hub) -> None:
    good = hub.script.content
    hub.script.content = bytes(reversed(good))  # same size, other bytes: a bad mirror or a new upload
    with pytest.raises(WeightsError) as err:
        download("tiny-hub", hf_endpoint=hub.endpoint)
    message = _one_line(err)
    bad_path = _snapshot(env, hub.script)
    assert message.startswith(
        f"sha256 mismatch for tiny.ckpt downloaded in the Hugging Face cache ({bad_path})"
    )
    assert f"expected {SHA}" in message and "--force" in message

    # documented choice: the file stays in the shared cache, and sd3d refuses it everywhere
    assert bad_path.is_file() and locate("tiny-hub").path == bad_path
    with pytest.raises(WeightsError, match="^sha256 mismatch for tiny.ckpt found"):
        require("tiny-hub")
    assert file_status(ENTRY, bad_path, stamp=stamp_for(bad_path)).verified == "MISMATCH"
    seen = len(hub.script.requests)
    with pytest.raises(WeightsError, match="^sha256 mismatch"):  # known bad: refused without re-fetching
        download("tiny-hub", hf_endpoint=hub.endpoint)
    assert len(hub.script.requests) == seen

    # accepting the other hash explicitly makes it usable, for loading too
    other = hashlib.sha256(hub.script.content).hexdigest()
    assert download("tiny-hub", hf_endpoint=hub.endpoint, sha256=other).sha256 == other
    assert require("tiny-hub") == bad_path

    # once the Hub serves the right bytes (a new commit), --force fetches them and they are used
    hub.script.content = good
    result = download("tiny-hub", hf_endpoint=hub.endpoint, force=True)
    assert result.downloaded and result.path == _snapshot(env, hub.script) != bad_path
    assert require("tiny-hub") == result.path and result.path.read_bytes() == CONTENT


def test_a_file_another_tool_cached_is_hashed_once_then_used_in_place(env, hub) -> None:
    from huggingface_hub import hf_hub_download

    path = Path(
        hf_hub_download(HUB.repo_id, HUB.filename, subfolder="ckpt", repo_type="space", endpoint=hub.endpoint)
    )
    assert path == _snapshot(env, hub.script) and not stamp_for(path).exists()
    assert require("tiny-hub") == path  # hashed now (the record appears), no copy, no request
    assert stamp_for(path).is_file() and len(hub.script.gets()) == 1
    assert file_status(ENTRY, path, stamp=stamp_for(path)).verified == "yes"


def test_wrong_size_or_missing_file_on_the_hub_stops_before_any_bytes_move(env, hub) -> None:
    hub.script.content = CONTENT[:-1]
    with pytest.raises(WeightsError) as err:
        download("tiny-hub", hf_endpoint=hub.endpoint)
    assert _one_line(err).endswith(
        "offers 299,999 bytes but tiny.ckpt has 300,000; wrong revision or mirror?"
    )
    hub.script.path_in_repo = "ckpt/other.ckpt"
    with pytest.raises(WeightsError) as err:
        download("tiny-hub", hf_endpoint=hub.endpoint)
    assert re.fullmatch(
        r"HTTP 404 from http://\S+/ckpt/tiny\.ckpt; fetch it by hand and place it at \S+", _one_line(err)
    )
    assert hub.script.gets() == [] and not env.hf_cache.exists()


# --------------------------------------------------------------------------------------------------
# an explicit weights folder, and the search order
# --------------------------------------------------------------------------------------------------
def test_explicit_weights_dir_gets_the_file_from_the_hub_url_not_the_cache(env, hub) -> None:
    folder = env.work / "mine"
    with pytest.raises(WeightsError) as err:  # offline: at once, naming where it would go
        download("tiny-hub", folder, hf_endpoint=hub.endpoint, hf_offline=True)
    assert _one_line(err).endswith(f"place it at {folder / 'tiny.ckpt'}") and hub.script.requests == []

    result = download("tiny-hub", folder, hf_endpoint=hub.endpoint)
    assert result.path == folder / "tiny.ckpt" and result.path.read_bytes() == CONTENT
    assert hub.script.requests == [("GET", hub.script.url_path, None)]  # the endpoint's resolve URL
    assert not env.hf_cache.exists()
    assert require("tiny-hub", folder) == result.path


def test_search_order_puts_the_hf_cache_after_chosen_folders_and_before_home(
    env, hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert locate("tiny-hub") is None
    hf_path = download("tiny-hub", hf_endpoint=hub.endpoint).path

    def place(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tiny.ckpt").write_bytes(CONTENT)
        return folder / "tiny.ckpt"

    home = place(env.default)  # ~/.cache/sd3d comes after the HF cache
    assert (locate("tiny-hub").source, locate("tiny-hub").path) == ("Hugging Face cache", hf_path)
    assert require("tiny-hub") == hf_path
    local = place(env.work / "weights")  # ./weights comes before it
    assert (locate("tiny-hub").source, require("tiny-hub")) == ("./weights", local)
    env_dir = place(env.work / "env")
    monkeypatch.setenv("SD3D_WEIGHTS", str(env_dir.parent))
    assert (locate("tiny-hub").source, require("tiny-hub")) == ("$SD3D_WEIGHTS", env_dir)
    flag = place(env.work / "flag")
    assert (locate("tiny-hub", flag.parent).source, require("tiny-hub", flag.parent)) == (
        "--weights-dir",
        flag,
    )
    # a chosen folder without the file still finds the HF copy; the default folder is then not searched
    assert require("tiny-hub", env.work / "empty") == hf_path
    assert home.is_file()


def test_a_folder_copy_known_to_be_bad_is_refused_and_does_not_hide_the_cached_one(env, hub) -> None:
    folder = env.work / "flag"
    folder.mkdir()
    bad = bytearray(CONTENT)
    bad[7] ^= 1
    (folder / "tiny.ckpt").write_bytes(bytes(bad))
    assert require("tiny-hub", folder) == folder / "tiny.ckpt"  # never checked: presence is enough
    assert not verify_file(ENTRY, folder / "tiny.ckpt").ok  # now it is known to be bad
    with pytest.raises(WeightsError) as err:
        require("tiny-hub", folder)
    assert _one_line(err).startswith(f"{folder / 'tiny.ckpt'} failed its sha256 check")
    cached = download("tiny-hub", hf_endpoint=hub.endpoint).path
    assert require("tiny-hub", folder) == cached


def test_syncdreamer_is_registered_with_its_space_location() -> None:
    entry = REGISTRY["syncdreamer"]
    assert entry.hub == HubFile(
        repo_id="liuyuan-pal/SyncDreamer",
        filename="syncdreamer-pretrain.ckpt",
        repo_type="space",
        subfolder="ckpt",
        revision="main",
    )
    assert entry.hub.filename == entry.filename
    assert file_url(entry.hub, "https://huggingface.co") == entry.url


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def test_cli_list_and_path_show_the_hf_cache_location(env, hub, run_cli) -> None:
    listed = run_cli("weights", "list")
    assert listed.code == 0 and f"Hugging Face cache: {env.hf_cache}" in listed.out, listed
    assert re.search(r"tiny-hub\s.*tiny\.ckpt.*\bno\b", listed.out), listed

    path = download("tiny-hub", hf_endpoint=hub.endpoint).path
    listed = run_cli("weights", "list")
    row = next(line for line in listed.out.splitlines() if "tiny-hub" in line)
    assert re.search(r"tiny\.ckpt.*\byes\b.*\byes\b.*Hugging Face cache:", row), listed
    # the path may be folded over several lines of its cell: compare without the table's borders
    cells = "".join(re.sub(r"[│\s]", "", line) for line in listed.out.splitlines())
    assert re.sub(r"\s", "", str(path)) in cells
    assert run_cli("weights", "path", "tiny-hub").out.strip() == str(path)
    checked = run_cli("-q", "weights", "verify", "tiny-hub")
    assert checked.code == 0 and checked.out.strip() == f"ok  tiny-hub  {path}", checked


def _sd3d(env_vars: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    entry = dataclasses.asdict(ENTRY)  # the hub location becomes a nested dict
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "SD3D_WEIGHTS"))}
    environ |= {"PYTHONPATH": str(REPO_ROOT), "SD3D_TEST_WEIGHTS_ENTRY": json.dumps(entry)}
    environ |= {"HF_HUB_DISABLE_TELEMETRY": "1", **env_vars}
    command = [sys.executable, "-m", "tests.support.extra_weights", "-q", *args]
    return subprocess.run(command, env=environ, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_follows_hf_home_endpoint_and_offline_variables(env, hub) -> None:
    """HF_HOME, HF_ENDPOINT and HF_HUB_OFFLINE as users set them, read by huggingface_hub at start."""
    hf_home = env.work.parent / "hf-home"
    base = {"HOME": str(env.home), "HF_HOME": str(hf_home), "HF_ENDPOINT": hub.endpoint}
    offline = {**base, "HF_HUB_OFFLINE": "1"}

    started = time.monotonic()
    failed = _sd3d(offline, "weights", "download", "syncdreamer", cwd=env.work)  # the real registry entry
    assert time.monotonic() - started < 30 and failed.returncode == 2, failed
    port = hub.endpoint.rsplit(":", 1)[1]
    assert failed.stderr.count("\n") == 1, failed
    assert failed.stderr.startswith(
        f"error: cannot download syncdreamer-pretrain.ckpt from 127.0.0.1:{port} (HF_HUB_OFFLINE"
    )
    assert f"it is not in the Hugging Face cache {hf_home / 'hub'})" in failed.stderr
    assert (
        "(Hugging Face space liuyuan-pal/SyncDreamer, file ckpt/syncdreamer-pretrain.ckpt)" in failed.stderr
    )
    assert failed.stderr.rstrip().endswith(f"place it at {env.default}/syncdreamer-pretrain.ckpt")
    assert hub.script.requests == []

    got = _sd3d(base, "weights", "download", "tiny-hub", cwd=env.work)
    assert got.returncode == 0, got
    path = Path(got.stdout.strip().splitlines()[-1])
    assert path.is_relative_to(hf_home / "hub") and path.read_bytes() == CONTENT
    stamp_for(path).unlink()

    again = _sd3d(offline, "weights", "download", "tiny-hub", cwd=env.work)
    assert again.returncode == 0 and again.stdout.strip() == f"already present: {path}", again
    assert stamp_for(path).is_file()  # verified again, offline
    assert len(hub.script.gets()) == 1, (got.stderr, hub.script.requests)
