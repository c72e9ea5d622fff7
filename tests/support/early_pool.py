"""A stand-in for :class:`sd3d.core.triton_precompile.CompileWorkers` started early by a command."""

from __future__ import annotations


class EarlyPool:
    """Records whether it was given work (and how many variants it was asked to compile) or closed."""

    def __init__(self, compiled: int = 20) -> None:
        self.closed = False
        self.asked: list = []
        self.compiled = compiled

    def close(self) -> None:
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def compile(self, variants, kwargs, gpu) -> dict:
        self.asked.append((len(variants(**kwargs)), gpu))
        return {"variants": self.compiled, "compiled": self.compiled, "failed": []}


def check_early_start(start, preload: str, marker_glob: str, tmp_path, monkeypatch, refused=()) -> None:
    """The conditions every early start (``start(device)``) shares, checked with the driver and the
    worker processes stubbed: no workers without a CUDA device the driver shows, nor for ``cpu``, nor
    for each call in ``refused`` (a start's own reasons); workers importing ``preload`` for ``cuda:0``;
    none again once Triton's cache holds a file matching ``marker_glob``."""
    import sd3d.core.triton_precompile as T

    started = []
    monkeypatch.setattr(
        T, "CompileWorkers", lambda count, preload_: started.append((count, preload_)) or "pool"
    )
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(T, "cuda_device_count", lambda: 0)
    assert start("auto") is None  # no driver, no device (this CI machine as it is)
    monkeypatch.setattr(T, "cuda_device_count", lambda: 1)
    assert start("cpu") is None
    assert all(call() is None for call in refused)
    assert start("cuda:0") == "pool"
    assert started == [(started[0][0], preload)] and started[0][0] >= 1
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / marker_glob.replace("*", "0123")).write_text("{}")
    assert start("auto") is None and len(started) == 1
