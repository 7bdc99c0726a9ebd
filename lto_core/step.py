"""The step function: gradients, parameters and state in, update and new state out.

Everything per element lives here, so the PyTorch path (meta-training, ``backend="torch"``) and
the exported ONNX graph compute the same numbers. Inputs are windows ``[B, W, C]`` (see
:mod:`lto_runtime.format` for names and order):

* state slots, one ``[B, W, C]`` array each: Adam's moments ``m, v``, the consolidated importance
  as ``P = log(1 + Omega)`` and the anchor ``theta*`` (parameters at the last task boundary);
* ``coefficients`` ``[B, W, 3]``: per token, what the network chose at its last refresh;
* ``scalars`` ``[B, M]``: one row per window (hyper-parameters, counters, flags), per window so
  that one call can mix parameter groups and tensors whose step counts differ;
* ``ctx`` ``[B, K]``: static descriptors of the window's tensor (:mod:`lto_runtime.layout`).

The learning sits at the token level: the network reads per-token summaries and emits three
coefficients per token (:func:`token_features`, :class:`~lto_core.network.TokenNetwork`); every
element then follows a closed form in Adam's direction, its importance and its drift
(:func:`protected_update`). The network runs only on the ``refresh_windows`` (at each task
boundary and every ``refresh_every`` steps after it) and consolidation only on the
``boundary_windows``; both work on those windows alone, gathered by index, and the runtime writes
their results into the state before it computes the step's update (see
:data:`lto_runtime.format.OUTPUT_NAMES`), so an ordinary step makes a handful of passes over the
elements and writes only the update and Adam's moments.

The rule is Adam-residual: with every coefficient zero it is exactly Adam with bias correction
(Kingma & Ba, 2015) as ``torch.optim.Adam`` computes it, and the coefficients stay zero in windows
that hold no consolidated importance (:func:`memory_gate`): plain single-task training is Adam
whatever the network's weights.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from lto_core.network import OUTPUTS, NetworkConfig, TokenNetwork
from lto_runtime.format import SCALAR_NAMES

#: Bound on the scale-free features, so no single token can dominate the network's input.
FEATURE_CLIP = 10.0
#: Bound on squared-gradient averages before they are averaged over a window: a finite gradient
#: whose square overflows float32 makes ``v`` infinite, and one infinity would turn the window's
#: normalized importance and token summaries into NaN (1,024 of these bounded values still sum finite).
_HUGE = 1e35
#: Floor for denominators and logarithms. Applied with ``clamp``, never added: the ONNX optimizer
#: folds ``x + 1e-30`` to ``x``, which would turn ``0/0`` into NaN in the exported graph only.
_TINY = 1e-30
#: Bounds of the coefficients: gate offset, gate slope, pull (see :func:`protected_update`).
COEFFICIENT_BOUNDS: tuple[tuple[float, float], ...] = ((-4.0, 4.0), (0.0, 8.0), (0.0, 1.0))
#: Column of ``weight_decay`` in the scalars.
_DECAY = SCALAR_NAMES.index("weight_decay")


def branch(pred: torch.Tensor, when_true: Callable, when_false: Callable, operands: Sequence[torch.Tensor]):
    """``when_true(*operands)`` if ``pred`` else ``when_false(*operands)``.

    Eager code (meta-training, the reference step) branches in Python; under export or
    ``torch.compile`` it is ``torch.cond``, which becomes an ONNX ``If``: only the branch taken
    runs, so a rare part of the step costs nothing on the steps that skip it.
    """
    if torch.compiler.is_compiling():
        return torch.cond(pred, when_true, when_false, tuple(operands))
    return when_true(*operands) if bool(pred) else when_false(*operands)


def token_mean(x: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Mean over the real elements of each token, ``[B,W,C] -> [B,W]``; padding must be zero in ``x``."""
    return x.sum(dim=-1) / count


def window_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the real (mask 1) elements of each window: ``[B,W,C] -> [B,1,1]``."""
    total = (x * mask).sum(dim=(1, 2), keepdim=True)
    return total / mask.sum(dim=(1, 2), keepdim=True).clamp(min=1.0)


def consolidate_importance(
    exp_avg_sq: torch.Tensor, bc2_prev: torch.Tensor, log_importance: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Task-boundary consolidation of the importance of the windows given.

    ``Omega <- Omega + v_hat / mean_window(v_hat)`` with ``v_hat = v / (1 - beta2^(t-1))`` the
    bias-corrected squared-gradient average, a diagonal Fisher estimate of the finished task
    (as in EWC, Kirkpatrick et al., 2017), normalized so that importance is dimensionless and
    averages one per task; stored as ``P = log(1 + Omega)``, the form the step uses. (The anchor
    ``theta*`` moves to the parameters at the boundary.)
    """
    fisher = (exp_avg_sq / bc2_prev.clamp(min=1e-12)).clamp(max=_HUGE)
    fisher = fisher / window_mean(fisher, mask).clamp(min=_TINY)
    return torch.log1p(torch.expm1(log_importance) + fisher * mask)


def adam_moments(
    grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, beta1: torch.Tensor, beta2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``m <- m + (1-beta1)(g - m)``, ``v <- beta2 v + (1-beta2) g^2`` (Adam's moment updates)."""
    exp_avg = exp_avg + (1.0 - beta1) * (grad - exp_avg)
    exp_avg_sq = beta2 * exp_avg_sq + (1.0 - beta2) * (grad * grad)
    return exp_avg, exp_avg_sq


def adam_direction(
    exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, bc1: torch.Tensor, bc2: torch.Tensor, eps: torch.Tensor
) -> torch.Tensor:
    """Adam's step for unit learning rate: ``(m / bc1) / (sqrt(v) / sqrt(bc2) + eps)``.

    ``bc1 = 1 - beta1^t`` and ``bc2 = 1 - beta2^t`` are the bias corrections. Computed as
    ``m / (sqrt(v) * bc1/sqrt(bc2) + eps*bc1)``, the same quantity with the per-window factors
    folded, which saves a pass over the elements.
    """
    root = exp_avg_sq.sqrt()
    scale, bc1 = _per_window(bc1 / bc2.sqrt(), bc1)
    return exp_avg / (root * scale + eps * bc1)


def scaled_direction_factors(scalars: torch.Tensor, rate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-window factors ``(q, e)`` (``[B, 1, 1]`` each) of :func:`scaled_adam_direction` at ``rate``.

    ``-rate d = m / (sqrt(v) q + e)`` with ``q = -bc1 / (rate sqrt(bc2))`` and ``e = -eps bc1 / rate``
    (``d`` as in :func:`adam_direction`, this step's bias corrections): the rate folded into the
    per-window factors saves a pass over the elements. Where ``rate <= 1e-30`` (a window not
    stepped, or lr zero) ``q = 0`` and ``e = -inf``, so the step is exactly zero (no ``0 * inf``;
    folding a vanishing rate would overflow ``q``).
    """
    rows = dict(zip(SCALAR_NAMES, scalars[:, :, None, None].unbind(1)))
    bc1, bc2 = 1.0 - rows["beta1"] ** rows["step"], 1.0 - rows["beta2"] ** rows["step"]
    stepped = rate > _TINY
    safe = torch.where(stepped, rate, torch.ones_like(rate))
    q = torch.where(stepped, bc1 / (bc2.sqrt() * -safe), torch.zeros_like(rate))
    e = torch.where(stepped, rows["eps"] * bc1 / -safe, torch.full_like(rate, -float("inf")))
    return q, e


def scaled_adam_direction(exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, q: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``-rate d = m / (sqrt(v) q + e)``: Adam's direction times ``-rate``, with the per-window
    factors of :func:`scaled_direction_factors`."""
    q, e = _per_window(q, e)
    return exp_avg / (exp_avg_sq.sqrt() * q + e)


#: Whether the step is being exported for AOTInductor (:func:`exporting_for_inductor`).
_exporting_for_inductor = False


@contextlib.contextmanager
def exporting_for_inductor() -> Iterator[None]:
    """Within this block, ``torch.export`` traces the step for AOTInductor, which fuses loops as
    ``torch.compile`` does, rather than for ONNX (see :func:`_per_window`). A module flag, not a
    context variable: torch's tracer reads a module's globals (a flag of torch's own that says
    "exporting to ONNX" reads False inside ``torch.cond``'s branches)."""
    global _exporting_for_inductor
    before, _exporting_for_inductor = _exporting_for_inductor, True
    try:
        yield
    finally:
        _exporting_for_inductor = before


def _per_window(*factors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``factors`` (``[B, 1, 1]`` each, one number per window) unchanged.

    Under ``torch.compile`` and the export for AOTInductor (not the ONNX export: onnxruntime does
    not fuse, so a stack would only add operators) they are stacked into one buffer first, which
    the compiled loop over the elements then reads. Left inline, the loop recomputes them (powers,
    a root, a division) for every vector of elements: its stores might alias the scalars it reads
    them from, so the C++ compiler cannot hoist them. The same numbers either way.
    """
    if torch.compiler.is_compiling() and (_exporting_for_inductor or not torch.compiler.is_exporting()):
        return torch.stack(factors).unbind(0)
    return factors


def token_features(
    grad: torch.Tensor,
    direction: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    bc2: torch.Tensor,
    eps: torch.Tensor,
    log_importance: torch.Tensor,
    param: torch.Tensor,
    anchor: torch.Tensor,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Scale-free summaries of each token's ``C`` elements, ``[B, W, 7]`` (:data:`~lto_core.network.TOKEN_FEATURES`).

    With ``g~ = g / (sqrt(v_hat) + eps)`` the gradient in units of its running RMS and ``d`` Adam's
    direction, per token:

    * ``rms(g~)`` and ``rms(d)``: how large the current gradient and step are;
    * ``mean(d) / rms(d)``: whether the token's elements move together;
    * ``mean(P)``: consolidated importance;
    * ``rms(theta - theta*) / rms_window(theta)``: drift from the anchor;
    * ``sum(g~^2 P) / sum(g~^2) - mean(P)``: whether the new gradient's energy lands on important
      elements (protection blocking learning) or beside them;
    * ``log(mean(v_hat) / mean_window(v_hat))``: which tokens see large gradients.

    Each is clipped to ``[-10, 10]``. Padding is zero in every input, so sums need no mask.
    """
    count = mask.sum(dim=-1).clamp(min=1.0)
    v_hat = (exp_avg_sq / bc2).clamp(max=_HUGE)
    scaled = grad / (v_hat.sqrt() + eps)
    energy = token_mean(scaled * scaled, count)
    adam_rms = _root(token_mean(direction * direction, count))
    importance = token_mean(log_importance, count)
    rms_param = _root(window_mean(param * param, mask))
    drift = _root(token_mean((param - anchor) ** 2, count)) / rms_param[..., 0]
    overlap = token_mean(scaled * scaled * log_importance, count) / energy.clamp(min=_TINY) - importance
    curvature = torch.log(token_mean(v_hat, count).clamp(min=_TINY) / window_mean(v_hat, mask)[..., 0].clamp(min=_TINY))
    feats = torch.stack(
        [_root(energy), adam_rms, token_mean(direction, count) / adam_rms, importance, drift, overlap, curvature],
        dim=-1,
    )
    return feats.clamp(-FEATURE_CLIP, FEATURE_CLIP)


def _root(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 1e-30))``: a square root whose gradient stays finite where ``x`` is zero
    (a padding token, no drift yet), so meta-gradients through the summaries cannot turn NaN."""
    return x.clamp(min=_TINY).sqrt()


def window_context(ctx: torch.Tensor, step: torch.Tensor, since: torch.Tensor, boundaries: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """Per-window network input ``[B, K+4]``: descriptors, ``t/(t+1000)``, ``t_b/(t_b+100)``,
    ``n/(n+2)`` and ``mean_window(P)``.

    ``t`` counts steps, ``t_b`` steps since the last task boundary, ``n`` the task boundaries
    consolidated so far. The counters saturate, so a run far longer than the meta-training
    unrolls stays inside the range the network was trained on instead of extrapolating.
    """
    return torch.cat([ctx, step / (step + 1000.0), since / (since + 100.0), boundaries / (boundaries + 2.0), importance], dim=1)


def memory_gate(log_importance: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1`` for windows holding consolidated importance (``mean_window(P) > 0``), else ``0``: ``[B,1,1]``.

    Multiplies the coefficients, so a window is stepped by exactly Adam until a task boundary has
    consolidated some importance into it: the learned part does the job it was meta-trained for
    (trading plasticity against forgetting) and plain training is Adam.
    """
    return (window_mean(log_importance, mask) > 0.0).to(log_importance.dtype)


def bounded_coefficients(raw: torch.Tensor, rms_param: torch.Tensor) -> torch.Tensor:
    """Network outputs ``[B, W, 3]`` -> stored coefficients ``(alpha, beta, c)``.

    ``alpha`` and ``beta`` are the raw outputs clamped to :data:`COEFFICIENT_BOUNDS`;
    ``c = rho / rms_window(theta)`` with ``rho`` the clamped third output, so the pull is measured
    in the window's parameter scale. Zero outputs give zero coefficients: Adam.
    """
    alpha, beta, rho = (raw[..., i].clamp(lo, hi) for i, (lo, hi) in enumerate(COEFFICIENT_BOUNDS))
    return torch.stack([alpha, beta, rho / rms_param[..., 0]], dim=-1)


def protected_update(
    step: torch.Tensor,
    log_importance: torch.Tensor,
    param: torch.Tensor,
    anchor: torch.Tensor,
    coefficients: torch.Tensor,
    lr: torch.Tensor,
    *,
    pulls: bool | None = None,
) -> torch.Tensor:
    """The closed form every element follows, with its token's coefficients ``(alpha, beta, c)``:

    ``u = -lr * (2 sigmoid(alpha - beta P) d + c P (theta - theta*))``

    with ``d`` Adam's direction, given as ``step = -2 lr d`` (:func:`scaled_adam_direction` at rate
    ``2 lr``), and ``P = log(1 + Omega)``. The first term is Adam's step gated by
    importance: ``beta = 2, alpha = 0`` is ``2 d / (1 + (1 + Omega)^2)``, importance-gated Adam;
    ``alpha`` opens or closes the whole token. The second is an EWC-like pull toward the anchor,
    proportional to importance and drift (the gradient of ``c P (theta - theta*)^2 / 2``), in
    Adam's units since ``c`` carries ``1 / rms_window(theta)``. At zero coefficients ``u = -lr d``.

    The pull's four passes over the elements run only where a token pulls: ``pulls`` says whether
    any does when the caller knows (the compiled PyTorch step, which decides in Python), ``None``
    decides in the graph.
    """
    alpha, beta, pull = coefficients[..., None].unbind(dim=2)
    gate = torch.sigmoid(alpha - beta * log_importance)
    operands = (gate, step, pull, log_importance, param, anchor, lr)
    if pulls is None:
        (update,) = branch((pull != 0).any(), _pulled_update, _gated_update, operands)
    else:
        (update,) = (_pulled_update if pulls else _gated_update)(*operands)
    return update


def _pulled_update(gate, step, c, p, th, a, lr) -> tuple[torch.Tensor]:
    """``gate step - lr c P (theta - theta*)``: the gated step plus the pull (its factor per token)."""
    return (gate * step + (-lr * c) * (p * (th - a)),)


def _gated_update(gate, step, c, p, th, a, lr) -> tuple[torch.Tensor]:
    """``gate step``: the gated step alone, where no token pulls."""
    return (gate * step,)


def adam_step(
    grad: torch.Tensor,
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    scalars: torch.Tensor,
    rate: torch.Tensor,
    *,
    decay: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Adam's part of the step: the new moments and Adam's direction times ``-rate``
    ``(m', v', -rate d)`` (:func:`scaled_adam_direction`), from the gradient plus L2 weight decay
    ``g + wd * theta`` (as ``torch.optim.Adam``).

    The decay's two passes over the elements are skipped when no window has any (``decay=None``,
    decided in the graph). ``decay=True`` adds it whatever its value (zero decay adds zero: the
    same numbers), for a caller that reads ``theta`` anyway; ``False`` when no window has any.
    """
    operands = (grad, param, exp_avg, exp_avg_sq, scalars, *scaled_direction_factors(scalars, rate))
    if decay is None:
        return branch((scalars[:, _DECAY] != 0).any(), _decayed_adam, _plain_adam, operands)
    return (_decayed_adam if decay else _plain_adam)(*operands)


def _decayed_adam(g, p, m, v, s, q, e) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_adam_moments_and_direction` of the gradient plus ``wd * theta``."""
    return _adam_moments_and_direction(g + s[:, _DECAY, None, None] * p.detach(), m, v, s, q, e)


def _plain_adam(g, p, m, v, s, q, e) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_adam_moments_and_direction` of the gradient alone."""
    return _adam_moments_and_direction(g, m, v, s, q, e)


def _adam_moments_and_direction(
    grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, scalars: torch.Tensor, q: torch.Tensor, e: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`adam_moments` with the betas of each window, and :func:`scaled_adam_direction`."""
    rows = dict(zip(SCALAR_NAMES, scalars[:, :, None, None].unbind(1)))
    exp_avg, exp_avg_sq = adam_moments(grad, exp_avg, exp_avg_sq, rows["beta1"], rows["beta2"])
    return exp_avg, exp_avg_sq, scaled_adam_direction(exp_avg, exp_avg_sq, q, e)


def _step_rate(scalars: torch.Tensor) -> torch.Tensor:
    """``lr`` of each window, zero where the window's tensor is not stepped: ``[B, 1, 1]``."""
    return (scalars[:, SCALAR_NAMES.index("lr")] * scalars[:, SCALAR_NAMES.index("active")])[:, None, None]


def adam_element_step(
    grad: torch.Tensor,
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    log_importance: torch.Tensor,
    anchor: torch.Tensor,
    coefficients: torch.Tensor,
    scalars: torch.Tensor,
    *,
    decay: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-element step where every coefficient is zero: Adam, ``u = -lr d``; returns ``(u, m', v')``
    (``decay``: see :func:`adam_step`)."""
    exp_avg, exp_avg_sq, update = adam_step(grad, param, exp_avg, exp_avg_sq, scalars, _step_rate(scalars), decay=decay)
    return update, exp_avg, exp_avg_sq


def protected_element_step(
    grad: torch.Tensor,
    param: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    log_importance: torch.Tensor,
    anchor: torch.Tensor,
    coefficients: torch.Tensor,
    scalars: torch.Tensor,
    *,
    decay: bool | None = None,
    pulls: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The per-element step with the tokens' coefficients (:func:`protected_update`); returns ``(u, m', v')``
    (``decay``: see :func:`adam_step`; ``pulls``: see :func:`protected_update`)."""
    lr = _step_rate(scalars)
    exp_avg, exp_avg_sq, step = adam_step(grad, param, exp_avg, exp_avg_sq, scalars, 2.0 * lr, decay=decay)
    update = protected_update(step, log_importance, param, anchor, coefficients, lr, pulls=pulls)
    return update, exp_avg, exp_avg_sq


class StepGraph(nn.Module):
    """The whole optimizer step as one module; this is what gets exported to ONNX.

    ``element_steps`` holds the two per-element paths, :func:`adam_element_step` and
    :func:`protected_element_step`; an executor may swap in compiled versions of the same functions.
    """

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.network = TokenNetwork(config)
        self.config = self.network.config
        self.element_steps: tuple[Callable, Callable] = (adam_element_step, protected_element_step)

    def forward(
        self,
        grad: torch.Tensor,
        param: torch.Tensor,
        mask: torch.Tensor,
        exp_avg: torch.Tensor,
        exp_avg_sq: torch.Tensor,
        log_importance: torch.Tensor,
        anchor: torch.Tensor,
        coefficients: torch.Tensor,
        scalars: torch.Tensor,
        ctx: torch.Tensor,
        boundary_windows: torch.Tensor,
        refresh_windows: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        """One step for ``B`` windows; returns the outputs of :data:`~lto_runtime.format.OUTPUT_NAMES`.

        Windows with ``active = 0`` get a zero update; their moment outputs are not meaningful
        (the engine keeps the old state of tensors it did not step).
        """
        # Consolidation reads the finished task's second moment, before this step's gradient enters it.
        width = self.config.chunk
        consolidated, anchors = self._at(
            boundary_windows.long(), self.consolidate, (param, mask, exp_avg_sq, log_importance, scalars), (width, width)
        )
        adam, protected = self.element_steps
        update, exp_avg, exp_avg_sq = branch(
            (coefficients != 0).any(),
            protected,
            adam,
            (grad, param, exp_avg, exp_avg_sq, log_importance, anchor, coefficients, scalars),
        )
        (refreshed,) = self._at(
            refresh_windows.long(),
            lambda *windows: (self.refresh(*windows),),
            (grad, param, mask, exp_avg, exp_avg_sq, log_importance, anchor, scalars, ctx),
            (OUTPUTS,),
        )
        return update, exp_avg, exp_avg_sq, consolidated, anchors, refreshed

    def _at(
        self, at: torch.Tensor, method: Callable[..., tuple[torch.Tensor, ...]], operands: Sequence[torch.Tensor], widths: Sequence[int]
    ) -> tuple[torch.Tensor, ...]:
        """``method`` of the windows ``at`` (each operand gathered by index), or where none is
        listed, empty outputs ``[0, W, width]`` of the ``widths`` given. A branch (an ``If`` in the
        graph), so a call that lists no window skips the gathers and the network outright: most
        calls list none, and the empty work alone would cost them some hundred small operators."""

        def gathered(at: torch.Tensor, *arrays: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(method(*(x[at] for x in arrays)))

        def nothing(at: torch.Tensor, *arrays: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(arrays[0].new_zeros((at.shape[0], self.config.window, w)) for w in widths)

        return branch(at.shape[0] > 0, gathered, nothing, (at, *operands))

    def consolidate(
        self, param: torch.Tensor, mask: torch.Tensor, exp_avg_sq: torch.Tensor, log_importance: torch.Tensor, scalars: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The consolidated importance and the new anchor of the windows given, read before this
        step's gradient enters the moments (:func:`consolidate_importance`)."""
        beta2, step = scalars[:, SCALAR_NAMES.index("beta2")], scalars[:, SCALAR_NAMES.index("step")]
        consolidated = consolidate_importance(exp_avg_sq, (1.0 - beta2 ** (step - 1.0))[:, None, None], log_importance, mask)
        return consolidated, param.clone()

    def refresh_after_step(
        self,
        grad: torch.Tensor,
        param: torch.Tensor,
        mask: torch.Tensor,
        exp_avg: torch.Tensor,
        exp_avg_sq: torch.Tensor,
        log_importance: torch.Tensor,
        anchor: torch.Tensor,
        scalars: torch.Tensor,
        ctx: torch.Tensor,
    ) -> torch.Tensor:
        """:meth:`refresh` of the windows given, from the moments before this step: it computes
        the new moments (Adam's, as every element step does; zero weight decay adds zero) first."""
        exp_avg, exp_avg_sq, _ = adam_step(grad, param, exp_avg, exp_avg_sq, scalars, _step_rate(scalars), decay=True)
        return self.refresh(grad, param, mask, exp_avg, exp_avg_sq, log_importance, anchor, scalars, ctx)

    def refresh(
        self,
        grad: torch.Tensor,
        param: torch.Tensor,
        mask: torch.Tensor,
        exp_avg: torch.Tensor,
        exp_avg_sq: torch.Tensor,
        log_importance: torch.Tensor,
        anchor: torch.Tensor,
        scalars: torch.Tensor,
        ctx: torch.Tensor,
    ) -> torch.Tensor:
        """New coefficients ``[B, W, 3]`` of the windows given, from this step's gradient and new
        moments: token summaries and window context through the network, bounded, times the
        memory gate."""
        column = {n: scalars[:, i : i + 1] for i, n in enumerate(SCALAR_NAMES)}
        step, beta1, beta2, eps = (column[n][:, :, None] for n in ("step", "beta1", "beta2", "eps"))
        grad = grad + column["weight_decay"][:, :, None] * param.detach()
        bc2 = 1.0 - beta2**step
        direction = adam_direction(exp_avg, exp_avg_sq, 1.0 - beta1**step, bc2, eps)
        tokens = token_features(grad, direction, exp_avg_sq, bc2, eps, log_importance, param, anchor, mask)
        context = window_context(
            ctx, column["step"], column["steps_since_boundary"], column["boundaries"], window_mean(log_importance, mask)[:, :, 0]
        )
        raw = self.network(tokens, mask.sum(dim=-1), context)
        rms_param = _root(window_mean(param * param, mask))
        return bounded_coefficients(raw, rms_param) * memory_gate(log_importance, mask)
