"""The PyTorch front end: :class:`LTO`, a ``torch.optim.Optimizer``.

``LTO`` is thin: it gathers gradients, hands them to a :class:`~lto_runtime.StepEngine` that holds
the state in window layout, and adds the updates to the parameters. ``backend="onnx"`` (the
default) computes the step with onnxruntime from an optimizer file; ``backend="torch"`` computes
the same function with the PyTorch :class:`~lto_core.StepGraph` of a checkpoint.

Where the state lives: in host memory, except when every parameter is on one CUDA device and the
onnx session runs there (``providers="auto"`` with ``onnxruntime-gpu``); then the engine's buffers
and state are CUDA tensors (:class:`TorchBuffers`) bound to onnxruntime by address, and no
gradient, parameter or state crosses to the host during a step.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from lto_runtime import STATE_NAMES, OptimizerSession, StepEngine, StepFunction, hyper_row

#: Execution strategies of the step: onnxruntime running an optimizer file, or the PyTorch step graph.
BACKENDS = ("onnx", "torch")


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A float32 CPU NumPy view of ``tensor`` (a copy only when dtype or device differ)."""
    tensor = tensor.detach()
    if tensor.dtype != torch.float32:
        tensor = tensor.float()
    return tensor.cpu().numpy()


class TorchBuffers:
    """:class:`~lto_runtime.Buffers` as float32 torch tensors on ``device``: a device-resident engine.

    onnxruntime reads and writes these tensors in place through their ``data_ptr()``.
    """

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)

    def zeros(self, shape: tuple[int, ...]) -> torch.Tensor:
        """A new zero-filled float32 tensor on the device."""
        return torch.zeros(shape, dtype=torch.float32, device=self.device)

    def upload(self, host: np.ndarray) -> torch.Tensor:
        """``host`` as a contiguous float32 tensor on the device."""
        return torch.from_numpy(np.ascontiguousarray(host, dtype=np.float32)).to(self.device)

    def download(self, array: torch.Tensor) -> np.ndarray:
        """``array`` copied to a host NumPy array."""
        return array.detach().cpu().numpy()

    def nonfinite(self, arrays: Sequence[torch.Tensor | None]) -> list[int]:
        """Indices of the tensors (``None`` skipped) holding NaN or Inf; one device-to-host read of flags."""
        present = [(i, a) for i, a in enumerate(arrays) if a is not None]
        if not present:
            return []
        finite = torch.stack([torch.isfinite(a).all() for _, a in present]).tolist()
        return [i for (i, _), ok in zip(present, finite) if not ok]

    def synchronize(self) -> None:
        """Wait for torch's CUDA stream: onnxruntime reads the buffers on a stream of its own."""
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()


def resident_device(step_function: StepFunction, params: Sequence[torch.Tensor]) -> torch.device | None:
    """The CUDA device to keep the engine on, or ``None`` for host memory.

    Device-resident when the step runs in an onnxruntime session on CUDA and every parameter lives
    on one CUDA device; otherwise gradients and parameters are read through host NumPy views.
    """
    devices = {p.device for p in params}
    if not isinstance(step_function, OptimizerSession) or "CUDAExecutionProvider" not in step_function.providers:
        return None
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        return None
    return next(iter(devices))


def build_engine(
    step_function: StepFunction, params: Sequence[torch.Tensor], *, window: int, chunk: int, max_batch_windows: int
) -> StepEngine:
    """A :class:`~lto_runtime.StepEngine` for ``params``, on their CUDA device when
    :func:`resident_device` allows it, else in host memory."""
    device = resident_device(step_function, params)
    shapes = [tuple(p.shape) for p in params]
    if device is None:
        return StepEngine(step_function, shapes, window=window, chunk=chunk, max_batch_windows=max_batch_windows)
    return StepEngine(
        step_function.on_device("cuda", device.index or 0),
        shapes,
        window=window,
        chunk=chunk,
        max_batch_windows=max_batch_windows,
        buffers=TorchBuffers(device),
    )


@torch.no_grad()
def step_tensors(engine: StepEngine, grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor], hyper: np.ndarray) -> list[int]:
    """One engine step over torch tensors, adding the updates to ``params`` in place.

    With host buffers the engine reads float32 NumPy views of the tensors (copies only for other
    dtypes or devices); with :class:`TorchBuffers` it reads the tensors themselves.

    Returns:
        Indices of tensors whose gradient holds NaN or Inf; nothing changed then.
    """
    view = (lambda t: t.detach()) if isinstance(engine.buffers, TorchBuffers) else _as_numpy
    pending: dict[int, torch.Tensor] = {}

    def apply(index: int, start: int, stop: int, update) -> None:
        param = params[index]
        values = torch.as_tensor(update, device=param.device)
        if param.is_contiguous():
            param.view(-1)[start:stop].add_(values)
        else:
            pending.setdefault(index, torch.zeros(param.numel(), device=param.device))[start:stop] = values

    bad = engine.step([None if g is None else view(g) for g in grads], [view(p) for p in params], hyper, apply)
    for index, update in pending.items():
        params[index].add_(update.view(params[index].shape))
    return bad


def _make_step_function(backend: str, onnx_path, checkpoint, providers, threads: int):
    """The step function and its ``(window, chunk)`` for ``backend``."""
    if backend == "onnx":
        if checkpoint is not None:
            raise ValueError("checkpoint= applies to backend='torch'; for backend='onnx' pass onnx_path=")
        session = OptimizerSession(onnx_path, providers, threads)
        return session, session.spec.window, session.spec.chunk
    if onnx_path is not None or providers is not None or threads:
        raise ValueError(
            "onnx_path=, providers= and threads= apply to backend='onnx'; for backend='torch' pass checkpoint= "
            "(its threads are torch.set_num_threads)"
        )
    from lto_core.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
    from lto_core.executor import TorchStepFunction

    graph, _ = load_checkpoint(DEFAULT_CHECKPOINT if checkpoint is None else checkpoint)
    return TorchStepFunction(graph), graph.config.window, graph.config.chunk


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
        threads: onnxruntime intra-op threads for ``backend="onnx"`` (0: onnxruntime's default,
            one per physical core); the torch backend follows ``torch.set_num_threads``.

    Call :meth:`task_boundary` when one task ends and the next begins. Gradients with NaN or Inf
    skip the whole step (with a warning naming the tensor); float16, bfloat16 and float64
    parameters are stepped in float32 and cast back.

    Example:
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
        max_batch_windows: int = 256,
        threads: int = 0,
    ) -> None:
        hyper_row(lr, betas, eps, weight_decay)
        if backend not in BACKENDS:
            raise ValueError(f"Invalid backend: {backend!r}; choose one of {BACKENDS}")
        if max_batch_windows < 1:
            raise ValueError(f"Invalid max_batch_windows: {max_batch_windows}; must be >= 1")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        self._engine: StepEngine | None = None
        super().__init__(params, defaults)
        self.backend = backend
        self.max_batch_windows = max_batch_windows
        self.runtime, self._window, self._chunk = _make_step_function(backend, onnx_path, checkpoint, providers, threads)
        self._engine_params: list[torch.Tensor] = []
        self._sync_engine()

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
        engine = build_engine(self.runtime, params, window=self._window, chunk=self._chunk, max_batch_windows=self.max_batch_windows)
        if self._engine is not None:
            old = {id(p): i for i, p in enumerate(self._engine_params)}
            for i, p in enumerate(params):
                if id(p) in old:
                    engine.set_tensor_state(i, self._engine.tensor_state(old[id(p)]))
        self._engine, self._engine_params = engine, params
        return engine

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (as ``torch.optim``); existing parameters keep their state."""
        merged = {**self.defaults, **param_group}
        hyper_row(merged["lr"], merged["betas"], merged["eps"], merged["weight_decay"])
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
        hyper = np.stack(
            [
                hyper_row(group["lr"], group["betas"], group["eps"], group["weight_decay"])
                for group in self.param_groups
                for _ in group["params"]
            ]
        )
        bad = step_tensors(engine, grads, params, hyper)
        if bad:
            names = ", ".join(self._tensor_name(i) for i in bad)
            warnings.warn(f"LTO: non-finite gradient in {names}; step skipped, parameters and state unchanged", RuntimeWarning, stacklevel=3)

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

        Each parameter's state holds float32 tensors ``exp_avg``, ``exp_avg_sq``, ``importance``,
        ``anchor`` of the parameter's shape, and the ints ``step``, ``steps_since_boundary`` and the
        bool ``boundary_pending``. They are copies taken now; loading them resumes exactly.
        """
        engine = self._sync_engine()
        self.state.clear()
        for i, p in enumerate(self._engine_params):
            st = engine.tensor_state(i)
            if st["step"] or st["boundary_pending"]:
                self.state[p] = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in st.items()}
        packed = super().state_dict()
        self.state.clear()
        return packed

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (param groups, their hyper-parameters, state)."""
        params = self._param_list()
        saved = state_dict["state"]
        for index, st in saved.items():
            missing = [k for k in (*STATE_NAMES, "step", "steps_since_boundary", "boundary_pending") if k not in st]
            if missing:
                raise ValueError(f"state_dict entry {index} lacks {missing}; was it saved by lto's LTO?")
            if not 0 <= int(index) < len(params):
                raise ValueError(f"state_dict has state for parameter {index}, this optimizer has {len(params)}")
            for slot in STATE_NAMES:
                if tuple(st[slot].shape) != tuple(params[int(index)].shape):
                    raise ValueError(
                        f"state_dict {slot!r} of parameter {index} has shape {tuple(st[slot].shape)}, "
                        f"the parameter has {tuple(params[int(index)].shape)}"
                    )
        super().load_state_dict(state_dict)
        self.state.clear()
        engine = self._sync_engine()
        for i, p in enumerate(self._engine_params):
            st = saved.get(i)
            if st is None:
                zeros = np.zeros(tuple(p.shape), np.float32)
                st = {**{k: zeros for k in STATE_NAMES}, "step": 0, "steps_since_boundary": 0, "boundary_pending": False}
            else:
                st = {k: v.detach().cpu().float().numpy() if torch.is_tensor(v) else v for k, v in st.items()}
            engine.set_tensor_state(i, st)
