"""The PyTorch front end: :class:`LTO`, a ``torch.optim.Optimizer``.

``LTO`` is thin: it gathers gradients, hands them to a :class:`~lto_runtime.StepEngine` that holds
the state in window layout, and adds the updates to the parameters. ``backend="onnx"`` (the
default) computes the step with onnxruntime from an optimizer file; ``backend="torch"`` computes
the same function with the PyTorch :class:`~lto_core.StepGraph` of a checkpoint.

Where the state lives: with ``backend="torch"``, in torch tensors on the parameters' device
(``lto_runtime``'s torch buffers), stepped by the compiled step graph; with ``backend="onnx"``, in host
memory, except when every parameter is on one CUDA device and the onnx session runs there
(``providers="auto"`` with ``onnxruntime-gpu``): then the engine's buffers and state are CUDA
tensors bound to onnxruntime by address, and no gradient, parameter or state crosses to the host
during a step. ``opt.state[p]`` reads a parameter's state from the engine, as tensors on its device.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, MutableMapping
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from lto_runtime import MAX_BATCH_WINDOWS, OptimizerSession, StepEngine, StepFunction, hyper_row
from lto_runtime._torch_engine import build_engine, local_shard, step_tensors
from lto_runtime.state import check_boundaries, check_state_dict_keys

#: Execution strategies of the step: onnxruntime running an optimizer file, or the PyTorch step graph.
BACKENDS = ("onnx", "torch")


def _shard_like(state: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``state`` (shaped like ``param``'s local shard) as a DTensor laid out like ``param``, so
    ``torch.distributed.checkpoint`` saves it sharded; ``state`` itself for plain parameters."""
    local = local_shard(param)
    if local is param or state.shape != local.shape:
        return state.to(local.device)
    return type(param).from_local(state.to(local.device), param.device_mesh, param.placements, shape=param.shape, stride=param.stride())


def _make_step_function(backend: str, onnx_path, checkpoint, providers, threads: int | None) -> StepFunction:
    """The step function of ``backend``: an onnxruntime session, or the (compiled) PyTorch step graph."""
    if backend == "onnx":
        if checkpoint is not None:
            raise ValueError("checkpoint= applies to backend='torch'; for backend='onnx' pass onnx_path=")
        return OptimizerSession(onnx_path, providers, 1 if threads is None else threads)
    if onnx_path is not None or providers is not None or threads is not None:
        raise ValueError(
            "onnx_path=, providers= and threads= apply to backend='onnx'; for backend='torch' pass checkpoint= "
            "(its threads are torch.set_num_threads)"
        )
    from lto_core.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
    from lto_core.executor import TorchStepFunction

    graph, _ = load_checkpoint(DEFAULT_CHECKPOINT if checkpoint is None else checkpoint)
    return TorchStepFunction(graph)


class EngineState(MutableMapping):
    """``LTO.state``: each parameter's state, read from and written to the engine.

    ``opt.state[p]`` is a dict of copies (tensors on ``p``'s device, see
    :meth:`~lto_runtime.StepEngine.tensor_state` for the keys), as ``torch.optim`` keeps state;
    assigning one validates it and writes it to the engine. Parameters that were never stepped
    have no entry.
    """

    def __init__(self, optimizer: "LTO") -> None:
        self._optimizer = optimizer

    def _index(self, param: torch.Tensor) -> int:
        for i, p in enumerate(self._optimizer._engine_params):
            if p is param:
                return i
        raise KeyError(param)

    def __getitem__(self, param: torch.Tensor) -> dict[str, Any]:
        engine = self._optimizer.engine
        index = self._index(param)
        state = engine.tensor_state(index)
        if not (state["step"] or state["boundary_pending"]):
            raise KeyError(param)
        return {k: _shard_like(torch.from_numpy(v), param) if isinstance(v, np.ndarray) else v for k, v in state.items()}

    def __setitem__(self, param: torch.Tensor, state: dict[str, Any]) -> None:
        self._optimizer.engine.set_tensor_state(self._index(param), _local_state(state))

    def __delitem__(self, param: torch.Tensor) -> None:
        engine = self._optimizer.engine
        index = self._index(param)
        engine.set_tensor_state(index, _fresh_state(engine, index))

    def __iter__(self) -> Iterator[torch.Tensor]:
        engine = self._optimizer.engine
        counters = engine.counters
        for i, p in enumerate(self._optimizer._engine_params):
            if counters.step[i] or counters.boundary_pending[i]:
                yield p

    def __len__(self) -> int:
        return sum(1 for _ in self)


def _local_state(state: Any) -> Any:
    """``state`` with DTensor values replaced by their local shards (what the engine holds)."""
    if not isinstance(state, dict):
        return state
    return {k: local_shard(v) if torch.is_tensor(v) else v for k, v in state.items()}


def _fresh_state(engine: StepEngine, index: int) -> dict[str, Any]:
    """The state of a tensor that was never stepped."""
    state = engine.tensor_state(index)
    return {k: np.zeros_like(v) if isinstance(v, np.ndarray) else type(v)(0) for k, v in state.items()}


def _group_row(group: dict[str, Any], where: str) -> np.ndarray:
    """``group``'s hyper-parameters, validated, as one row of :data:`~lto_runtime.HYPER_NAMES`;
    errors name ``where``."""
    try:
        return hyper_row(group.get("lr"), group.get("betas"), group.get("eps"), group.get("weight_decay"))
    except (TypeError, ValueError) as err:
        raise type(err)(f"{where}: {err}") from None


def _group_key(group: dict[str, Any]) -> tuple | None:
    """What a group's row of hyper-parameters depends on, when it can be kept between steps.

    ``(parameter count, lr, betas, eps, weight_decay)`` when they are plain Python numbers (and
    ``betas`` a tuple of them), which nothing can change in place; ``None`` otherwise (a tensor
    ``lr`` can), so such a group is read and validated on every step.
    """
    lr, betas, eps, weight_decay = (group.get(k) for k in ("lr", "betas", "eps", "weight_decay"))
    if not isinstance(betas, tuple) or not all(type(v) in (int, float) for v in (lr, eps, weight_decay, *betas)):
        return None
    return (len(group["params"]), lr, betas, eps, weight_decay)


class LTO(torch.optim.Optimizer):
    """The lto learned optimizer, a drop-in replacement for ``torch.optim.Adam``.

    Args:
        params: iterable of parameters or of param-group dicts (each group may set its own
            ``lr``, ``betas``, ``eps``, ``weight_decay``).
        lr: learning rate; the step scales with it, as in Adam.
        betas: Adam's moment decay rates.
        eps: Adam's denominator term.
        weight_decay: L2 penalty added to the gradient (as ``torch.optim.Adam``).
        onnx_path: optimizer file for ``backend="onnx"``; ``None`` for the packaged default.
        checkpoint: ``.safetensors`` checkpoint for ``backend="torch"``; ``None`` for the default.
        backend: ``"onnx"`` (onnxruntime) or ``"torch"`` (same function in PyTorch).
        providers: onnxruntime providers (``None``: CPU; ``"auto"``: CUDA when it really loads, else
            CPU; or a list). The providers in use are ``opt.runtime.providers``.
        max_batch_windows: windows per step-function call; bounds the step's extra memory.
        threads: onnxruntime intra-op threads for ``backend="onnx"`` (default 1, so onnxruntime
            does not compete with torch for cores; 0: onnxruntime's choice, one per physical core);
            the torch backend follows ``torch.set_num_threads``.
        boundaries: ``"manual"`` (default): task boundaries are where :meth:`task_boundary` is
            called. ``"auto"``: task-free use; the optimizer also marks a task boundary where the
            gradients shift (their size against what Adam's second moment expects, several
            times its level since the last boundary for some steps in a row, see
            :meth:`~lto_runtime.StepCounters.detect_shift`), and
            :meth:`task_boundary` still works. Until a boundary is detected the step is exactly
            Adam's, so stationary training stays Adam.

    Call :meth:`task_boundary` when one task ends and the next begins. NaN or Inf in a gradient
    (or in a parameter being stepped) skips the whole step, with a warning naming the tensor; float16, bfloat16 and float64
    parameters are stepped in float32 and cast back.

    Examples:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = LTO(model.parameters(), lr=1e-3)
        >>> model(torch.randn(8, 4)).pow(2).mean().backward()
        >>> opt.step(); opt.zero_grad()
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        onnx_path: str | os.PathLike | None = None,
        checkpoint: str | os.PathLike | None = None,
        backend: str = "onnx",
        providers: str | Sequence[str] | None = None,
        max_batch_windows: int = MAX_BATCH_WINDOWS,
        threads: int | None = None,
        boundaries: str = "manual",
    ) -> None:
        hyper_row(lr, betas, eps, weight_decay)
        check_boundaries(boundaries)
        if backend not in BACKENDS:
            raise ValueError(f"Invalid backend: {backend!r}; choose one of {BACKENDS}")
        if isinstance(max_batch_windows, bool) or not isinstance(max_batch_windows, int) or max_batch_windows < 1:
            raise ValueError(f"Invalid max_batch_windows: {max_batch_windows!r}; must be an int >= 1")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        self._engine: StepEngine | None = None
        # The per-parameter rows of hyper-parameters of the last step, and what they were built from.
        self._hyper: np.ndarray | None = None
        self._hyper_keys: list[tuple | None] = []
        super().__init__(params, defaults)
        self.backend = backend
        #: ``"manual"`` or ``"auto"`` (see the class docstring).
        self.boundaries = boundaries
        self.max_batch_windows = max_batch_windows
        #: The step function: an :class:`~lto_runtime.OptimizerSession` (``backend="onnx"``; its
        #: ``providers`` are the onnxruntime providers in use) or the PyTorch step graph.
        self.runtime = _make_step_function(backend, onnx_path, checkpoint, providers, threads)
        self._engine_params: list[torch.Tensor] = []
        self._sync_engine()
        self.state = EngineState(self)  # type: ignore[assignment]

    # -- the engine follows the parameter list ----------------------------------------------------

    @property
    def engine(self) -> StepEngine:
        """The :class:`~lto_runtime.StepEngine` holding the state (rebuilt if parameters changed)."""
        return self._sync_engine()

    def _param_list(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _sync_engine(self) -> StepEngine:
        """(Re)build the engine when the parameter list changed, carrying each tensor's state."""
        params = self._param_list()
        if self._engine is not None and len(params) == len(self._engine_params) and all(
            a is b for a, b in zip(params, self._engine_params)
        ):
            return self._engine
        if self.boundaries == "auto" and any(local_shard(p) is not p for p in params):
            # Each rank would judge shifts on its own shard, and the ranks' boundaries could differ.
            raise ValueError("boundaries='auto' does not support sharded (DTensor) parameters yet; use boundaries='manual' and call task_boundary()")
        engine = build_engine(self.runtime, params, max_batch_windows=self.max_batch_windows, boundaries=self.boundaries)
        if self._engine is not None:
            old = {id(p): i for i, p in enumerate(self._engine_params)}
            for i, p in enumerate(params):
                if id(p) in old:
                    engine.set_tensor_state(i, self._engine.tensor_state(old[id(p)]))
        self._engine, self._engine_params = engine, params
        return engine

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (as ``torch.optim``); existing parameters keep their state."""
        _group_row({**self.defaults, **param_group}, f"param_groups[{len(self.param_groups)}]")
        super().add_param_group(param_group)
        if self._engine is not None:
            self._sync_engine()

    # -- stepping ---------------------------------------------------------------------------------

    def _tensor_name(self, index: int) -> str:
        for g, group in enumerate(self.param_groups):
            if index < len(group["params"]):
                return f"param_groups[{g}]['params'][{index}] (shape {tuple(group['params'][index].shape)})"
            index -= len(group["params"])
        raise IndexError(index)

    def _gradients(self, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
        for i, p in enumerate(params):
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"LTO does not support sparse gradients ({self._tensor_name(i)}); use dense gradients")
            if p.grad.is_complex() or p.is_complex():
                raise RuntimeError(f"LTO does not support complex parameters or gradients ({self._tensor_name(i)})")
        return [p.grad for p in params]

    def _apply_step(self) -> None:
        engine = self._sync_engine()
        params = self._engine_params
        grads = self._gradients(params)
        bad = step_tensors(engine, grads, params, self._gather_hyper())
        if bad:
            names = ", ".join(self._tensor_name(i) for i in bad)
            warnings.warn(f"LTO: non-finite gradient or parameter in {names}; step skipped, parameters and state unchanged", RuntimeWarning, stacklevel=3)

    def _gather_hyper(self) -> np.ndarray:
        """Each parameter's row of :data:`~lto_runtime.HYPER_NAMES`, in engine order, gathered per
        group (as ``torch.optim``'s ``_init_group`` gathers a group's settings).

        Values are validated where they enter (constructor, :meth:`add_param_group`,
        :meth:`load_state_dict`); one written into ``param_groups`` directly (an LR scheduler
        setting ``group["lr"]``) is validated on the first step that sees it, before anything is
        written. The rows are rebuilt only when a group's values changed (see :func:`_group_key`).
        """
        keys = [_group_key(group) for group in self.param_groups]
        if self._hyper is None or None in keys or keys != self._hyper_keys:
            rows = [_group_row(group, f"param_groups[{g}]") for g, group in enumerate(self.param_groups)]
            self._hyper = np.repeat(np.stack(rows), [len(group["params"]) for group in self.param_groups], axis=0)
            self._hyper_keys = keys
        return self._hyper

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Take one optimizer step; ``closure`` (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._apply_step()
        return loss

    def task_boundary(self) -> None:
        """Signal the end of a task: the next step consolidates importance and re-anchors."""
        self._sync_engine().task_boundary()

    # -- checkpointing ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """As ``torch.optim``: ``{"state": {index: {...}}, "param_groups": [...]}``.

        Each stepped parameter's state holds float32 tensors ``exp_avg``, ``exp_avg_sq``,
        ``log_importance``, ``anchor`` of the parameter's shape and ``coefficients``
        ``[tokens, 3]``, the ints ``step``, ``steps_since_boundary``, ``boundaries``, the bool
        ``boundary_pending`` and the floats ``energy_short``, ``energy_long``, ``shift_run`` (shift
        statistics of ``boundaries="auto"``). They are copies taken now; loading them resumes exactly.
        """
        self._sync_engine()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (param groups, their hyper-parameters, state).

        Everything is checked first, so a malformed or foreign ``state_dict`` raises an error that
        names the entry and changes nothing: not the parameters, the state, nor a hyper-parameter.
        """
        check_state_dict_keys(state_dict, ("state", "param_groups"))
        groups, saved = state_dict["param_groups"], state_dict["state"]
        if not isinstance(groups, list) or len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups) if isinstance(groups, list) else groups!r} param groups, this optimizer has {len(self.param_groups)}")
        for g, (group, mine) in enumerate(zip(groups, self.param_groups)):
            if not isinstance(group, dict) or not isinstance(group.get("params"), (list, tuple)) or len(group["params"]) != len(mine["params"]):
                raise ValueError(f"state_dict param_groups[{g}] does not match this optimizer's group {g} (its 'params' must list {len(mine['params'])} indices)")
            _group_row(group, f"state_dict param_groups[{g}]")
        params = self._param_list()
        if not isinstance(saved, dict) or any(not isinstance(k, int) or not 0 <= k < len(params) for k in saved):
            raise ValueError(f"state_dict['state'] must map parameter indices 0..{len(params) - 1} to state, got keys {list(saved) if isinstance(saved, dict) else saved!r}")
        engine = self._sync_engine()
        states = [_local_state(saved.get(i)) for i in range(len(params))]
        names = [f"state_dict['state'][{i}]" for i in range(len(params))]
        fresh = [i for i, s in enumerate(states) if s is None]
        for i in fresh:
            states[i] = _fresh_state(engine, i)
        checked = engine.check_states(states, names)
        super().load_state_dict({"state": {}, "param_groups": groups})
        self.state = EngineState(self)  # type: ignore[assignment]
        self._sync_engine().load_states(checked)
