"""``convert``: Lightning/torch checkpoint -> safetensors (fp32 exact, fp16/bf16 casts), mmap loading."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from support.memory_maps import is_mapped_from

from sd3d.core.errors import OutputPathError, WeightsError
from sd3d.weights import load_state_dict
from sd3d.weights.convert import convert_checkpoint


def _state() -> OrderedDict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return OrderedDict(
        [
            ("model.diffusion_model.out.weight", torch.randn(5, 3, generator=g)),
            ("model.diffusion_model.out.bias", torch.randn(5, generator=g).half()),
            ("model_ema.decay", torch.tensor(0.9999)),
            ("model_ema.num_updates", torch.tensor(7, dtype=torch.int32)),
            ("model_ema.diffusion_modelout.weight", torch.randn(5, 3, generator=g)),
            ("poses", torch.randn(16, 3, 4, generator=g, dtype=torch.float64)),
            ("mask", torch.tensor([True, False, True])),
            ("empty", torch.zeros(0, 4)),
        ]
    )


class Callback:
    """A pickled non-tensor object, as in official Lightning checkpoints."""

    def __init__(self) -> None:
        self.monitor = "loss"


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": _state(), "callbacks": {"cb": Callback()}, "global_step": 3}, path)
    return path


def test_fp32_copy_is_exact_aligned_and_memory_mapped(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    result = convert_checkpoint(ckpt, out)
    assert result.tensors == 8 and result.dropped == 0 and result.bytes == out.stat().st_size
    loaded = load_state_dict(out)
    assert set(loaded) == set(_state())
    for key, value in _state().items():
        expect = value.float() if value.is_floating_point() else value
        assert loaded[key].dtype == expect.dtype and torch.equal(loaded[key], expect), key
    # the official reader accepts the file and sees our metadata
    assert set(load_file(str(out))) == set(_state())
    header_len = int.from_bytes(out.read_bytes()[:8], "little")
    header = json.loads(out.read_bytes()[8 : 8 + header_len])
    assert header["__metadata__"] == {"format": "pt", "sd3d_source": "model.ckpt", "sd3d_dtype": "fp32"}
    # every tensor starts at a multiple of its element size, and loads by mapping the file
    assert (8 + header_len) % 8 == 0
    for key, info in header.items():
        if key != "__metadata__":
            assert info["data_offsets"][0] % loaded[key].element_size() == 0, key
    if Path("/proc/self/maps").exists():
        assert all(is_mapped_from(t, out) for t in loaded.values() if t.numel())


@pytest.mark.parametrize("dtype,torch_dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision_casts_floats_only(ckpt: Path, tmp_path: Path, dtype: str, torch_dtype) -> None:
    out = tmp_path / f"model-{dtype}.safetensors"
    result = convert_checkpoint(ckpt, out, dtype=dtype)
    loaded = load_state_dict(out)
    for key, value in _state().items():
        expect = value.to(torch_dtype) if value.is_floating_point() else value
        assert loaded[key].dtype == expect.dtype and torch.equal(loaded[key], expect), key
    fp32 = convert_checkpoint(ckpt, tmp_path / "fp32.safetensors")
    assert result.bytes < fp32.bytes


def test_drop_prefix_and_errors(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "unet.safetensors"
    result = convert_checkpoint(ckpt, out, drop_prefixes=["model_ema.", "poses"])
    assert result.dropped == 4 and set(load_state_dict(out)) == {
        "model.diffusion_model.out.weight",
        "model.diffusion_model.out.bias",
        "mask",
        "empty",
    }
    with pytest.raises(WeightsError, match="removed every tensor"):
        convert_checkpoint(ckpt, tmp_path / "none.safetensors", drop_prefixes=["m", "p", "e"])
    with pytest.raises(OutputPathError, match=r"must end in \.safetensors"):
        convert_checkpoint(ckpt, tmp_path / "x.ckpt")
    with pytest.raises(WeightsError, match="unknown dtype"):
        convert_checkpoint(ckpt, tmp_path / "x.safetensors", dtype="fp8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.ckpt", "unet.safetensors"]


def test_cli_convert(ckpt: Path, tmp_path: Path, run_cli) -> None:
    out = tmp_path / "c.safetensors"
    ok = run_cli(
        "-q", "weights", "convert", str(ckpt), str(out), "--dtype", "fp16", "--drop-prefix", "model_ema."
    )
    assert ok.code == 0 and ok.out.strip().splitlines()[-1].startswith(
        f"{out} (5 tensors, 3 dropped, fp16"
    ), ok
    for args in (
        (str(tmp_path / "absent.ckpt"), str(tmp_path / "o.safetensors")),
        (str(ckpt), str(tmp_path / "o.safetensors"), "--dtype", "int4"),
        (str(ckpt), str(tmp_path / "o.bin")),
        (str(tmp_path), str(tmp_path / "o.safetensors")),
    ):
        bad = run_cli("-q", "weights", "convert", *args)
        assert bad.code == 2 and bad.err.startswith("error: ") and bad.err.count("\n") == 1, bad
    assert "is a folder" in bad.err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors", "model.ckpt"]
