"""Safe checkpoint loading (``sd3d.weights.load_state_dict``) and ``require``.

The malicious-pickle tests build files whose unpickling would create a marker file if any pickle
code ran; the marker must stay absent while the tensors still load (or a one-line WeightsError).
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from support.memory_maps import is_mapped_from

from sd3d.core.errors import WeightsError
from sd3d.weights import load_state_dict, require, resolve_weights_dir, safe_unpickle
from sd3d.weights.registry import REGISTRY


def _tensors() -> OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return OrderedDict(
        [
            ("model.diffusion_model.conv.weight", torch.randn(4, 3, 3, 3, generator=g)),
            ("model.diffusion_model.conv.bias", torch.randn(4, generator=g).half()),
            ("model_ema.num_updates", torch.tensor(12345, dtype=torch.int32)),
            ("first_stage_model.scale", torch.randn(2, 2, generator=g).to(torch.bfloat16)),
        ]
    )


def _assert_same(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        assert loaded[key].dtype == value.dtype, key
        assert torch.equal(loaded[key], value), key


class MarkerWriter:
    """Unpickling an instance would create ``path`` (through ``os.system``) if pickle code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class ExecMarker:
    """Unpickling runs ``exec`` of Python that writes the marker, if pickle code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({str(self.path)!r}, 'w').write('pwned')",))


class FakeModelCheckpoint:
    """Stands for Lightning's ModelCheckpoint callback; its ``__setstate__`` must never run."""

    def __init__(self) -> None:
        self.best_model_path = "/somewhere/epoch=3.ckpt"
        self.monitor = "val/loss"

    def __setstate__(self, state):  # pragma: no cover - proving it is never called
        raise AssertionError("a pickled class was imported and its __setstate__ ran")


# --------------------------------------------------------------------------------------------------
# plain files
# --------------------------------------------------------------------------------------------------
def test_plain_state_dict_zip_is_memory_mapped_and_exact(tmp_path: Path) -> None:
    path = tmp_path / "plain.pth"
    torch.save(_tensors(), path)
    loaded = load_state_dict(path)
    _assert_same(loaded, _tensors())
    # memory-mapped: every tensor's bytes lie inside a mapping of the checkpoint file itself
    assert all(is_mapped_from(t, path) for t in loaded.values())


def test_legacy_torch_format_and_parameters(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    state = {"w": torch.nn.Parameter(torch.arange(6.0).reshape(2, 3)), "b": torch.zeros(3)}
    torch.save(state, path, _use_new_zipfile_serialization=False)
    loaded = load_state_dict(path)
    assert type(loaded["w"]) is torch.Tensor and not loaded["w"].requires_grad
    assert torch.equal(loaded["w"], torch.arange(6.0).reshape(2, 3))
    assert torch.equal(loaded["b"], torch.zeros(3))


def test_safetensors_file(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file(dict(_tensors()), str(path))
    _assert_same(dict(sorted(load_state_dict(path).items())), dict(sorted(_tensors().items())))
    # the kind comes from the bytes, not the suffix
    renamed = tmp_path / "model.bin"
    path.rename(renamed)
    assert set(load_state_dict(renamed)) == set(_tensors())


def test_lightning_checkpoint_with_foreign_objects_loads_its_tensors(tmp_path: Path) -> None:
    """Like Zero123's .ckpt: a callback object, numpy scalars, an int32 tensor, optimizer state."""
    path = tmp_path / "zero123-like.ckpt"
    ckpt = {
        "epoch": 7,
        "global_step": np.int64(105000),
        "pytorch-lightning_version": "1.4.2",
        "state_dict": _tensors(),
        "callbacks": {FakeModelCheckpoint: FakeModelCheckpoint()},
        "optimizer_states": [{"state": {0: {"exp_avg": torch.ones(3)}}, "lr": np.float64(1e-4)}],
        "hyper_parameters": {"array": np.arange(3), "dtype": np.dtype("float32")},
    }
    torch.save(ckpt, path)
    with pytest.raises(pickle.UnpicklingError):  # torch's own safe mode refuses this file ...
        torch.load(path, weights_only=True)
    _assert_same(load_state_dict(path), _tensors())  # ... ours returns the tensors


def test_placeholders_record_what_they_replace() -> None:
    blob = pickle.dumps({"cb": FakeModelCheckpoint(), "n": np.float32(2.5), "s": {1, 2}}, protocol=2)
    obj = safe_unpickle.loads(blob)
    assert isinstance(obj["cb"], safe_unpickle.InertGlobal)
    assert obj["cb"].refused.endswith("FakeModelCheckpoint")
    assert obj["cb"].state == {"best_model_path": "/somewhere/epoch=3.ckpt", "monitor": "val/loss"}
    assert obj["n"] == np.float32(2.5) and obj["s"] == {1, 2}


# --------------------------------------------------------------------------------------------------
# malicious pickles
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("payload", [MarkerWriter, ExecMarker])
def test_malicious_checkpoint_is_not_executed(tmp_path: Path, payload: type) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": _tensors(), "hook": payload(marker), "nested": [payload(marker)]}, path)
    loaded = load_state_dict(path)
    assert not marker.exists()
    _assert_same(loaded, _tensors())


def test_malicious_object_inside_state_dict_is_dropped_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    state = OrderedDict(_tensors())
    state["evil"] = MarkerWriter(marker)
    torch.save(state, path)
    loaded = load_state_dict(path)
    assert not marker.exists()
    _assert_same(loaded, _tensors())


@pytest.mark.parametrize("payload", [MarkerWriter, ExecMarker])
def test_malicious_raw_pickle_gives_weights_error(tmp_path: Path, payload: type) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps({"state_dict": payload(marker)}, protocol=2))
    with pytest.raises(WeightsError) as err:
        load_state_dict(path)
    assert not marker.exists()
    assert "\n" not in str(err.value) and str(path) in str(err.value)


# --------------------------------------------------------------------------------------------------
# unreadable files
# --------------------------------------------------------------------------------------------------
def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated_zip(tmp_path: Path) -> Path:
    src = tmp_path / "full.ckpt"
    torch.save({"state_dict": _tensors()}, src)
    data = src.read_bytes()
    out = tmp_path / "truncated.ckpt"
    out.write_bytes(data[: len(data) // 2])
    return out


def _corrupt_member(tmp_path: Path) -> Path:
    src = tmp_path / "full.ckpt"
    torch.save({"state_dict": _tensors()}, src)
    out = tmp_path / "badpkl.ckpt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, b"\x80\x02garbage" if info.filename.endswith("data.pkl") else data)
    return out


@pytest.mark.parametrize(
    "make",
    [
        lambda d: d / "absent.ckpt",
        lambda d: _write(d / "empty.ckpt", b""),
        lambda d: _write(d / "text.pt", b"not a checkpoint\n"),
        lambda d: _write(d / "noise.bin", np.random.default_rng(0).bytes(4096)),
        lambda d: _write(d / "bad.safetensors", (64).to_bytes(8, "little") + b"{" + b"x" * 80),
        _truncated_zip,
        _corrupt_member,
        lambda d: torch.save([torch.ones(2)], d / "list.pt") or d / "list.pt",
        lambda d: torch.save({"model": {"w": torch.ones(1)}}, d / "nested.pt") or d / "nested.pt",
    ],
    ids=["missing", "empty", "text", "noise", "bad-safetensors", "truncated", "bad-pickle", "list", "nested"],
)
def test_unreadable_files_give_one_line_weights_error(tmp_path: Path, make) -> None:
    path = make(tmp_path)
    with pytest.raises(WeightsError) as err:
        load_state_dict(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message


# --------------------------------------------------------------------------------------------------
# require / weights folder
# --------------------------------------------------------------------------------------------------
def test_require_returns_present_file_and_explains_missing_one(tmp_path: Path) -> None:
    entry = REGISTRY["syncdreamer"]
    with pytest.raises(WeightsError) as err:
        require("syncdreamer", tmp_path)
    expected = tmp_path / entry.filename
    assert str(err.value) == (
        f"missing syncdreamer-pretrain.ckpt (expected at {expected}); "
        "get it with: sd3d weights download syncdreamer"
    )
    expected.write_bytes(b"x")
    assert require("syncdreamer", tmp_path) == expected
    with pytest.raises(WeightsError, match="unknown weights 'nope'"):
        require("nope", tmp_path)


def test_weights_dir_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SD3D_WEIGHTS", raising=False)
    assert resolve_weights_dir() == tmp_path / "home" / ".cache" / "sd3d"
    (tmp_path / "weights").mkdir()
    assert resolve_weights_dir().resolve() == (tmp_path / "weights").resolve()
    monkeypatch.setenv("SD3D_WEIGHTS", str(tmp_path / "env"))
    assert resolve_weights_dir() == tmp_path / "env"
    assert resolve_weights_dir(tmp_path / "flag") == tmp_path / "flag"
