"""recon.adam.Adam against its reference, torch.optim.Adam: the same parameters, bit for bit."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from recon.adam import Adam

BETAS, EPS = (0.9, 0.99), 1e-15  # the trainer's (Instant-NGP's) settings

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    ),
]


def _params(device: str) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    shapes = [(64, 2), (16, 8), (8,), (1,)]
    return [nn.Parameter(torch.randn(s, generator=gen).to(device)) for s in shapes]


def _run(make_opt, device: str, steps: int = 25) -> list[torch.Tensor]:
    """Train copies of the same parameters on the same gradients: three groups, learning rates
    changed on the way (as the trainer's schedule does) and a parameter without a gradient on some
    steps (the camera corrections before they move)."""
    params = _params(device)
    groups = [
        {"params": params[:2], "lr": 1e-2},
        {"params": params[2:3], "lr": 5e-3},
        {"params": params[3:], "lr": 1e-3, "poses": True},
    ]
    opt = make_opt(groups)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        opt.zero_grad()  # torch.optim: set_to_none=True by default too
        for i, p in enumerate(params):
            if i == 3 and step % 3 == 0:
                continue
            p.grad = (torch.randn(p.shape, generator=gen) * 10.0 ** (i - 2)).to(device)
        for g, base in zip(opt.param_groups, (1e-2, 5e-3, 1e-3), strict=True):
            lr = base * 0.9**step
            if isinstance(g["lr"], torch.Tensor):
                g["lr"].fill_(lr)
            else:
                g["lr"] = lr
        opt.step()
    return [p.detach().cpu() for p in params]


def test_the_cpu_loop_is_pytorchs_default_adam_bit_for_bit():
    ours = _run(lambda g: Adam(g, betas=BETAS, eps=EPS), "cpu")
    ref = _run(lambda g: torch.optim.Adam(g, betas=BETAS, eps=EPS), "cpu")
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0], _params("cpu")[0].detach())  # it moved


@pytest.mark.parametrize("device", DEVICES)
def test_the_fused_path_is_pytorchs_fused_adam_bit_for_bit(device):
    ours = _run(lambda g: Adam(g, betas=BETAS, eps=EPS, fused=True), device)
    ref = _run(lambda g: torch.optim.Adam(g, betas=BETAS, eps=EPS, fused=True), device)
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_a_tensor_learning_rate_is_read_when_stepping(device):
    """The graph-replayed step refills each group's learning-rate tensor in place between steps;
    the reference is what the trainer used before, torch.optim.Adam(fused=True, capturable=True)
    with the same tensors (a float32 learning rate rounds differently from a Python float)."""

    def tensor_lrs(groups: list[dict]) -> list[dict]:
        for g in groups:
            g["lr"] = torch.tensor(float(g["lr"]), device=device)
        return groups

    ours = _run(lambda g: Adam(tensor_lrs(g), betas=BETAS, eps=EPS, fused=True), device)
    ref = _run(
        lambda g: torch.optim.Adam(
            tensor_lrs(g), betas=BETAS, eps=EPS, fused=True, capturable=device == "cuda"
        ),
        device,
    )
    for a, b in zip(ours, ref, strict=True):
        assert torch.equal(a, b)


def test_skipped_parameters_keep_no_state_and_do_not_move():
    p, q = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))
    opt = Adam([{"params": [p, q], "lr": 0.1}], betas=BETAS, eps=EPS)
    p.grad = torch.tensor([1.0, -1.0, 2.0])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.9, 1.1, 0.9]))  # first step: -lr * sign
    assert torch.equal(q.detach(), torch.ones(2)) and q not in opt.state


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_fused_step_replays_from_a_cuda_graph_like_eager_steps():
    """Captured once with a device learning rate and replayed: the same parameters as stepping
    eagerly with the same learning rates (what GraphedSteps relies on)."""
    device = "cuda"

    def steps(graphed: bool) -> torch.Tensor:
        p = nn.Parameter(torch.linspace(-1, 1, 1000, device=device))
        lr = torch.tensor(1e-2, device=device)
        opt = Adam([{"params": [p], "lr": lr}], betas=BETAS, eps=EPS, fused=True)
        target = torch.linspace(1, 2, 1000, device=device)

        def one() -> None:
            opt.zero_grad()
            ((p - target) ** 2).sum().backward()
            opt.step()

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            one()  # warm-up step outside the graph (state made), as GraphedSteps does
        torch.cuda.current_stream().wait_stream(stream)
        graph = None
        if graphed:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                one()
        for i in range(10):
            lr.fill_(1e-2 * 0.8**i)
            one() if graph is None else graph.replay()
        torch.cuda.synchronize()
        return p.detach().cpu()

    eager, replayed = steps(False), steps(True)
    assert torch.equal(eager, replayed)
    assert not torch.equal(eager, torch.linspace(-1, 1, 1000))


def test_training_imports_no_dynamo():
    """The reason this module exists: a reconstruction's optimiser no longer pulls torch._dynamo
    (0.84 s of a cold process on the GPU machine)."""
    code = (
        "import sys, torch; from torch import nn; from recon.adam import Adam; "
        "p = nn.Parameter(torch.zeros(3)); o = Adam([{'params': [p], 'lr': 0.1}]); "
        "p.grad = torch.ones(3); o.step(); print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
