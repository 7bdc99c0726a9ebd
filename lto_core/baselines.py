"""Continual-learning baselines measured beside LTO: EWC, online EWC, SI, importance-gated Adam and UPGD.

SGD (with optional momentum) and Adam are ``torch.optim.SGD`` and ``torch.optim.Adam``. The ones
here are the hand-designed methods a learned optimizer for continual learning has to beat:

* :class:`EWC`: elastic weight consolidation (Kirkpatrick et al., PNAS 2017), a quadratic penalty
  that anchors each weight in proportion to its diagonal Fisher information on finished tasks. It
  plugs into :func:`lto_core.continual.run_stream` through ``penalty`` and ``on_task_end``.
* :class:`OnlineEWC`: online EWC (Schwarz et al., ICML 2018), one running Fisher and one anchor
  instead of a pair per task, so its cost does not grow with the number of tasks.
* :class:`TaskFreeOnlineEWC`: online EWC for a stream nobody cuts into tasks: it consolidates
  every ``period`` steps instead of at task boundaries.
* :class:`SI`: synaptic intelligence (Zenke, Poole & Ganguli, ICML 2017), the same kind of
  penalty with each weight's importance measured online, along the training path.
* :class:`GatedAdam`: Adam whose step is divided by ``1 + c * Omega``, ``Omega`` the consolidated
  importance of :func:`lto_core.step.consolidate_importance`. It is the hand-set version of what
  the update network learns to do per element.
* :class:`UPGD`: utility-based perturbed gradient descent (Elsayed & Mahmood, ICLR 2024), SGD
  whose step shrinks on weights that are useful now. It needs no task boundaries.
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


#: ``log_likelihood(model, task, n)``: log-probability of training example ``n`` of ``task`` (a scalar).
LogLikelihood = Callable[[nn.Module, Any, int], torch.Tensor]


def classification_log_likelihood(model: nn.Module, task: Task, n: int) -> torch.Tensor:
    """``log p(y_n | x_n)`` of training example ``n`` of a classification task, under its output mask."""
    x = torch.from_numpy(task.x_train[n : n + 1])
    y = torch.from_numpy(task.y_train[n : n + 1])
    return -nn.functional.cross_entropy(masked_logits(model(x), task.classes), y)


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
        log_likelihood: ``log_likelihood(model, task, n)``, the log-probability of training
            example ``n`` of ``task`` (``task.x_train[n]``); the default is a classifier's
            :func:`classification_log_likelihood`.
    """

    def __init__(self, lam: float, fisher_samples: int = 256, log_likelihood: LogLikelihood | None = None) -> None:
        if not 0.0 <= float(lam) < float("inf"):
            raise ValueError(f"Invalid EWC lambda: {lam}; must be a finite number >= 0")
        if int(fisher_samples) < 1:
            raise ValueError(f"Invalid fisher_samples: {fisher_samples}; must be >= 1")
        self.lam = float(lam)
        self.fisher_samples = int(fisher_samples)
        self.log_likelihood = log_likelihood or classification_log_likelihood
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
            grads = torch.autograd.grad(self.log_likelihood(model, task, n), params, allow_unused=True)
            for f, g in zip(fisher, grads):
                if g is not None:
                    f.add_(g.square())
        model.train(was_training)
        self.consolidated.append(([f / count for f in fisher], [p.detach().clone() for p in params]))


class OnlineEWC(EWC):
    """Online EWC (Schwarz et al., "Progress & Compress", ICML 2018): one running Fisher and one anchor.

    After task ``k`` ends, ``F <- gamma * F + F_k`` (``F_k`` estimated as in :class:`EWC`) and
    ``theta* <- theta`` (the parameters then); the penalty is ``(lambda / 2) sum_i F_i (theta_i - theta*_i)^2``.
    ``gamma = 1`` keeps every task's importance; ``gamma < 1`` lets old tasks fade.

    Args:
        lam: the penalty strength ``lambda`` (>= 0).
        gamma: the decay of earlier tasks' Fisher, in ``[0, 1]``.
        fisher_samples: as in :class:`EWC`.
        log_likelihood: as in :class:`EWC`.
    """

    def __init__(self, lam: float, gamma: float = 1.0, fisher_samples: int = 256, log_likelihood: LogLikelihood | None = None) -> None:
        if not 0.0 <= float(gamma) <= 1.0:
            raise ValueError(f"Invalid online EWC gamma: {gamma}; must be in [0, 1]")
        super().__init__(lam, fisher_samples, log_likelihood)
        self.gamma = float(gamma)

    def on_task_end(self, model: nn.Module, task: Task) -> None:
        """Fold the finished task's Fisher into the running one and move the anchor here."""
        super().on_task_end(model, task)
        if len(self.consolidated) == 2:
            (old, _), (new, anchor) = self.consolidated
            self.consolidated = [([self.gamma * o + n for o, n in zip(old, new)], anchor)]


class TaskFreeOnlineEWC:
    """Online EWC without task boundaries: consolidate every ``period`` training steps.

    Online EWC (:class:`OnlineEWC`) consolidates when a task ends; on a stream that never says
    where tasks end, this variant consolidates on a clock. After every backward pass
    (:meth:`on_backward`) it adds up the squared gradient of the training loss alone,

        ``A <- A + B g^2``,  ``g = grad - lambda F (theta - theta*)``

    (``.grad`` minus the penalty's own gradient, ``B`` the batch size), and every ``period`` steps
    folds their mean into the running Fisher and moves the anchor to the current parameters:

        ``F <- gamma F + A / n``,  ``theta* <- theta``,  ``A <- 0``

    (``n`` the steps accumulated). ``g`` is the gradient of the batch's mean loss, so it costs one
    multiply per weight per step instead of a backward pass per example; for ``B`` independent
    examples ``E[B g^2] = B (E g_n)^2 + Var g_n``, the per-example empirical Fisher ``E[g_n^2]`` of
    :class:`EWC` where the mean gradient is small, so ``lambda`` means about what it means there.
    The penalty added to every training loss is online EWC's,

        ``(lambda / 2) sum_i F_i (theta_i - theta*_i)^2``,

    zero until the first consolidation. A task boundary, when one is signalled (:meth:`on_task_end`),
    consolidates at once and restarts the clock.

    :meth:`penalty` must be added to the loss of every step and :meth:`on_backward` called after
    every backward pass, before the optimizer step, as :func:`lto_core.continual.run_stream` does.

    Args:
        lam: the penalty strength ``lambda`` (>= 0).
        gamma: the decay of earlier consolidations' Fisher, in ``[0, 1]``.
        period: training steps between consolidations (>= 1).
        batch_size: examples per training step ``B`` (>= 1).
    """

    def __init__(self, lam: float, gamma: float = 1.0, period: int = 100, batch_size: int = 1) -> None:
        if not 0.0 <= float(lam) < float("inf"):
            raise ValueError(f"Invalid EWC lambda: {lam}; must be a finite number >= 0")
        if not 0.0 <= float(gamma) <= 1.0:
            raise ValueError(f"Invalid online EWC gamma: {gamma}; must be in [0, 1]")
        if isinstance(period, bool) or int(period) != period or period < 1:
            raise ValueError(f"Invalid online EWC period: {period}; must be a whole number of steps >= 1")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"Invalid batch_size: {batch_size}; must be a whole number of examples >= 1")
        self.lam = float(lam)
        self.gamma = float(gamma)
        self.period = int(period)
        self.batch_size = int(batch_size)
        #: Consolidations so far.
        self.consolidations = 0
        self.fisher: list[torch.Tensor] = []  # F
        self.anchor: list[torch.Tensor] = []  # theta*
        self.accumulated: list[torch.Tensor] = []  # A, since the last consolidation
        self.accumulated_steps = 0  # n
        self._params: list[nn.Parameter] = []

    def _tracked(self, model: nn.Module) -> list[nn.Parameter]:
        """``model``'s trainable parameters; a new model starts from nothing consolidated."""
        params = [p for p in model.parameters() if p.requires_grad]
        if len(params) != len(self._params) or any(p is not q for p, q in zip(params, self._params)):
            self._params = params
            self.consolidations = 0
            self.fisher = [torch.zeros_like(p).detach() for p in params]
            self.anchor = [p.detach().clone() for p in params]
            self.accumulated = [torch.zeros_like(p).detach() for p in params]
            self.accumulated_steps = 0
        return params

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """``(lambda/2) sum_i F_i (theta_i - theta*_i)^2``; zero before the first consolidation."""
        params = self._tracked(model)
        if not self.consolidations:
            return torch.zeros((), dtype=params[0].dtype, device=params[0].device)
        total = sum((f * (p - a).square()).sum() for p, f, a in zip(params, self.fisher, self.anchor))
        return 0.5 * self.lam * total

    @torch.no_grad()
    def on_backward(self, model: nn.Module) -> None:
        """Add this step's squared task-loss gradient; consolidate when ``period`` steps have been added."""
        params = self._tracked(model)
        for p, f, a, acc in zip(params, self.fisher, self.anchor, self.accumulated):
            if p.grad is None:
                continue
            grad = p.grad - self.lam * f * (p - a) if self.consolidations else p.grad
            acc.add_(grad.square(), alpha=self.batch_size)
        self.accumulated_steps += 1
        if self.accumulated_steps == self.period:
            self._consolidate(params)

    def on_task_end(self, model: nn.Module, task: Any = None) -> None:
        """A signalled boundary: consolidate now what was accumulated since the last consolidation."""
        params = self._tracked(model)
        if self.accumulated_steps:
            self._consolidate(params)

    @torch.no_grad()
    def _consolidate(self, params: list[nn.Parameter]) -> None:
        """``F <- gamma F + A / n``, ``theta* <- theta``, ``A <- 0``."""
        for p, f, a, acc in zip(params, self.fisher, self.anchor, self.accumulated):
            f.mul_(self.gamma).add_(acc / self.accumulated_steps)
            a.copy_(p)
            acc.zero_()
        self.accumulated_steps = 0
        self.consolidations += 1


class SI:
    """Synaptic intelligence (Zenke, Poole & Ganguli, ICML 2017): importance is each weight's
    share of the drop in the task loss along the path training took.

    While task ``mu`` trains, every step from ``theta(t)`` to ``theta(t+1)`` adds to the path integral

        ``omega_i <- omega_i - g_i(t) * (theta_i(t+1) - theta_i(t))``,

    ``g(t)`` the gradient of the task loss alone at ``theta(t)``. When the task ends
    (:meth:`on_task_end`) it is normalized by how far each weight travelled over the task and
    consolidated,

        ``Omega_i <- Omega_i + omega_i / (Delta_i^2 + xi)``,  ``Delta_i = theta_i(end of mu) - theta~_i``,

    then ``omega`` restarts at zero and the anchor ``theta~`` moves to the current parameters
    (before the first task it is the initial parameters). The penalty added to every training loss is

        ``c * sum_i Omega_i (theta_i - theta~_i)^2``,

    zero until a task has been consolidated. The defaults ``c = 1``, ``xi = 1e-3`` are the paper's
    split-MNIST setting (its permuted-MNIST one is ``c = 0.1``, ``xi = 0.1``).

    The gradients are read from ``.grad`` after each backward pass, by hooks registered at the
    first :meth:`penalty` call (``autograd.grad`` calls do not reach them). ``.grad`` holds the
    gradient of the whole loss, so the penalty's own gradient
    ``2 c Omega (theta - theta~)`` is subtracted to leave the task loss's. :meth:`penalty` must be
    called once per step, before the backward pass, as :func:`lto_core.continual.run_stream` does.

    Args:
        c: the penalty strength ``c`` (>= 0).
        xi: the damping ``xi`` (> 0): keeps ``Omega`` finite for weights that did not move.
    """

    def __init__(self, c: float = 1.0, xi: float = 1e-3) -> None:
        if not 0.0 <= float(c) < float("inf"):
            raise ValueError(f"Invalid SI c: {c}; must be a finite number >= 0")
        if not 0.0 < float(xi) < float("inf"):
            raise ValueError(f"Invalid SI xi: {xi}; must be a finite number > 0")
        self.c = float(c)
        self.xi = float(xi)
        self.consolidated_tasks = 0
        self._params: list[nn.Parameter] = []
        self._hooks: list[Any] = []
        self.path_integral: list[torch.Tensor] = []  # omega, this task's
        self.importance: list[torch.Tensor] = []  # Omega, consolidated
        self.anchor: list[torch.Tensor] = []  # theta~
        self._before_step: list[torch.Tensor] | None = None  # theta(t) of the step in flight
        self._grads: list[torch.Tensor | None] = []  # its gradients, filled by the hooks

    def _watch(self, params: list[nn.Parameter]) -> None:
        """Start tracking ``params``: zero importance and path integral, anchor at their values."""
        for hook in self._hooks:
            hook.remove()
        self._params = params
        self.path_integral = [torch.zeros_like(p).detach() for p in params]
        self.importance = [torch.zeros_like(p).detach() for p in params]
        self.anchor = [p.detach().clone() for p in params]
        self._before_step = None
        self._grads = [None] * len(params)
        self._hooks = [p.register_post_accumulate_grad_hook(self._grad_recorder(k)) for k, p in enumerate(params)]

    def _tracked(self, model: nn.Module) -> list[nn.Parameter]:
        """``model``'s trainable parameters, tracked from now on if they are not yet (a new model)."""
        params = [p for p in model.parameters() if p.requires_grad]
        if len(params) != len(self._params) or any(p is not q for p, q in zip(params, self._params)):
            self._watch(params)
        return params

    def _grad_recorder(self, k: int) -> Callable[[torch.Tensor], None]:
        """A hook keeping a copy of parameter ``k``'s ``.grad`` after each backward pass adds to it
        (a copy: ``zero_grad(set_to_none=False)`` zeroes ``.grad`` in place)."""

        def record(param: torch.Tensor) -> None:
            self._grads[k] = param.grad.detach().clone()

        return record

    @torch.no_grad()
    def _integrate_step(self) -> None:
        """``omega -= g_task * (theta(t+1) - theta(t))`` for the step in flight, if its gradients came."""
        if self._before_step is None:
            return
        for k, (p, before, grad) in enumerate(zip(self._params, self._before_step, self._grads)):
            if grad is None:
                continue
            if self.consolidated_tasks:
                grad = grad - 2.0 * self.c * self.importance[k] * (before - self.anchor[k])
            self.path_integral[k].sub_(grad * (p - before))
        self._before_step = None
        self._grads = [None] * len(self._params)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """``c sum_i Omega_i (theta_i - theta~_i)^2``; zero before the first task ends.

        Also closes the path integral of the previous step and opens this one's.
        """
        params = self._tracked(model)
        self._integrate_step()
        self._before_step = [p.detach().clone() for p in params]
        if not self.consolidated_tasks:
            return torch.zeros((), dtype=params[0].dtype, device=params[0].device)
        total = sum((omega * (p - a).square()).sum() for p, omega, a in zip(params, self.importance, self.anchor))
        return self.c * total

    @torch.no_grad()
    def on_task_end(self, model: nn.Module, task: Any = None) -> None:
        """Consolidate: ``Omega += omega / (Delta^2 + xi)``, restart ``omega``, anchor at the current parameters."""
        params = self._tracked(model)
        self._integrate_step()
        for p, omega, importance, anchor in zip(params, self.path_integral, self.importance, self.anchor):
            importance.add_(omega / ((p - anchor).square() + self.xi))
            omega.zero_()
            anchor.copy_(p)
        self.consolidated_tasks += 1


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



class UPGD(torch.optim.Optimizer):
    """Utility-based perturbed gradient descent (Elsayed & Mahmood, "Addressing Loss of Plasticity and
    Catastrophic Forgetting in Continual Learning", ICLR 2024): the first-order, global-utility variant.

    A weight's utility is how much the loss would rise were it removed (set to zero); its
    first-order estimate, averaged over time with bias correction, is

        ``u = -g * theta``,  ``U <- beta_u U + (1 - beta_u) u``,  ``U_hat = U / (1 - beta_u^t)``.

    It is scaled into ``(0, 1)`` against the largest running utility of any weight of any param group,

        ``s = sigmoid(U_hat / eta)``,  ``eta = max over all weights of U``,

    and gates both the gradient and a Gaussian perturbation, with decoupled weight decay ``lambda``:

        ``theta <- (1 - lr * lambda) theta - 2 lr (g + xi) (1 - s)``,  ``xi ~ N(0, sigma^2)``.

    Useful weights (``s`` near 1) barely move, so what they do is not forgotten; useless ones
    (``s`` near 0) take the full step and the noise, which keeps them plastic. No task boundary is
    needed. The factor 2, the weight decay outside the gate and ``eta`` taken on ``U`` before bias
    correction are the authors' reference implementation's (github.com/mohmdelsayed/upgd); with
    ``s`` near 1/2 for most weights, ``2 lr (1 - s)`` is about ``lr``, so ``lr`` compares with SGD's.
    Where no weight has a positive running utility (``eta <= 0``), ``eta`` is taken as a tiny positive
    number: every weight of negative utility takes the full step, one of zero utility half of it.

    Defaults: ``beta_utility = 0.999``, ``sigma = 0.001`` and ``weight_decay = 0.001`` are the
    authors' reference defaults. Their ``lr = 1e-5`` suits streams of millions of single examples;
    ``lr = 0.03`` here is SGD's rate in ``lto bench cl`` and its small MLP, CNN and transformer learn
    each task of a few hundred steps of 32 examples with it.

    The noise comes from this optimizer's own CPU ``torch.Generator`` seeded with ``seed`` (on a
    GPU it is drawn on the CPU and copied), so a run is reproduced exactly, on any device; the
    generator's state is part of :meth:`state_dict`.

    Args:
        params: iterable of parameters or of param-group dicts.
        lr: learning rate (>= 0).
        beta_utility: the utility average's decay ``beta_u``, in ``[0, 1)``.
        sigma: the perturbation's standard deviation (>= 0).
        weight_decay: decoupled weight decay ``lambda`` (>= 0).
        seed: seed of the perturbation's random numbers.

    Examples:
        >>> model = torch.nn.Linear(4, 2)
        >>> optimizer = UPGD(model.parameters(), lr=0.03, seed=0)
        >>> model(torch.ones(1, 4)).sum().backward()
        >>> optimizer.step()
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.03,
        beta_utility: float = 0.999,
        sigma: float = 0.001,
        weight_decay: float = 0.001,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= lr < float("inf"):
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= beta_utility < 1.0:
            raise ValueError(f"Invalid beta_utility value: {beta_utility}; must be in [0, 1)")
        if not 0.0 <= sigma < float("inf"):
            raise ValueError(f"Invalid sigma value: {sigma}; must be a finite number >= 0")
        if not 0.0 <= weight_decay < float("inf"):
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"Invalid seed: {seed!r}; must be an int")
        super().__init__(params, {"lr": lr, "beta_utility": beta_utility, "sigma": sigma, "weight_decay": weight_decay})
        self.noise_generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Take one step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stepped = []
        eta = None
        for group in self.param_groups:
            beta = group["beta_utility"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("UPGD does not support sparse gradients; use dense gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["avg_utility"] = torch.zeros_like(p)
                state["step"] += 1
                state["avg_utility"].mul_(beta).add_(p.grad * p, alpha=-(1.0 - beta))
                largest = state["avg_utility"].max()
                eta = largest if eta is None else torch.maximum(eta, largest.to(eta.device))
                stepped.append((group, p))
        if eta is None:
            return loss
        eta = eta.clamp(min=_TINY)
        for group, p in stepped:
            state = self.state[p]
            utility = state["avg_utility"] / (1.0 - group["beta_utility"] ** state["step"])
            gate = 1.0 - torch.sigmoid(utility / eta.to(p.device))
            update = p.grad
            if group["sigma"] != 0:
                noise = torch.randn(p.shape, generator=self.noise_generator, dtype=p.dtype).to(p.device)
                update = update + group["sigma"] * noise
            if group["weight_decay"] != 0:
                p.mul_(1.0 - group["lr"] * group["weight_decay"])
            p.addcmul_(update, gate, value=-2.0 * group["lr"])
        return loss

    def state_dict(self) -> dict[str, Any]:
        """torch's optimizer state plus the noise generator's state, so a resumed run draws the same noise."""
        return {**super().state_dict(), "noise_generator": self.noise_generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`, the noise generator's state included when it is there."""
        state_dict = dict(state_dict)
        generator_state = state_dict.pop("noise_generator", None)
        if generator_state is not None:
            torch.Generator().set_state(generator_state)  # refused here, before any state is written
        super().load_state_dict(state_dict)
        if generator_state is not None:
            self.noise_generator.set_state(generator_state)
