"""The step engine: holds the optimizer state in window layout and streams chunks through a step.

Per step, for each chunk of at most ``max_batch_windows`` windows it copies the gradients and
parameters of the chunk's tensors into reusable window buffers, runs the step function (an
onnxruntime session, or any object with the same ``run(inputs, outputs)``), and hands the
chunk's updates to the caller, who adds them to its parameters. Extra memory beyond the state is
a fixed set of chunk-sized buffers, whatever the model size.

The buffers and the state are NumPy arrays in host memory by default (:class:`HostBuffers`). A
front end can keep them on its framework's device instead by passing ``buffers=`` together with a
step function bound to that device (:meth:`~lto_runtime.OptimizerSession.on_device`); the torch
adapter does so for CUDA tensors. This module never imports a framework.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import numpy as np

from lto_runtime.format import HYPER_NAMES, SCALAR_NAMES, STATE_NAMES
from lto_runtime.layout import Chunk, TokenLayout

#: ``apply(tensor_index, start, stop, update)``: add ``update`` (float32, 1-D, a view of the
#: engine's buffers: NumPy with :class:`HostBuffers`) to the tensor's flat elements ``[start, stop)``.
ApplyFn = Callable[[int, int, int, Any], None]


class StepFunction(Protocol):
    """Anything that computes the step graph: reads ``inputs``, writes ``outputs`` in place."""

    def run(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        """Compute the step for the windows in ``inputs`` and write ``update`` and ``new_state`` into ``outputs``."""


class Buffers(Protocol):
    """Where a :class:`StepEngine` keeps its window buffers and state, and how data gets there.

    Arrays are float32 and support NumPy-style slicing, ``reshape`` and slice assignment.
    """

    def zeros(self, shape: tuple[int, ...]) -> Any:
        """A new zero-filled float32 array."""

    def upload(self, host: np.ndarray) -> Any:
        """A C-contiguous float32 array holding ``host``, where the buffers live."""

    def download(self, array: Any) -> np.ndarray:
        """``array`` as a host NumPy array."""

    def nonfinite(self, arrays: Sequence[Any]) -> list[int]:
        """Indices of the arrays (``None`` entries skipped) holding NaN or Inf."""

    def synchronize(self) -> None:
        """Wait for pending writes to the buffers (before onnxruntime reads them on its own stream)."""


class HostBuffers:
    """The default :class:`Buffers`: NumPy arrays in host memory."""

    def zeros(self, shape: tuple[int, ...]) -> np.ndarray:
        """A new zero-filled float32 array."""
        return np.zeros(shape, np.float32)

    def upload(self, host: np.ndarray) -> np.ndarray:
        """``host`` as a C-contiguous float32 array (no copy when it already is one)."""
        return np.ascontiguousarray(host, dtype=np.float32)

    def download(self, array: np.ndarray) -> np.ndarray:
        """``array`` itself."""
        return np.asarray(array)

    def nonfinite(self, arrays: Sequence[np.ndarray | None]) -> list[int]:
        """Indices of the arrays (``None`` entries skipped) holding NaN or Inf."""
        return [i for i, a in enumerate(arrays) if a is not None and not np.isfinite(a).all()]

    def synchronize(self) -> None:
        """Nothing to wait for: host arrays are written synchronously."""


def hyper_row(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> np.ndarray:
    """Validate Adam's hyper-parameters and pack them as one row of :data:`HYPER_NAMES`.

    Raises:
        ValueError: naming the first invalid argument, as ``torch.optim`` does.
    """
    lr, eps, weight_decay = float(lr), float(eps), float(weight_decay)
    if not 0.0 <= lr < float("inf"):
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps < float("inf"):
        raise ValueError(f"Invalid epsilon value: {eps}")
    if len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r}; expected a pair (beta1, beta2)")
    for i, beta in enumerate(betas):
        if not 0.0 <= float(beta) < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
    if not 0.0 <= weight_decay < float("inf"):
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    return np.array([lr, float(betas[0]), float(betas[1]), eps, weight_decay], dtype=np.float64)


def flat_view(array: Any) -> Any:
    """1-D C-order view of ``array`` (a copy when ``array`` is not contiguous)."""
    return array.reshape(-1)


class StepEngine:
    """Optimizer state and the chunked step for a fixed list of tensor shapes.

    Args:
        step_function: computes the step graph (see :class:`StepFunction`).
        shapes: shape of each tensor the engine optimizes.
        window: tokens per window ``W``; chunk: elements per token ``C`` (from the file's metadata).
        max_batch_windows: windows per session call; bounds memory.
        buffers: where the window buffers and the state live (default :class:`HostBuffers`); the
            step function must read and write buffers there.
    """

    def __init__(
        self,
        step_function: StepFunction,
        shapes: Sequence[tuple[int, ...]],
        *,
        window: int,
        chunk: int,
        max_batch_windows: int = 256,
        buffers: Buffers | None = None,
    ) -> None:
        self.step_function = step_function
        #: Where the window buffers and the state live.
        self.buffers: Buffers = HostBuffers() if buffers is None else buffers
        self.layout = TokenLayout(tuple(tuple(s) for s in shapes), window, chunk)
        self.chunks: tuple[Chunk, ...] = self.layout.chunks(max_batch_windows)
        count = len(self.layout.shapes)
        #: Adam step count of each tensor (a tensor without gradient is not stepped).
        self.steps = np.zeros(count, dtype=np.int64)
        #: Steps of each tensor since its last task boundary.
        self.steps_since_boundary = np.zeros(count, dtype=np.int64)
        #: Tensors whose next step consolidates a task boundary.
        self.boundary_pending = np.zeros(count, dtype=bool)
        self._ctx = self.buffers.upload(self.layout.context())
        per = self.layout.window_elements
        most = max((c.windows for c in self.chunks), default=0)
        slots = len(STATE_NAMES)
        self._state = [self.buffers.zeros((slots * most * per,)) for _ in self.chunks]
        self._spare_state = self.buffers.zeros((slots * most * per,))
        self._grad, self._param, self._mask, self._update = (self.buffers.zeros((most, window, chunk)) for _ in range(4))

    def _state_view(self, flat: Any, chunk: Chunk) -> Any:
        per = self.layout.window_elements
        return flat[: len(STATE_NAMES) * chunk.windows * per].reshape(
            len(STATE_NAMES), chunk.windows, self.layout.window, self.layout.chunk
        )

    def task_boundary(self) -> None:
        """Mark a task boundary: each tensor's next step consolidates importance and re-anchors."""
        self.boundary_pending[:] = True

    def step(
        self,
        grads: Sequence[Any],
        params: Sequence[Any],
        hyper: np.ndarray,
        apply: ApplyFn,
    ) -> list[int]:
        """One optimizer step.

        Args:
            grads: gradient of each tensor, or ``None`` to leave the tensor (and its state) alone.
            params: current value of each tensor (any float dtype; computed in float32).
                Both are arrays the engine's buffers accept: NumPy with :class:`HostBuffers`.
            hyper: ``[tensors, len(HYPER_NAMES)]`` rows of lr, beta1, beta2, eps, weight_decay.
            apply: receives the updates (see :data:`ApplyFn`).

        Returns:
            Indices of tensors whose gradient holds NaN or Inf. When non-empty, nothing was done:
            parameters, state and counters are untouched.
        """
        if len(grads) != len(self.layout.shapes) or len(params) != len(self.layout.shapes):
            raise ValueError(f"expected {len(self.layout.shapes)} gradients and parameters, got {len(grads)} and {len(params)}")
        nonfinite = self.buffers.nonfinite(grads)
        if nonfinite:
            return nonfinite
        scalars = self._advance_counters(np.array([g is not None for g in grads]), hyper)
        flat_grads = [None if g is None else flat_view(g) for g in grads]
        flat_params = [flat_view(p) for p in params]
        for k, chunk in enumerate(self.chunks):
            rows = scalars[chunk.window_tensor]
            if not rows[:, SCALAR_NAMES.index("active")].any():
                continue
            self._run_chunk(k, chunk, flat_grads, flat_params, rows)
            update = self._update[: chunk.windows].reshape(-1)
            for piece in chunk.pieces:
                if flat_grads[piece.tensor] is not None:
                    apply(piece.tensor, piece.start, piece.stop, update[piece.offset : piece.offset + piece.stop - piece.start])
        return []

    def _advance_counters(self, active: np.ndarray, hyper: np.ndarray) -> np.ndarray:
        """Bump step counters of the active tensors; return per-tensor scalar rows ``[T, M]``."""
        hyper = np.asarray(hyper, dtype=np.float64).reshape(len(active), len(HYPER_NAMES))
        boundary = self.boundary_pending & active
        self.steps[active] += 1
        self.steps_since_boundary[active] = np.where(boundary[active], 1, self.steps_since_boundary[active] + 1)
        self.boundary_pending[active] = False
        counters = np.stack([self.steps, self.steps_since_boundary, boundary, active], axis=1)
        return np.concatenate([hyper, counters], axis=1).astype(np.float32)

    def _run_chunk(self, k: int, chunk: Chunk, grads: list, params: list, scalars: np.ndarray) -> None:
        b = chunk.windows
        grad, param, mask = self._grad[:b], self._param[:b], self._mask[:b]
        g_flat, p_flat, m_flat = grad.reshape(-1), param.reshape(-1), mask.reshape(-1)
        for piece in chunk.pieces:
            dst = slice(piece.offset, piece.offset + piece.stop - piece.start)
            src = grads[piece.tensor]
            g_flat[dst] = 0.0 if src is None else src[piece.start : piece.stop]
            p_flat[dst] = params[piece.tensor][piece.start : piece.stop]
            m_flat[dst] = 1.0
        for offset, length in chunk.padding:
            g_flat[offset : offset + length] = 0.0
            p_flat[offset : offset + length] = 0.0
            m_flat[offset : offset + length] = 0.0
        state = self._state_view(self._state[k], chunk)
        new_state = self._state_view(self._spare_state, chunk)
        inputs = {
            "grad": grad,
            "param": param,
            "mask": mask,
            "state": state,
            "scalars": self.buffers.upload(scalars),
            "ctx": self._ctx[chunk.first_window : chunk.first_window + b],
        }
        self.buffers.synchronize()
        self.step_function.run(inputs, {"update": self._update[:b], "new_state": new_state})
        self._state[k], self._spare_state = self._spare_state, self._state[k]

    # -- state in and out, one tensor at a time ------------------------------------------------

    def _tensor_pieces(self, index: int):
        for k, chunk in enumerate(self.chunks):
            for piece in chunk.pieces:
                if piece.tensor == index:
                    yield k, chunk, piece

    def tensor_state(self, index: int) -> dict[str, np.ndarray | int | bool]:
        """State of tensor ``index``: each slot of :data:`STATE_NAMES` as a float32 array of the
        tensor's shape, plus ``step``, ``steps_since_boundary`` and ``boundary_pending``."""
        shape = self.layout.shapes[index]
        numel = self.layout.numels[index]
        slots = np.zeros((len(STATE_NAMES), numel), np.float32)
        for k, chunk, piece in self._tensor_pieces(index):
            flat = self._state_view(self._state[k], chunk).reshape(len(STATE_NAMES), -1)
            slots[:, piece.start : piece.stop] = self.buffers.download(flat[:, piece.offset : piece.offset + piece.stop - piece.start])
        out: dict[str, np.ndarray | int | bool] = {n: slots[i].reshape(shape) for i, n in enumerate(STATE_NAMES)}
        out["step"] = int(self.steps[index])
        out["steps_since_boundary"] = int(self.steps_since_boundary[index])
        out["boundary_pending"] = bool(self.boundary_pending[index])
        return out

    def set_tensor_state(self, index: int, state: dict) -> None:
        """Inverse of :meth:`tensor_state`.

        Raises:
            ValueError: a slot is missing or has the wrong size; nothing is changed then.
        """
        numel = self.layout.numels[index]
        slots = []
        for name in STATE_NAMES:
            if name not in state:
                raise ValueError(f"state of tensor {index} lacks {name!r}")
            value = np.asarray(state[name], dtype=np.float32).reshape(-1)
            if value.size != numel:
                raise ValueError(f"state {name!r} of tensor {index} has {value.size} elements, the tensor has {numel}")
            slots.append(value)
        for k, chunk, piece in self._tensor_pieces(index):
            flat = self._state_view(self._state[k], chunk).reshape(len(STATE_NAMES), -1)
            for i, value in enumerate(slots):
                flat[i, piece.offset : piece.offset + piece.stop - piece.start] = self.buffers.upload(value[piece.start : piece.stop])
        self.steps[index] = int(state["step"])
        self.steps_since_boundary[index] = int(state["steps_since_boundary"])
        self.boundary_pending[index] = bool(state["boundary_pending"])
