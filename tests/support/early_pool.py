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
