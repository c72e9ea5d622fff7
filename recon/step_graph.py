"""Replaying a training step from a CUDA graph.

Why: a training step launches ~900 small kernels (``benchmarks/step_ops.py``), and on a GPU the
host's time to launch them one by one from Python (~10-20 us each) is longer than the GPU's time to
run them, so the GPU waits. A CUDA graph records the step's kernels once and replays them with one
launch. It needs a step whose shapes and buffers do not change between replays: the static step of
:mod:`recon.train` (padded samples, a fixed march, schedule values in device tensors refilled in
place, state updated in place).

What may still change the kernels (a schedule phase; the training computes every hash level under
graphs and weighs them, so a level switching on is not one) is the ``phase`` key
of :meth:`GraphedSteps.run`: on a new key the step runs once eagerly (kernels compile, optimizer
state and buffers are allocated, outside any capture), then it is captured and replayed until the
key changes again. All graphs share one memory pool, and each is kept until the training ends,
though only the latest is replayed: a graph dropped while tensors it allocated live on (the
gradients made inside the capture) leaves the pool with no user but live blocks, and PyTorch's
allocator then refuses the next capture into it (an internal assert, seen on an H100 with torch
2.11). Kept graphs cost little: memory freed inside a capture returns to the shared pool for the
next one, which may overwrite it since an old graph is never replayed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Hashable, Iterator

import torch

StepOutputs = dict[str, torch.Tensor]


class GraphCaptureError(RuntimeError):
    """A training step could not be captured as a CUDA graph (:func:`recon.train.train` then trains
    again without graphs)."""


class GraphedSteps:
    """Runs ``step()`` (one whole training step: forward, backward, optimizer) eagerly once per
    phase, then from a CUDA graph captured on its second call."""

    def __init__(self, device: torch.device, generator: torch.Generator) -> None:
        if device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.device = device
        self.generator = generator  # its draws inside the graph advance with every replay
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream(device)  # the eager steps' and the captures' (streamed())
        self.phase: Hashable = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graphs: list[torch.cuda.CUDAGraph] = []  # every capture, kept alive (module docstring)
        self.outputs: StepOutputs | None = None
        self.captures = 0
        # host seconds in the eager first steps of phases and in captures (no synchronisation: a
        # capture is the host's work; the eager step's GPU work overlaps what follows)
        self.capture_seconds = 0.0

    @contextlib.contextmanager
    def streamed(self) -> Iterator[None]:
        """Run the block on this object's stream, ordered after the caller's stream and before it.

        Why: autograd records the current stream in each parameter's AccumulateGrad node when the
        node is made, and a capture whose backward reaches a node made on another stream must make
        that stream wait on the capturing one; for the legacy default stream CUDA refuses, and the
        capture is invalidated (an H100, torch 2.11: the first ``--cuda-graph`` fit of every
        process failed). With the whole fit on one stream, the eager steps, the captures and
        whatever runs between them (occupancy updates, the hull pre-fit) make their nodes on the
        capture's stream."""
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        try:
            with torch.cuda.stream(self.stream):
                yield
        finally:
            caller.wait_stream(self.stream)

    def run(self, step: Callable[[], StepOutputs], phase: Hashable) -> StepOutputs:
        """This step's outputs (tensors owned by the graph: valid until the next call)."""
        if phase != self.phase:
            self.graph = self.outputs = None  # the outputs' memory returns to the shared pool
            self.phase = phase
            t = time.perf_counter()
            outputs = self._eager(step)
            self.capture_seconds += time.perf_counter() - t
            return outputs
        if self.graph is None:
            t = time.perf_counter()
            self._capture(step)
            self.capture_seconds += time.perf_counter() - t
        self.graph.replay()
        return self.outputs

    def _eager(self, step: Callable[[], StepOutputs]) -> StepOutputs:
        """The step on a side stream, as PyTorch's capture recipe warms up: lazily initialised
        state (cuBLAS handles, the autograd engine's device thread) must exist before a capture."""
        with self.streamed():
            return step()

    def _capture(self, step: Callable[[], StepOutputs]) -> None:
        graph = torch.cuda.CUDAGraph()
        graph.register_generator_state(self.generator)
        caller = torch.cuda.current_stream(self.device)
        try:
            with torch.cuda.graph(graph, pool=self.pool, stream=self.stream):
                self.outputs = step()
        except RuntimeError as exc:  # an operator that cannot be captured: train() falls back to eager
            # torch.cuda.graph leaves its capture stream current when the capture fails (its exit
            # raises before it restores the stream), and everything after would run there
            torch.cuda.set_stream(caller)
            raise GraphCaptureError(f"capturing the training step as a CUDA graph failed ({exc})") from exc
        self.graph = graph
        self.graphs.append(graph)
        self.captures += 1
