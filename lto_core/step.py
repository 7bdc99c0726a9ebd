"""The step function ``(grad, param, mask, state, scalars, ctx) -> (update, new_state)``.

Everything per element lives here, so the PyTorch path (meta-training, ``backend="torch"``) and
the exported ONNX graph compute the same numbers. All inputs are windows ``[B, W, C]``:

* ``state`` ``[4, B, W, C]``: Adam's first and second moments ``m, v``, the consolidated
  importance ``Omega`` and the anchor ``theta*`` (parameters at the last task boundary).
* ``scalars`` ``[B, M]``: one row per window, named by :data:`SCALAR_NAMES`. They are per window,
  not global, so one call can mix parameter groups (own ``lr``, betas) and tensors whose step
  counts differ (a tensor that had no gradient on some step was not stepped).
* ``ctx`` ``[B, K]``: static descriptors of the window's tensor (:mod:`lto_runtime.layout`).

The names and orders of state slots and scalars are the file format's (:mod:`lto_runtime.format`).

The rule is Adam-residual: with the network's output at zero it is exactly Adam with bias
correction (Kingma & Ba, 2015) as ``torch.optim.Adam`` computes it. The network's output is only
applied to windows that hold consolidated importance, i.e. after a task boundary: before the first
boundary there is nothing to protect, so plain single-task training is exactly Adam whatever the
network's weights (see :func:`memory_gate`).
"""

from __future__ import annotations

import torch
from torch import nn

from lto_core.network import NetworkConfig, UpdateNetwork
from lto_runtime.format import SCALAR_NAMES

#: Bound on the scale-free features, so no single element can dominate the network's input.
FEATURE_CLIP = 10.0
#: Floor for denominators and logarithms. Applied with ``clamp``, never added: the ONNX optimizer
#: folds ``x + 1e-30`` to ``x``, which would turn ``0/0`` into NaN in the exported graph only.
_TINY = 1e-30
_STEP = SCALAR_NAMES.index("step")
_SINCE = SCALAR_NAMES.index("steps_since_boundary")


def masked_window_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the real (mask 1) elements of each window: ``[B,W,C] -> [B,1,1]``."""
    total = (x * mask).sum(dim=(1, 2), keepdim=True)
    return total / mask.sum(dim=(1, 2), keepdim=True).clamp(min=1.0)


def consolidate_importance(
    exp_avg_sq: torch.Tensor,
    beta2: torch.Tensor,
    prev_step: torch.Tensor,
    importance: torch.Tensor,
    anchor: torch.Tensor,
    param: torch.Tensor,
    mask: torch.Tensor,
    boundary: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Task-boundary consolidation, applied where ``boundary`` is 1.

    ``Omega <- Omega + v_hat / mean_window(v_hat)`` with ``v_hat = v / (1 - beta2^(t-1))`` the
    bias-corrected squared-gradient average, a diagonal Fisher estimate of the finished task
    (as in EWC, Kirkpatrick et al., 2017), normalized so that importance is dimensionless and
    averages one per task. ``theta* <- theta``: the anchor moves to the parameters at the boundary.
    """
    correction = (1.0 - beta2**prev_step).clamp(min=1e-12)
    fisher = exp_avg_sq / correction
    fisher = fisher / masked_window_mean(fisher, mask).clamp(min=_TINY)
    importance = importance + boundary * fisher * mask
    anchor = torch.where(boundary > 0, param, anchor)
    return importance, anchor


def adam_moments(
    grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, beta1: torch.Tensor, beta2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``m <- m + (1-beta1)(g - m)``, ``v <- beta2 v + (1-beta2) g^2`` (Adam's moment updates)."""
    exp_avg = exp_avg + (1.0 - beta1) * (grad - exp_avg)
    exp_avg_sq = beta2 * exp_avg_sq + (1.0 - beta2) * grad * grad
    return exp_avg, exp_avg_sq


def adam_direction(
    exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, bc1: torch.Tensor, bc2: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """Adam's step for unit learning rate: ``(m / bc1) / (sqrt(v) / sqrt(bc2) + eps)``.

    ``bc1 = 1 - beta1^t`` and ``bc2 = 1 - beta2^t`` are the bias corrections.
    """
    return (exp_avg / bc1) / (exp_avg_sq.sqrt() / bc2.sqrt() + eps)


def element_features(
    grad: torch.Tensor,
    direction: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    bc2: torch.Tensor,
    eps: torch.Tensor,
    importance: torch.Tensor,
    param: torch.Tensor,
    anchor: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Scale-free per-element features ``[B,6,W,C]`` (no raw gradient or parameter magnitudes).

    * ``g / (sqrt(v_hat) + eps)``: the current gradient in units of its running RMS.
    * Adam's direction ``m_hat / (sqrt(v_hat) + eps)``.
    * ``log(1 + Omega)``: consolidated importance.
    * ``(theta - theta*) / rms_window(theta)``: drift from the anchor.
    * ``theta / rms_window(theta)``: relative parameter size.
    * ``log(v_hat / mean_window(v_hat))``: which elements see large gradients now.

    Each is clipped to ``[-10, 10]``. Padding elements are not zeroed here: the network masks
    them out of its pooling and the step masks their update, so a pass over all features is saved.
    """
    v_hat = exp_avg_sq / bc2
    rms_param = masked_window_mean(param * param, mask).clamp(min=_TINY).sqrt()
    feats = torch.stack(
        [
            grad / (v_hat.sqrt() + eps),
            direction,
            torch.log1p(importance),
            (param - anchor) / rms_param,
            param / rms_param,
            torch.log(v_hat.clamp(min=_TINY) / masked_window_mean(v_hat, mask).clamp(min=_TINY)),
        ],
        dim=1,
    )
    return feats.clamp(-FEATURE_CLIP, FEATURE_CLIP)


def window_context(ctx: torch.Tensor, step: torch.Tensor, since: torch.Tensor) -> torch.Tensor:
    """Per-window network input ``[B, K+2]``: descriptors plus ``t/(t+1000)`` and ``t_b/(t_b+100)``.

    ``t`` counts steps, ``t_b`` steps since the last task boundary. Both features saturate, so a
    run far longer than the meta-training unrolls stays inside the range the network was trained
    on instead of extrapolating (an unbounded ``log t`` did, and hurt 500-step tasks).
    """
    return torch.cat([ctx, step / (step + 1000.0), since / (since + 100.0)], dim=1)


def memory_gate(importance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1`` for windows holding consolidated importance (``mean_window(Omega) > 0``), else ``0``: ``[B,1,1,1]``.

    Multiplies the network's raw outputs, so a window is stepped by exactly Adam until a task
    boundary has consolidated some importance into it. This keeps the learned part to the job it
    was meta-trained for (trading plasticity against forgetting) and plain training identical to
    Adam; a meta-trained network that also reshaped single-task steps trained them worse.
    """
    return (masked_window_mean(importance, mask) > 0.0).to(importance.dtype).unsqueeze(-1)


def modulated_update(
    direction: torch.Tensor, raw: torch.Tensor, lr: torch.Tensor, scale_a: float, direction_b: float
) -> torch.Tensor:
    """The Adam-residual rule: ``-lr * (adam_dir * exp(a*tanh(s)) * 2*sigmoid(g) + b*tanh(d))``.

    ``s`` rescales the step within ``[e^-a, e^a]``, ``g`` gates plasticity in ``(0, 2)``, ``d`` adds
    a bounded direction of at most ``b`` Adam-units. At ``s = g = d = 0`` this is exactly Adam.
    """
    s, g, d = raw.unbind(dim=1)
    factor = torch.exp(scale_a * torch.tanh(s)) * (2.0 * torch.sigmoid(g))
    return -lr * (direction * factor + direction_b * torch.tanh(d))


class StepGraph(nn.Module):
    """The whole optimizer step as one module; this is what gets exported to ONNX."""

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.network = UpdateNetwork(config)
        self.config = self.network.config

    def forward(
        self,
        grad: torch.Tensor,
        param: torch.Tensor,
        mask: torch.Tensor,
        state: torch.Tensor,
        scalars: torch.Tensor,
        ctx: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step for ``B`` windows; see the module docstring for shapes."""
        lr, beta1, beta2, eps, weight_decay, step, since, boundary, active = scalars[:, :, None, None].unbind(1)
        exp_avg, exp_avg_sq, importance, anchor = state.unbind(0)
        # Weight decay joins the gradient, which is a constant of the step (also for meta-gradients).
        grad = grad + weight_decay * param.detach()
        boundary = torch.maximum(boundary, (step <= 1.0).to(boundary.dtype))
        importance, anchor = consolidate_importance(
            exp_avg_sq, beta2, step - 1.0, importance, anchor, param, mask, boundary
        )
        exp_avg, exp_avg_sq = adam_moments(grad, exp_avg, exp_avg_sq, beta1, beta2)
        bc1 = 1.0 - beta1**step
        bc2 = 1.0 - beta2**step
        direction = adam_direction(exp_avg, exp_avg_sq, bc1, bc2, eps)
        features = element_features(grad, direction, exp_avg_sq, bc2, eps, importance, param, anchor, mask)
        context = window_context(ctx, scalars[:, _STEP : _STEP + 1], scalars[:, _SINCE : _SINCE + 1])
        raw = self.network(features, mask, context) * memory_gate(importance, mask)
        update = modulated_update(direction, raw, lr, self.config.scale_a, self.config.direction_b)
        update = update * mask * active
        new_state = torch.stack([exp_avg, exp_avg_sq, importance, anchor])
        new_state = torch.where(active.unsqueeze(0) > 0, new_state, state)
        return update, new_state
