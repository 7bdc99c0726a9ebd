"""The step engine: holds the optimizer state in window layout and streams chunks through a step.

Per step, for each chunk of at most ``max_batch_windows`` windows it copies the gradients and
parameters of the chunk's tensors into reusable window buffers, runs the step function (an
onnxruntime session, or any object with the same ``run(inputs, outputs)``), and hands the
chunk's updates to the caller, who adds them to its parameters. Extra memory beyond the state is
a fixed set of chunk-sized buffers, whatever the model size.

A step function that can also write in place (:class:`InPlaceStepFunction`, the PyTorch step)
skips the copies: it writes the new moments over the state, and where the caller says a
parameter's own float32 memory may be updated (``in_place``) it steps all that tensor's whole
windows in one call, adding the update to the parameter in the same pass.

The buffers and the state are NumPy arrays in host memory by default (:class:`HostBuffers`). A
front end can keep them on its framework's device instead by passing ``buffers=`` together with a
step function bound to that device (:meth:`~lto_runtime.OptimizerSession.on_device`); the torch
adapter does so for CUDA tensors. This module never imports a framework.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import numpy as np

from lto_runtime.format import HYPER_NAMES, SCALAR_NAMES, STATE_NAMES, TOKEN_STATE_NAMES
from lto_runtime.layout import Chunk, TokenLayout
from lto_runtime.state import StepCounters, check_tensor_state, normalized_energy

#: The state slots every step rewrites in full (the others change only at boundaries and refreshes).
MOMENT_NAMES: tuple[str, ...] = ("exp_avg", "exp_avg_sq")

#: Default windows per step-function call (512 windows of 1,024 elements: 2 MiB per buffer). Fewer
#: calls cost less Python and binding overhead; the buffers, and so the step's extra memory, grow with it.
MAX_BATCH_WINDOWS = 512

#: Column of the ``active`` flag in the scalar rows.
_ACTIVE = SCALAR_NAMES.index("active")

#: ``apply(tensor_index, start, stop, update)``: add ``update`` (float32, 1-D, a view of the
#: engine's buffers: NumPy with :class:`HostBuffers`) to the tensor's flat elements ``[start, stop)``.
ApplyFn = Callable[[int, int, int, Any], None]


class StepFunction(Protocol):
    """Anything that computes the step graph: reads ``inputs``, writes ``outputs`` in place.

    It carries its own layout: ``window`` (tokens per window ``W``), ``chunk`` (elements per token
    ``C``) and ``refresh_every`` (steps between runs of its network), from its file or checkpoint.
    """

    window: int
    chunk: int
    refresh_every: int

    def run(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        """Compute the step for the windows in ``inputs`` and write ``update`` and ``new_state`` into ``outputs``.

        ``outputs["new_exp_avg"]`` and ``outputs["new_exp_avg_sq"]`` may be the very buffers of
        ``inputs["exp_avg"]`` and ``inputs["exp_avg_sq"]`` (a call that lists no window): each
        element's new moments depend on its own old moments alone, which a step reads before it
        writes them.
        """


class InPlaceStepFunction(StepFunction, Protocol):
    """A :class:`StepFunction` that can also write a step where the engine keeps its results (the
    PyTorch step, :class:`lto_core.executor.TorchStepFunction`); the engine uses it when present.

    ``step_in_place(inputs, update)`` computes what :meth:`run` computes for a call that lists no
    window, every window active, and writes the new moments over ``inputs["exp_avg"]`` and
    ``inputs["exp_avg_sq"]``, and the update into ``update``, or, with ``update=None``, adds it to
    ``inputs["param"]`` itself. It reads ``grad``, ``param``, the state slots, ``coefficients``
    and ``scalars`` (a call over a tensor's whole windows passes only those).
    """

    def step_in_place(self, inputs: dict[str, Any], update: Any | None = None) -> None:
        """Step the windows in ``inputs`` in place (see the class docstring)."""


class ListedStepFunction(StepFunction, Protocol):
    """A :class:`StepFunction` that can compute the outputs of the listed windows alone (the
    PyTorch step); the engine uses it for the calls that only consolidate or refresh.

    ``run_listed(inputs, outputs)`` writes what :meth:`run` writes into
    ``consolidated_log_importance``, ``consolidated_anchor`` and ``refreshed_coefficients``, and
    need not write ``update`` or the new moments, which the engine discards in those calls.
    """

    def run_listed(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        """Compute the listed windows' outputs (see the class docstring)."""


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

    def nonfinite(self, grads: Sequence[Any], params: Sequence[Any]) -> list[int]:
        """Indices ``i`` (``grads[i] is None`` skipped) where ``grads[i]`` or ``params[i]`` holds NaN or Inf."""

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

    def nonfinite(self, grads: Sequence[np.ndarray | None], params: Sequence[np.ndarray]) -> list[int]:
        """Indices ``i`` (``grads[i] is None`` skipped) where ``grads[i]`` or ``params[i]`` holds NaN or Inf.

        A finite ``sum(g * theta)`` proves every element of both finite in one read-only pass over
        the pair: NaN and Inf propagate (an infinity times anything is infinite or NaN, and no sum
        makes them finite again). Only a pair whose check fails (or overflowed) is looked at
        element by element. Pairs that are not both float32 are checked by a sum of each (float16
        summed in float32, where ordinary values do not overflow). NumPy's overflow and
        invalid-value warnings are the caller's business, not the user's.
        """
        with np.errstate(over="ignore", invalid="ignore"):
            return [i for i, (g, p) in enumerate(zip(grads, params)) if g is not None and not _host_pair_finite(g, p)]

    def synchronize(self) -> None:
        """Nothing to wait for: host arrays are written synchronously."""


def _host_pair_finite(grad: np.ndarray, param: np.ndarray) -> bool:
    """Whether every element of ``grad`` and ``param`` (NumPy arrays of one shape) is finite."""
    if grad.dtype == param.dtype == np.float32 and np.isfinite(np.dot(grad.reshape(-1), param.reshape(-1))):
        return True
    return all(
        np.isfinite(a.sum(dtype=np.float32 if a.dtype == np.float16 else None)) or np.isfinite(a).all() for a in (grad, param)
    )


def _rows(scalars: np.ndarray, windows: int) -> np.ndarray:
    """``scalars`` repeated as ``windows`` rows, in memory of its own: a broadcast view's zero
    strides would make ``torch.compile`` build its kernels again for that layout."""
    return np.repeat(scalars[None], windows, axis=0)


def _is_float32(array: Any) -> bool:
    """Whether ``array`` (a NumPy array or a tensor) holds float32."""
    return str(array.dtype) in ("float32", "torch.float32")


def flat_view(array: Any) -> Any:
    """1-D C-order view of ``array`` (a copy when ``array`` is not contiguous)."""
    if hasattr(array, "flags"):
        flat = array.reshape(-1)
        # A strided 1-D array reshapes to itself; the step binds whole windows in place, contiguous.
        return flat if flat.flags.c_contiguous else np.ascontiguousarray(flat)
    if array.ndim == 1 and array.is_contiguous():
        return array  # the torch front end hands over flat tensors already
    return array.reshape(-1).contiguous()


class StepEngine:
    """Optimizer state and the chunked step for a fixed list of tensor shapes.

    Args:
        step_function: computes the step graph (see :class:`StepFunction`); its ``window``,
            ``chunk`` and ``refresh_every`` fix the layout.
        shapes: shape of each tensor the engine optimizes.
        max_batch_windows: windows per step-function call; bounds memory.
        buffers: where the window buffers and the state live (default :class:`HostBuffers`); the
            step function must read and write buffers there.
        boundaries: ``"manual"`` (task boundaries only where :meth:`task_boundary` marks them) or
            ``"auto"`` (also where the engine detects a shift in the gradients, see
            :meth:`~lto_runtime.StepCounters.detect_shift`).
    """

    def __init__(
        self,
        step_function: StepFunction,
        shapes: Sequence[tuple[int, ...]],
        *,
        max_batch_windows: int = MAX_BATCH_WINDOWS,
        buffers: Buffers | None = None,
        boundaries: str = "manual",
    ) -> None:
        if isinstance(max_batch_windows, bool) or not isinstance(max_batch_windows, (int, np.integer)) or max_batch_windows < 1:
            raise ValueError(f"Invalid max_batch_windows: {max_batch_windows!r}; must be an int >= 1")
        self.step_function = step_function
        # A step function that writes in place (InPlaceStepFunction) gets no output buffers to copy
        # from: it writes the new moments over the state and adds updates to the parameters.
        self._in_place = callable(getattr(step_function, "step_in_place", None))
        # One that computes the listed windows' outputs alone (ListedStepFunction) serves the calls
        # that only consolidate or refresh; otherwise run() computes them with a discarded step.
        self._run_listed = getattr(step_function, "run_listed", None) or step_function.run
        #: Where the window buffers and the state live.
        self.buffers: Buffers = HostBuffers() if buffers is None else buffers
        window, chunk = step_function.window, step_function.chunk
        self.layout = TokenLayout(tuple(tuple(s) for s in shapes), window, chunk)
        self.chunks: tuple[Chunk, ...] = self.layout.chunks(max_batch_windows)
        #: Step counts and boundary flags of every tensor.
        self.counters = StepCounters(len(self.layout.shapes), step_function.refresh_every, boundaries)
        #: Per tensor: ``(chunk index, chunk, piece)`` of each of its pieces, in order.
        self._pieces: list[list[tuple[int, Chunk, Any]]] = [[] for _ in self.layout.shapes]
        for k, call in enumerate(self.chunks):
            for piece in call.pieces:
                self._pieces[piece.tensor].append((k, call, piece))
        context = self.layout.context()
        self._ctx = [self.buffers.upload(context[c.window_ids]) for c in self.chunks]
        most = max((c.windows for c in self.chunks), default=0)
        # Per chunk: every state input of the step (slots and coefficients) by name.
        self._state: list[dict[str, Any]] = [{} for _ in self.chunks]
        # A step function that writes in place steps all whole windows of a tensor in one call
        # (see _step_whole_windows): their state is one block, its chunks' states views of it.
        self._block_chunks = self._whole_window_chunks() if self._in_place else {}
        self._blocks: dict[int, dict[str, Any]] = {}
        for tensor, ks in self._block_chunks.items():
            block = self._blocks[tensor] = self._new_state(sum(self.chunks[k].windows for k in ks))
            first = 0
            for k in ks:
                windows = self.chunks[k].windows
                self._state[k] = {name: slot[first : first + windows] for name, slot in block.items()}
                first += windows
        for k, call in enumerate(self.chunks):
            if not self._state[k]:
                self._state[k] = self._new_state(call.windows)
        # The step writes new moments here; a chunk of the largest size swaps them in, a smaller
        # one copies them (state is never allocated beyond the chunk's own size).
        self._spare = {name: self.buffers.zeros((most, window, chunk)) for name in MOMENT_NAMES}
        self._grad, self._param, self._mask, self._update = (self.buffers.zeros((most, window, chunk)) for _ in range(4))
        self._ones = self.buffers.upload(np.ones((most, window, chunk), np.float32))
        self._no_windows = self.buffers.zeros((0,))
        # The chunk whose mask and padding the window buffers hold (see _window_inputs).
        self._laid_out: int | None = None
        self._empty_outputs = {last: self.buffers.zeros((0, window, last)) for last in (chunk, len(TOKEN_STATE_NAMES))}

    def _whole_window_chunks(self) -> dict[int, list[int]]:
        """Indices of each tensor's chunks of whole windows (:attr:`Chunk.direct`), in order."""
        out: dict[int, list[int]] = {}
        for k, chunk in enumerate(self.chunks):
            if chunk.direct:
                out.setdefault(chunk.pieces[0].tensor, []).append(k)
        return out

    def _new_state(self, windows: int) -> dict[str, Any]:
        w, c = self.layout.window, self.layout.chunk
        state = {name: self.buffers.zeros((windows, w, c)) for name in STATE_NAMES}
        state["coefficients"] = self.buffers.zeros((windows, w, len(TOKEN_STATE_NAMES)))
        return state

    def task_boundary(self) -> None:
        """Mark a task boundary: each tensor's next step consolidates importance and re-anchors."""
        self.counters.task_boundary()

    def step(
        self,
        grads: Sequence[Any],
        params: Sequence[Any],
        hyper: np.ndarray,
        apply: ApplyFn,
        in_place: Sequence[bool] | None = None,
    ) -> list[int]:
        """One optimizer step.

        Args:
            grads: gradient of each tensor, or ``None`` to leave the tensor (and its state) alone.
            params: current value of each tensor (any float dtype; computed in float32).
                Both are arrays the engine's buffers accept: NumPy with :class:`HostBuffers`.
            hyper: ``[tensors, len(HYPER_NAMES)]`` rows of lr, beta1, beta2, eps, weight_decay.
            apply: receives the updates (see :data:`ApplyFn`).
            in_place: per tensor, whether ``params[i]`` is the parameter's own memory (float32,
                C-contiguous) and may be updated there. With a step function that writes in place
                (:class:`InPlaceStepFunction`) the update of such a tensor's whole windows is added
                to it in the pass that computes it, and ``apply`` does not receive it.

        Returns:
            Indices of tensors with a gradient whose gradient or parameter holds NaN or Inf. When
            non-empty, nothing was done: parameters, state and counters are untouched.
        """
        if len(grads) != len(self.layout.shapes) or len(params) != len(self.layout.shapes):
            raise ValueError(f"expected {len(self.layout.shapes)} gradients and parameters, got {len(grads)} and {len(params)}")
        # Parameters too: one NaN or Inf element would reach its whole window through the token
        # summaries (and the anchor, at a boundary), turning finite neighbours and the state NaN.
        nonfinite = self.buffers.nonfinite(grads, params)
        if nonfinite:
            return nonfinite
        active = np.array([g is not None for g in grads], dtype=bool)
        flat_grads = [None if g is None else flat_view(g) for g in grads]
        flat_params = [flat_view(p) for p in params]
        energies = self._normalized_energies(flat_grads, hyper) if self.counters.auto else None
        scalars, boundary, refresh = self.counters.advance(active, hyper, energies)
        # Tensors whose whole windows are stepped in one call, the update added to the parameter itself.
        whole = {
            t for t in self._blocks
            if in_place is not None and in_place[t] and active[t] and _is_float32(flat_grads[t]) and _is_float32(flat_params[t])
        }
        for t in whole:
            self._step_whole_windows(t, flat_grads, flat_params, scalars[t], boundary[t], refresh[t])
        for k, chunk in enumerate(self.chunks):
            owner = chunk.window_tensor
            stepped = active[owner]
            if not stepped.any() or (chunk.direct and chunk.pieces[0].tensor in whole):
                continue
            self._run_chunk(k, chunk, flat_grads, flat_params, scalars[owner], boundary[owner], refresh[owner], bool(stepped.all()))
            update = self._update[: chunk.windows].reshape(-1)
            for piece in chunk.pieces:
                if flat_grads[piece.tensor] is not None:
                    apply(piece.tensor, piece.start, piece.stop, update[piece.offset : piece.offset + piece.stop - piece.start])
        return []

    def _normalized_energies(self, grads: list, hyper: np.ndarray) -> np.ndarray:
        """Per tensor with a gradient, the mean over its elements of
        :func:`~lto_runtime.state.normalized_energy` against the second moment before this step
        (the statistic of ``boundaries="auto"``); 0 for a tensor without one or not yet stepped."""
        out = np.zeros(len(grads))
        beta2, eps = hyper[:, HYPER_NAMES.index("beta2")], hyper[:, HYPER_NAMES.index("eps")]
        for index, grad in enumerate(grads):
            steps = int(self.counters.step[index])
            if grad is None or steps == 0:
                continue
            correction = 1.0 - float(beta2[index]) ** steps
            total = 0.0
            for k, _, piece in self._pieces[index]:
                second = self._state[k]["exp_avg_sq"].reshape(-1)[piece.offset : piece.offset + piece.stop - piece.start]
                total += float(normalized_energy(grad[piece.start : piece.stop], second, correction, float(eps[index])).sum())
            out[index] = total / self.layout.numels[index]
        return out

    def _run_chunk(
        self,
        k: int,
        chunk: Chunk,
        grads: list,
        params: list,
        scalars: np.ndarray,
        boundary: np.ndarray,
        refresh: np.ndarray,
        all_active: bool,
    ) -> None:
        """Step one chunk, its update into ``_update``; where windows consolidate a boundary or
        refresh their coefficients, a first call computes only that (with ``run_listed`` where the
        step function has it; a ``run`` computes an update and moments that are discarded), so the
        step proper already uses the new importance, anchor and coefficients."""
        b = chunk.windows
        state = self._state[k]
        inputs = self._chunk_inputs(k, chunk, grads, params, scalars)
        if boundary.any() or refresh.any():
            self._update_listed_windows(state, inputs, self._outputs(b), np.flatnonzero(boundary), np.flatnonzero(refresh))
        self.buffers.synchronize()
        if self._in_place and all_active:
            self.step_function.step_in_place(inputs, self._update[:b])
            return
        outputs = self._outputs(b)
        if all_active:
            # Every window steps: the new moments go straight over the old ones, no copy. Safe
            # because each element's new moments read only that element's old ones, before writing.
            outputs.update({f"new_{name}": state[name] for name in MOMENT_NAMES})
            self.step_function.run(inputs, outputs)
            return
        self.step_function.run(inputs, outputs)
        # Tensors without a gradient were not stepped: they keep their moments (the graph's
        # outputs for their windows are not meaningful).
        idle = np.flatnonzero(scalars[:, _ACTIVE] == 0)
        for name in MOMENT_NAMES:
            if len(idle):
                outputs[f"new_{name}"][idle] = state[name][idle]
            if len(self._spare[name]) == b:
                state[name], self._spare[name] = self._spare[name], state[name]
            else:
                state[name][:] = outputs[f"new_{name}"]

    def _chunk_inputs(self, k: int, chunk: Chunk, grads: list, params: list, scalars: np.ndarray) -> dict[str, Any]:
        """Every input of the step for chunk ``k``, no window listed."""
        grad, param, mask = self._window_inputs(k, chunk, grads, params)
        return {
            "grad": grad, "param": param, "mask": mask, **self._state[k],
            "scalars": self.buffers.upload(scalars),
            "ctx": self._ctx[k],
            "boundary_windows": self._no_windows,
            "refresh_windows": self._no_windows,
        }

    def _step_whole_windows(self, tensor: int, grads: list, params: list, scalars: np.ndarray, boundary: bool, refresh: bool) -> None:
        """Step every whole window of ``tensor`` (a float32 parameter that may be updated in place)
        in one in-place call over its state block, the update added to the parameter itself.

        Consolidation and the network still run chunk by chunk, so their memory stays bounded.
        """
        if boundary or refresh:
            for k in self._block_chunks[tensor]:
                chunk = self.chunks[k]
                inputs = self._chunk_inputs(k, chunk, grads, params, _rows(scalars, chunk.windows))
                every, none = np.arange(chunk.windows), np.arange(0)
                self._update_listed_windows(
                    self._state[k], inputs, self._outputs(chunk.windows), every if boundary else none, every if refresh else none
                )
        block = self._blocks[tensor]
        windows = len(block["exp_avg"])
        shape = (windows, self.layout.window, self.layout.chunk)
        stop = windows * self.layout.window_elements
        inputs = {
            "grad": grads[tensor][:stop].reshape(shape), "param": params[tensor][:stop].reshape(shape), **block,
            "scalars": self.buffers.upload(_rows(scalars, windows)),
        }
        self.buffers.synchronize()
        self.step_function.step_in_place(inputs)

    def _outputs(self, b: int) -> dict[str, Any]:
        """Where a call over ``b`` windows writes: the update and new moments into the engine's
        buffers, nothing listed."""
        return {
            "update": self._update[:b],
            **{f"new_{name}": self._spare[name][:b] for name in MOMENT_NAMES},
            "consolidated_log_importance": self._empty_outputs[self.layout.chunk],
            "consolidated_anchor": self._empty_outputs[self.layout.chunk],
            "refreshed_coefficients": self._empty_outputs[len(TOKEN_STATE_NAMES)],
        }

    def _update_listed_windows(
        self, state: dict[str, Any], inputs: dict[str, Any], outputs: dict[str, Any], consolidate: np.ndarray, rerun: np.ndarray
    ) -> None:
        """Consolidate the ``consolidate`` windows, then run the network on the ``rerun`` windows
        (seeing the new importance), writing both into ``state``."""
        w = self.layout.window
        if len(consolidate):
            listed = {
                "consolidated_log_importance": self.buffers.zeros((len(consolidate), w, self.layout.chunk)),
                "consolidated_anchor": self.buffers.zeros((len(consolidate), w, self.layout.chunk)),
            }
            self.buffers.synchronize()
            self._run_listed({**inputs, "boundary_windows": self._listed(consolidate)}, {**outputs, **listed})
            state["log_importance"][consolidate] = listed["consolidated_log_importance"]
            state["anchor"][consolidate] = listed["consolidated_anchor"]
        if len(rerun):
            listed = {"refreshed_coefficients": self.buffers.zeros((len(rerun), w, len(TOKEN_STATE_NAMES)))}
            self.buffers.synchronize()
            self._run_listed({**inputs, "refresh_windows": self._listed(rerun)}, {**outputs, **listed})
            state["coefficients"][rerun] = listed["refreshed_coefficients"]

    def _listed(self, windows: np.ndarray) -> Any:
        """``windows`` (indices within a chunk) as the float32 input the step reads."""
        return self.buffers.upload(windows.astype(np.float32))

    def _window_inputs(self, k: int, chunk: Chunk, grads: list, params: list) -> tuple[Any, Any, Any]:
        """The ``grad``, ``param`` and ``mask`` windows of chunk ``k``.

        Whole windows of a float32 tensor are views of its own memory (no copy); everything else
        is copied into the engine's window buffers, with zeros in the padding.
        """
        b = chunk.windows
        if chunk.direct:
            piece = chunk.pieces[0]
            grad, param = grads[piece.tensor], params[piece.tensor]
            if _is_float32(grad) and _is_float32(param):
                shape = (b, self.layout.window, self.layout.chunk)
                return grad[piece.start : piece.stop].reshape(shape), param[piece.start : piece.stop].reshape(shape), self._ones[:b]
        grad, param, mask = self._grad[:b], self._param[:b], self._mask[:b]
        g_flat, p_flat, m_flat = grad.reshape(-1), param.reshape(-1), mask.reshape(-1)
        # The mask and the padding depend on the chunk alone: when the buffers last held this
        # chunk (a model whose last windows fit one chunk), they are in place already.
        laid_out = self._laid_out == k
        for piece in chunk.pieces:
            dst = slice(piece.offset, piece.offset + piece.stop - piece.start)
            src = grads[piece.tensor]
            g_flat[dst] = 0.0 if src is None else src[piece.start : piece.stop]
            p_flat[dst] = params[piece.tensor][piece.start : piece.stop]
            if not laid_out:
                m_flat[dst] = 1.0
        if not laid_out:
            for offset, length in chunk.padding:
                g_flat[offset : offset + length] = 0.0
                p_flat[offset : offset + length] = 0.0
                m_flat[offset : offset + length] = 0.0
        self._laid_out = k
        return grad, param, mask

    # -- state in and out, one tensor at a time ------------------------------------------------

    def token_count(self, index: int) -> int:
        """Tokens of tensor ``index`` (padding tokens included): ``windows * W``."""
        return int(self.layout.window_counts[index]) * self.layout.window

    def tensor_state(self, index: int) -> dict[str, np.ndarray | int | bool | float]:
        """State of tensor ``index`` (copies): each slot of :data:`STATE_NAMES` as a float32 array of
        the tensor's shape, ``coefficients`` ``[tokens, len(TOKEN_STATE_NAMES)]``, the counters
        ``step``, ``steps_since_boundary``, ``boundaries``, the bool ``boundary_pending`` and the
        shift statistics ``energy_short``, ``energy_long``, ``shift_run`` (floats; zero unless
        ``boundaries="auto"``)."""
        shape, numel = self.layout.shapes[index], self.layout.numels[index]
        slots = np.zeros((len(STATE_NAMES), numel), np.float32)
        coefficients = np.zeros((self.token_count(index), len(TOKEN_STATE_NAMES)), np.float32)
        w = self.layout.window
        for k, chunk, piece in self._pieces[index]:
            state = self._state[k]
            for i, name in enumerate(STATE_NAMES):
                flat = state[name].reshape(-1)
                slots[i, piece.start : piece.stop] = self.buffers.download(flat[piece.offset : piece.offset + piece.stop - piece.start])
            first, windows = self._piece_windows(piece, chunk)
            tokens = self.buffers.download(state["coefficients"][first : first + windows]).reshape(-1, len(TOKEN_STATE_NAMES))
            start = piece.start // self.layout.window_elements * w
            coefficients[start : start + len(tokens)] = tokens
        out: dict[str, np.ndarray | int | bool | float] = {n: slots[i].reshape(shape) for i, n in enumerate(STATE_NAMES)}
        out["coefficients"] = coefficients
        out.update(self.counters.record(index))
        return out

    def _piece_windows(self, piece, chunk: Chunk) -> tuple[int, int]:
        """First window of ``piece`` inside its chunk, and how many windows it spans."""
        per = self.layout.window_elements
        return piece.offset // per, -(-(piece.stop - piece.start) // per)

    def check_states(self, states: Sequence[Any], names: Sequence[str]) -> list[dict[str, Any]]:
        """Validate one saved state per tensor (see :func:`~lto_runtime.state.check_tensor_state`)
        without writing anything; ``names`` name the entries in errors."""
        if len(states) != len(self.layout.shapes):
            raise ValueError(f"expected state for {len(self.layout.shapes)} tensors, got {len(states)}")
        return [check_tensor_state(s, self.layout.shapes[i], self.token_count(i), names[i]) for i, s in enumerate(states)]

    def load_states(self, states: Sequence[dict[str, Any]]) -> None:
        """Write states that :meth:`check_states` returned, one per tensor."""
        for index, state in enumerate(states):
            self._write_tensor_state(index, state)

    def set_tensor_state(self, index: int, state: Any) -> None:
        """Inverse of :meth:`tensor_state` for one tensor.

        Raises:
            ValueError: the state is malformed (see :func:`~lto_runtime.state.check_tensor_state`);
                nothing is changed then.
        """
        checked = check_tensor_state(state, self.layout.shapes[index], self.token_count(index), f"state of tensor {index}")
        self._write_tensor_state(index, checked)

    def _write_tensor_state(self, index: int, state: dict[str, Any]) -> None:
        w = self.layout.window
        for k, chunk, piece in self._pieces[index]:
            target = self._state[k]
            for name in STATE_NAMES:
                values = state[name].reshape(-1)[piece.start : piece.stop]
                target[name].reshape(-1)[piece.offset : piece.offset + piece.stop - piece.start] = self.buffers.upload(values)
            first, windows = self._piece_windows(piece, chunk)
            start = piece.start // self.layout.window_elements * w
            tokens = state["coefficients"][start : start + windows * w].reshape(windows, w, len(TOKEN_STATE_NAMES))
            target["coefficients"][first : first + windows] = self.buffers.upload(tokens)
        self.counters.restore(index, state)
