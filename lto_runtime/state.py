"""The optimizer state outside the step graph: step counters, and one tensor's state as a record.

:class:`StepCounters` is the one place that counts steps and task boundaries and turns them into
the per-tensor scalar rows the step reads; the runtime's engine and meta-training's unroll both use
it. :func:`check_tensor_state` is the one validator of a tensor's saved state, which every front
end's ``load_state_dict`` goes through before anything is written.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from lto_runtime.format import HYPER_NAMES, STATE_NAMES, TOKEN_STATE_NAMES

#: Integer counters of one tensor's state record.
COUNTER_NAMES: tuple[str, ...] = ("step", "steps_since_boundary", "boundaries")
_COUNTER_MAX = int(np.iinfo(np.int64).max)  # counters are held as int64
_FLOAT32_MAX = float(np.finfo(np.float32).max)  # the step reads hyper-parameters as float32
#: Every key of one tensor's state record (see :meth:`StepEngine.tensor_state`).
TENSOR_STATE_KEYS: tuple[str, ...] = (*STATE_NAMES, "coefficients", *COUNTER_NAMES, "boundary_pending")


def hyper_row(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> np.ndarray:
    """Validate Adam's hyper-parameters and pack them as one row of :data:`HYPER_NAMES`.

    Raises:
        TypeError: a value is not a real number (a string, say), as ``torch.optim`` does.
        ValueError: naming the first invalid argument, as ``torch.optim`` does.
    """
    for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
        _check_real(name, value)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"Invalid betas: {betas!r}; expected a pair (beta1, beta2)")
    for i, beta in enumerate(betas):
        _check_real(f"betas[{i}]", beta)
    lr, eps, weight_decay = float(lr), float(eps), float(weight_decay)
    # The step reads these as float32: a value beyond float32's range would be Inf there, and a beta
    # that rounds to 1.0 would divide Adam's bias correction by zero.
    if not 0.0 <= lr <= _FLOAT32_MAX:
        raise ValueError(f"Invalid learning rate: {lr}")
    if not 0.0 <= eps <= _FLOAT32_MAX:
        raise ValueError(f"Invalid epsilon value: {eps}")
    for i, beta in enumerate(betas):
        if not 0.0 <= float(beta) < 1.0 or np.float32(float(beta)) == 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
    if not 0.0 <= weight_decay <= _FLOAT32_MAX:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    return np.array([lr, float(betas[0]), float(betas[1]), eps, weight_decay], dtype=np.float64)


def _check_real(name: str, value: Any) -> None:
    """A real number: Python or NumPy int/float, or a one-element array or tensor; not bool or str."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if getattr(value, "ndim", 0) or getattr(value, "is_complex", lambda: False)() or isinstance(value, complex):
        raise TypeError(f"{name} must be a real scalar, got {type(value).__name__} {value!r}")


class StepCounters:
    """Step counts and task-boundary flags of ``count`` tensors.

    A tensor is stepped only when it has a gradient, so each keeps its own counts: ``step`` (Adam's
    ``t``), ``steps_since_boundary``, ``boundaries`` (task boundaries consolidated so far) and
    whether its next step consolidates one.
    """

    def __init__(self, count: int, refresh_every: int) -> None:
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        self.refresh_every = refresh_every
        self.step = np.zeros(count, dtype=np.int64)
        self.steps_since_boundary = np.zeros(count, dtype=np.int64)
        self.boundaries = np.zeros(count, dtype=np.int64)
        self.boundary_pending = np.zeros(count, dtype=bool)

    def task_boundary(self) -> None:
        """Each tensor's next step consolidates importance and re-anchors."""
        self.boundary_pending[:] = True

    def advance(self, active: np.ndarray, hyper: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Count one step of the ``active`` tensors.

        Returns:
            ``(scalars, boundary, refresh)``: the scalar rows ``[count, len(SCALAR_NAMES)]`` of the
            step, which tensors consolidate a task boundary on it (on a tensor's first step too:
            the anchor starts at its initial value) and which run the network. The network runs
            once a tensor holds a consolidated task: on the step of each boundary and every
            ``refresh_every`` steps after it.
        """
        hyper = np.asarray(hyper, dtype=np.float64).reshape(len(active), len(HYPER_NAMES))
        boundary = (self.boundary_pending | (self.step == 0)) & active
        self.boundaries += self.boundary_pending & active
        self.step[active] += 1
        self.steps_since_boundary[active] = np.where(boundary[active], 1, self.steps_since_boundary[active] + 1)
        self.boundary_pending[active] = False
        since = self.steps_since_boundary
        refresh = active & (self.boundaries > 0) & ((since - 1) % self.refresh_every == 0)
        columns = [self.step, since, self.boundaries, active]
        scalars = np.concatenate([hyper, np.stack(columns, axis=1)], axis=1).astype(np.float32)
        return scalars, boundary, refresh

    def record(self, index: int) -> dict[str, int | bool]:
        """Tensor ``index``'s counters as plain Python values."""
        return {
            "step": int(self.step[index]),
            "steps_since_boundary": int(self.steps_since_boundary[index]),
            "boundaries": int(self.boundaries[index]),
            "boundary_pending": bool(self.boundary_pending[index]),
        }

    def restore(self, index: int, record: Mapping[str, Any]) -> None:
        """Inverse of :meth:`record` (``record`` already checked by :func:`check_tensor_state`)."""
        for name in COUNTER_NAMES:
            getattr(self, name)[index] = record[name]
        self.boundary_pending[index] = record["boundary_pending"]


def check_tensor_state(state: Any, shape: tuple[int, ...], tokens: int, where: str) -> dict[str, Any]:
    """Validate one tensor's saved state and return it normalized (float32 arrays, ints, a bool).

    ``state`` holds every key of :data:`TENSOR_STATE_KEYS`: each slot of :data:`STATE_NAMES` with
    the tensor's ``shape``, ``coefficients`` ``[tokens, len(TOKEN_STATE_NAMES)]``, non-negative
    integer counters and the bool ``boundary_pending``. Arrays may be NumPy arrays or tensors with
    ``numpy()`` (copied to host). Nothing is written anywhere; ``where`` names the entry in errors.

    Raises:
        ValueError: naming ``where``, the key and what was expected.
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"{where} must be a dict of state, got {type(state).__name__}")
    missing = [k for k in TENSOR_STATE_KEYS if k not in state]
    unknown = [k for k in state if k not in TENSOR_STATE_KEYS]
    if missing or unknown:
        raise ValueError(
            f"{where} lacks {missing} and has unknown keys {unknown}; expected {list(TENSOR_STATE_KEYS)} "
            "(saved by this version of lto's state_dict?)"
        )
    out: dict[str, Any] = {}
    wants = {**{n: tuple(shape) for n in STATE_NAMES}, "coefficients": (tokens, len(TOKEN_STATE_NAMES))}
    for key, want in wants.items():
        value = _host_array(state[key], f"{where}[{key!r}]")
        if value.shape != want:
            raise ValueError(f"{where}[{key!r}] has shape {value.shape}, expected {want}")
        # Adam's second moment overflows to +Inf under a gradient whose square exceeds float32 (as
        # torch.optim.Adam's does), and such a state must load back; nothing else may be non-finite.
        finite = np.isfinite(value) | ((value == np.inf) if key == "exp_avg_sq" else False)
        if not finite.all():
            raise ValueError(f"{where}[{key!r}] holds NaN or Inf")
        out[key] = value
    for key in COUNTER_NAMES:
        value = state[key]
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 0 <= value <= _COUNTER_MAX:
            raise ValueError(f"{where}[{key!r}] must be a non-negative int (at most {_COUNTER_MAX}), got {value!r}")
        out[key] = int(value)
    if out["steps_since_boundary"] > out["step"]:
        raise ValueError(f"{where}: steps_since_boundary {out['steps_since_boundary']} exceeds step {out['step']}")
    if not isinstance(state["boundary_pending"], (bool, np.bool_)):
        raise ValueError(f"{where}['boundary_pending'] must be a bool, got {state['boundary_pending']!r}")
    out["boundary_pending"] = bool(state["boundary_pending"])
    return out


def check_state_dict_keys(state_dict: Any, keys: tuple[str, ...]) -> None:
    """Check that a front end's ``state_dict`` is a dict with exactly ``keys`` (what its
    ``state_dict()`` returns), before any entry is read.

    Raises:
        ValueError: naming the keys expected and those found.
    """
    if not isinstance(state_dict, Mapping) or set(state_dict) != set(keys):
        found = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict).__name__
        expected = " and ".join(repr(k) for k in keys)
        raise ValueError(f"state_dict must be a dict with keys {expected} (from LTO.state_dict()), got {found}")


def _host_array(value: Any, where: str) -> np.ndarray:
    """``value`` as a float32 NumPy array: a NumPy array, or a tensor (through ``numpy()``)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if value.is_complex():
            raise ValueError(f"{where} is complex")
        if str(value.dtype) == "torch.bool":
            raise ValueError(f"{where} must be a real array, got tensor {value.dtype}")
        value = value.float().numpy()
    if not isinstance(value, np.ndarray) or not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        raise ValueError(f"{where} must be a real array, got {type(value).__name__} {getattr(value, 'dtype', '')}")
    return np.array(value, dtype=np.float32)
