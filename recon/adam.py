"""Adam for the NeuS trainer, the same update as ``torch.optim.Adam`` without its import cost.

Why not ``torch.optim.Adam``: its first use (``Optimizer.__init__`` -> ``add_param_group``, wrapped
by ``torch._disable_dynamo``) imports ``torch._dynamo``: 0.84 to 1.05 s of every cold ``sd3d
reconstruct`` on the CI machine (benchmarks/RESULTS.md, sessions 8 and 9), a tenth of the 8 s asked
of a cold draft reconstruction (issue 13), for an optimiser whose arithmetic is a few lines. Nothing
else on a reconstruction's path imports it.

The arithmetic is PyTorch's, so results stay bit for bit those of ``torch.optim.Adam`` (checked by
``tests/test_adam.py`` against it, step by step):

* ``fused=True`` (CUDA): PyTorch's own fused kernel, ``torch._fused_adam_``, called as
  ``torch.optim.Adam(fused=True)`` calls it: one kernel per parameter group, the step counts kept on
  the device. A learning rate given as a device tensor is read by the kernel, so the update can be
  captured in a CUDA graph and the schedule refill the tensor between replays (``capturable``).
* ``fused=False`` (the CPU): PyTorch's default single-tensor loop on the CPU, operation for
  operation (the CPU's tests and tables were made with its rounding).

Only what the trainer uses is here: no weight decay, AMSGrad, ``maximize``, sparse or complex
gradients, closures or state dicts.
"""

from __future__ import annotations

import torch


class Adam:
    """Adam over parameter groups (``{"params": [...], "lr": float | Tensor, ...}``).

    As in PyTorch, a parameter whose ``.grad`` is ``None`` is skipped by :meth:`step` (its state is
    made on its first gradient), and other keys of a group (the trainer tags one with ``poses``) are
    kept as they are.
    """

    def __init__(
        self,
        groups: list[dict],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        fused: bool = False,
    ) -> None:
        self.param_groups = [dict(g, params=list(g["params"])) for g in groups]
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.fused = fused
        # per parameter: [step, exp_avg, exp_avg_sq]; the step is a float32 device tensor when fused
        # (the kernel reads it there), an int on the host otherwise (PyTorch keeps a CPU tensor and
        # reads it with .item(): the same float)
        self.state: dict[torch.Tensor, list] = {}

    def zero_grad(self) -> None:
        """Drop the gradients (PyTorch's ``set_to_none=True``, the only form the trainer uses:
        under a CUDA graph the next backward then allocates them inside the capture)."""
        for g in self.param_groups:
            for p in g["params"]:
                p.grad = None

    def _state(self, p: torch.Tensor) -> list:
        s = self.state.get(p)
        if s is None:
            step = torch.zeros((), dtype=torch.float32, device=p.device) if self.fused else 0
            s = [step, torch.zeros_like(p), torch.zeros_like(p)]
            self.state[p] = s
        return s

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if not params:
                continue
            states = [self._state(p) for p in params]
            if self.fused:
                self._fused_step(g["lr"], params, states)
            else:
                self._loop_step(g["lr"], params, states)

    def _fused_step(self, lr: float | torch.Tensor, params: list[torch.Tensor], states: list[list]) -> None:
        steps = [s[0] for s in states]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            params,
            [p.grad for p in params],
            [s[1] for s in states],
            [s[2] for s in states],
            [],
            steps,
            amsgrad=False,
            lr=lr,
            beta1=self.beta1,
            beta2=self.beta2,
            weight_decay=0.0,
            eps=self.eps,
            maximize=False,
            grad_scale=None,
            found_inf=None,
        )

    def _loop_step(self, lr: float | torch.Tensor, params: list[torch.Tensor], states: list[list]) -> None:
        lr = float(lr)
        beta1, beta2 = self.beta1, self.beta2
        for p, s in zip(params, states, strict=True):
            s[0] += 1
            grad, exp_avg, exp_avg_sq = p.grad, s[1], s[2]
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = lr / (1 - beta1 ** s[0])
            bias_correction2_sqrt = (1 - beta2 ** s[0]) ** 0.5
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(self.eps)
            p.addcdiv_(exp_avg, denom, value=-step_size)
