"""Continual-learning baselines measured beside LTO: EWC and importance-gated Adam.

SGD (with optional momentum) and Adam are ``torch.optim.SGD`` and ``torch.optim.Adam``. The two
here are the hand-designed methods a learned optimizer for continual learning has to beat:

* :class:`EWC`: elastic weight consolidation (Kirkpatrick et al., PNAS 2017), a quadratic penalty
  that anchors each weight in proportion to its diagonal Fisher information on finished tasks. It
  plugs into :func:`lto_core.continual.run_stream` through ``penalty`` and ``on_task_end``.
* :class:`GatedAdam`: Adam whose step is divided by ``1 + c * Omega``, ``Omega`` the consolidated
  importance of :func:`lto_core.step.consolidate_importance`. It is the hand-set version of what
  the update network learns to do per element.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from torch import nn

from lto_core.continual import masked_logits
from lto_core.streams import Task

#: Floor of the mean squared gradient when normalizing importance (a tensor that never saw a
#: gradient gets zero importance instead of 0/0).
_TINY = 1e-30


class EWC:
    """Elastic weight consolidation with the diagonal (empirical) Fisher of each finished task.

    After task ``k`` ends, :meth:`on_task_end` stores the anchor ``theta*_k`` (the parameters
    then) and the diagonal Fisher information estimated on ``fisher_samples`` training examples,

        ``F_k = (1/N) sum_n (d/d theta log p(y_n | x_n; theta*_k))^2``

    with the example's true label ``y_n`` (the empirical Fisher) and the task's output mask. The
    penalty added to every later training loss is

        ``(lambda / 2) * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2``.

    Args:
        lam: the penalty strength ``lambda`` (>= 0).
        fisher_samples: training examples per task used to estimate ``F_k`` (>= 1).
    """

    def __init__(self, lam: float, fisher_samples: int = 256) -> None:
        if not 0.0 <= float(lam) < float("inf"):
            raise ValueError(f"Invalid EWC lambda: {lam}; must be a finite number >= 0")
        if int(fisher_samples) < 1:
            raise ValueError(f"Invalid fisher_samples: {fisher_samples}; must be >= 1")
        self.lam = float(lam)
        self.fisher_samples = int(fisher_samples)
        #: One ``(fisher, anchor)`` pair of per-parameter tensor lists per finished task.
        self.consolidated: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """``(lambda/2) sum_k sum_i F_k,i (theta_i - theta*_k,i)^2``; zero before the first task ends."""
        params = [p for p in model.parameters() if p.requires_grad]
        total = torch.zeros((), dtype=params[0].dtype if params else torch.float32)
        for fisher, anchor in self.consolidated:
            for p, f, a in zip(params, fisher, anchor):
                total = total + (f * (p - a).square()).sum()
        return 0.5 * self.lam * total

    def on_task_end(self, model: nn.Module, task: Task) -> None:
        """Estimate the finished task's diagonal Fisher at the current parameters and anchor there."""
        params = [p for p in model.parameters() if p.requires_grad]
        fisher = [torch.zeros_like(p) for p in params]
        count = min(self.fisher_samples, len(task.x_train))
        was_training = model.training
        model.eval()
        for n in range(count):
            x = torch.from_numpy(task.x_train[n : n + 1])
            y = torch.from_numpy(task.y_train[n : n + 1])
            log_likelihood = -nn.functional.cross_entropy(masked_logits(model(x), task.classes), y)
            grads = torch.autograd.grad(log_likelihood, params, allow_unused=True)
            for f, g in zip(fisher, grads):
                if g is not None:
                    f.add_(g.square())
        model.train(was_training)
        self.consolidated.append(([f / count for f in fisher], [p.detach().clone() for p in params]))


class GatedAdam(torch.optim.Optimizer):
    """Adam with each element's step divided by ``1 + c * Omega`` (importance-gated Adam).

    The Adam part is ``torch.optim.Adam`` (Kingma & Ba, 2015) with bias correction:

        ``m <- beta1 m + (1-beta1) g``,  ``v <- beta2 v + (1-beta2) g^2``,
        ``theta <- theta - lr * (m / (1-beta1^t)) / ((sqrt(v / (1-beta2^t)) + eps) * (1 + c Omega))``.

    ``Omega`` starts at zero; :meth:`task_boundary` consolidates, per tensor,

        ``Omega <- Omega + v_hat / mean(v_hat)``,  ``v_hat = v / (1 - beta2^t)``,

    the bias-corrected squared-gradient average of the finished task (a diagonal Fisher estimate)
    normalized to mean one, as :func:`lto_core.step.consolidate_importance` does per window. With
    ``c = 0`` this is exactly Adam.

    Args:
        params: iterable of parameters or of param-group dicts.
        lr: learning rate.
        betas: Adam's moment decay rates.
        eps: Adam's denominator term.
        weight_decay: L2 penalty added to the gradient (as ``torch.optim.Adam``).
        gate: the gate strength ``c`` (>= 0).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        gate: float = 1.0,
    ) -> None:
        if not 0.0 <= lr < float("inf"):
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps < float("inf"):
            raise ValueError(f"Invalid epsilon value: {eps}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
        if not 0.0 <= weight_decay < float("inf"):
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if not 0.0 <= gate < float("inf"):
            raise ValueError(f"Invalid gate value: {gate}; must be a finite number >= 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, gate=gate))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Take one step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("GatedAdam does not support sparse gradients; use dense gradients")
                grad = p.grad
                if group["weight_decay"] != 0:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    state["importance"] = torch.zeros_like(p)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = group["lr"] / (1 - beta1 ** state["step"])
                denom = (exp_avg_sq.sqrt() / (1 - beta2 ** state["step"]) ** 0.5).add_(group["eps"])
                if group["gate"] != 0:
                    denom.mul_(state["importance"].mul(group["gate"]).add_(1.0))
                p.addcdiv_(exp_avg, denom, value=-step_size)
        return loss

    @torch.no_grad()
    def task_boundary(self) -> None:
        """Consolidate importance: ``Omega <- Omega + v_hat / mean(v_hat)`` for every stepped tensor."""
        for group in self.param_groups:
            _, beta2 = group["betas"]
            for p in group["params"]:
                state = self.state[p]
                if not state:
                    continue
                v_hat = state["exp_avg_sq"] / (1 - beta2 ** state["step"])
                state["importance"].add_(v_hat / v_hat.mean().clamp(min=_TINY))

