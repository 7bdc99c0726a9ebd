"""The optimizer state outside the step graph: step counters, and one tensor's state as a record.

:class:`StepCounters` is the one place that counts steps and task boundaries (those the user marks
and, with ``boundaries="auto"``, those it detects itself) and turns them into the per-tensor scalar
rows the step reads; the runtime's engine and meta-training's unroll both use it.
:func:`check_tensor_state` is the one validator of a tensor's saved state, which every front end's
``load_state_dict`` goes through before anything is written.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from lto_runtime.format import HYPER_NAMES, STATE_NAMES, TOKEN_STATE_NAMES

#: Integer counters of one tensor's state record.
COUNTER_NAMES: tuple[str, ...] = ("step", "steps_since_boundary", "boundaries")
#: Float statistics of one tensor's state record, from which ``boundaries="auto"`` detects task
#: shifts: the short and long running averages of its Adam-normalized gradient energy since the last
#: task boundary, and the steps in a row its group's shift ratio has been above the threshold.
SHIFT_NAMES: tuple[str, ...] = ("energy_short", "energy_long", "shift_run")
#: How task boundaries are known: ``"manual"``, the user calls ``task_boundary()`` where a task ends;
#: ``"auto"``, the optimizer also detects them itself (see :class:`StepCounters`).
BOUNDARY_MODES: tuple[str, ...] = ("manual", "auto")
# Shift detection of ``boundaries="auto"`` (see :meth:`StepCounters.detect_shift`). Chosen on
# gradient statistics recorded under Adam on digits and synthetic streams (split, permuted and
# rotated; MLP, CNN and transformer; no MNIST-family data): the most task changes found with the
# fewest marks in plain training.
#: Decay of the short running average of each tensor's normalized gradient energy (a few steps).
SHIFT_SHORT_DECAY = 0.8
#: Decay of the long running average of each tensor's normalized gradient energy (since the boundary).
SHIFT_LONG_DECAY = 0.998
#: The largest ratio short/long over a model's tensors above which its gradients count as shifting.
SHIFT_RATIO = 2.0
#: Steps in a row the ratio must stay above :data:`SHIFT_RATIO` before a task shift is marked.
SHIFT_PERSIST = 10
#: Steps after a task boundary before another can be detected.
SHIFT_WARMUP = 50
_COUNTER_MAX = int(np.iinfo(np.int64).max)  # counters are held as int64
_FLOAT32_MAX = float(np.finfo(np.float32).max)  # the step reads hyper-parameters as float32
#: Every key of one tensor's state record (see :meth:`StepEngine.tensor_state`).
TENSOR_STATE_KEYS: tuple[str, ...] = (*STATE_NAMES, "coefficients", *COUNTER_NAMES, "boundary_pending", *SHIFT_NAMES)


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


def normalized_energy(grad: Any, exp_avg_sq: Any, correction: Any, eps: Any) -> Any:
    """``(g / (sqrt(v / correction) + eps))^2`` per element, the statistic of shift detection
    (:meth:`StepCounters.detect_shift`): each gradient element against the size Adam expects of it,
    ``v`` Adam's second moment before the step and ``correction = 1 - beta2^t`` its bias
    correction after ``t`` steps. Operators only, so NumPy arrays and torch tensors alike.
    """
    return (grad / ((exp_avg_sq / correction) ** 0.5 + eps)) ** 2


def _check_real(name: str, value: Any) -> None:
    """A real number: Python or NumPy int/float, or a one-element array or tensor; not bool or str."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or not hasattr(value, "__float__"):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    if getattr(value, "ndim", 0) or getattr(value, "is_complex", lambda: False)() or isinstance(value, complex):
        raise TypeError(f"{name} must be a real scalar, got {type(value).__name__} {value!r}")


def check_boundaries(boundaries: Any) -> str:
    """``boundaries`` if it is one of :data:`BOUNDARY_MODES`.

    Raises:
        ValueError: naming the value and both modes.
    """
    if not isinstance(boundaries, str) or boundaries not in BOUNDARY_MODES:
        raise ValueError(
            f"Invalid boundaries: {boundaries!r}; use 'manual' (call task_boundary() where each task ends) or "
            "'auto' (the optimizer also detects task shifts from the gradients itself)"
        )
    return boundaries


class StepCounters:
    """Step counts, task-boundary flags and shift statistics of ``count`` tensors.

    A tensor is stepped only when it has a gradient, so each keeps its own counts: ``step`` (Adam's
    ``t``), ``steps_since_boundary``, ``boundaries`` (task boundaries consolidated so far) and
    whether its next step consolidates one.

    With ``boundaries="auto"`` the counters also detect task shifts (:meth:`advance`) and mark them
    as task boundaries for every tensor of the same ``group`` (default: all tensors form one group,
    one model; meta-training steps many problems at once, one group each).
    """

    def __init__(self, count: int, refresh_every: int, boundaries: str = "manual", groups: Sequence[int] | None = None) -> None:
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        self.refresh_every = refresh_every
        self.auto = check_boundaries(boundaries) == "auto"
        self.groups = np.zeros(count, dtype=np.int64) if groups is None else np.asarray(groups, dtype=np.int64)
        if self.groups.shape != (count,):
            raise ValueError(f"groups must give one group per tensor ({count}), got shape {self.groups.shape}")
        self.step = np.zeros(count, dtype=np.int64)
        self.steps_since_boundary = np.zeros(count, dtype=np.int64)
        self.boundaries = np.zeros(count, dtype=np.int64)
        self.boundary_pending = np.zeros(count, dtype=bool)
        # float32, as every front end stores them, so a state saved and loaded resumes exactly.
        self.energy_short = np.zeros(count, dtype=np.float32)
        self.energy_long = np.zeros(count, dtype=np.float32)
        self.shift_run = np.zeros(count, dtype=np.float32)

    def task_boundary(self) -> None:
        """Each tensor's next step consolidates importance and re-anchors."""
        self.boundary_pending[:] = True

    def advance(
        self, active: np.ndarray, hyper: np.ndarray, energies: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Count one step of the ``active`` tensors.

        ``energies`` (required with ``boundaries="auto"``, else ignored) are this step's
        normalized gradient energies, one per tensor (:func:`normalized_energy`, averaged over the
        tensor's elements); :meth:`detect_shift` reads them first, so a shift found on this step
        makes it a task boundary.

        Returns:
            ``(scalars, boundary, refresh)``: the scalar rows ``[count, len(SCALAR_NAMES)]`` of the
            step, which tensors consolidate a task boundary on it (on a tensor's first step too:
            the anchor starts at its initial value) and which run the network. The network runs
            once a tensor holds a consolidated task: on the step of each boundary and every
            ``refresh_every`` steps after it.
        """
        hyper = np.asarray(hyper, dtype=np.float64).reshape(len(active), len(HYPER_NAMES))
        if self.auto:
            if energies is None:
                raise ValueError("boundaries='auto' needs the normalized gradient energies of the step (energies)")
            self.detect_shift(active, np.asarray(energies, dtype=np.float64))
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

    def detect_shift(self, active: np.ndarray, energies: np.ndarray) -> None:
        """Update the shift statistics with this step's normalized gradient ``energies`` and mark a
        task boundary in every group whose gradients have shifted.

        Per tensor, ``e = mean((g / (sqrt(v_hat) + eps))^2)`` (:func:`normalized_energy`): each
        element's gradient against the size Adam expects of it, from the second moment ``v_hat``
        before this step. Over the ``k`` steps since the tensor's last boundary (the boundary's own
        step left out), ``s <- a s + (1 - a) e`` and ``l <- b l + (1 - b) e`` with ``a`` =
        :data:`SHIFT_SHORT_DECAY` and ``b`` = :data:`SHIFT_LONG_DECAY`, and the bias-corrected
        ratio ``r = (s / (1 - a^k)) / (l / (1 - b^k))``. Within a task ``r`` stays near or below 1;
        when the data shifts, gradients land on elements where Adam has seen small ones (new input
        features, new classes), so ``e`` jumps even where ``|g|^2`` does not, and most in the
        tensors nearest the change (the first layer for new inputs, the last for new labels).
        So a group's ratio is the largest ``r`` over its active tensors that have seen at least
        :data:`SHIFT_WARMUP` steps since the boundary, and the group shifts once that ratio has
        stayed above :data:`SHIFT_RATIO` for :data:`SHIFT_PERSIST` steps in a row (``shift_run``
        counts them): one noisy batch late in training does not. A step that is a boundary anyway
        (marked by the user, or a tensor's first) restarts the tensor's statistics instead.
        """
        starting = self.boundary_pending | (self.step == 0)
        updating = active & ~starting
        k = self.steps_since_boundary.astype(np.float64)
        energy = np.minimum(energies, _FLOAT32_MAX)
        for name, decay in (("energy_short", SHIFT_SHORT_DECAY), ("energy_long", SHIFT_LONG_DECAY)):
            average = getattr(self, name)
            average[updating] = (decay * average + (1.0 - decay) * energy)[updating]
            average[starting & active] = 0.0
        self.shift_run[starting & active] = 0.0
        short = self.energy_short / (1.0 - SHIFT_SHORT_DECAY ** np.maximum(k, 1.0))
        long = self.energy_long / (1.0 - SHIFT_LONG_DECAY ** np.maximum(k, 1.0))
        eligible = updating & (k >= SHIFT_WARMUP) & (long > 0)
        for group in np.unique(self.groups[updating]):
            in_group = self.groups == group
            members = eligible & in_group
            over = members.any() and np.max(short[members] / long[members]) > SHIFT_RATIO
            run = self.shift_run[in_group].max() + 1.0 if over else 0.0
            self.shift_run[in_group] = run
            if run >= SHIFT_PERSIST:
                self.boundary_pending[in_group] = True
                self.energy_short[in_group] = self.energy_long[in_group] = self.shift_run[in_group] = 0.0

    def record(self, index: int) -> dict[str, int | bool | float]:
        """Tensor ``index``'s counters and shift statistics as plain Python values."""
        return {
            "step": int(self.step[index]),
            "steps_since_boundary": int(self.steps_since_boundary[index]),
            "boundaries": int(self.boundaries[index]),
            "boundary_pending": bool(self.boundary_pending[index]),
            "energy_short": float(self.energy_short[index]),
            "energy_long": float(self.energy_long[index]),
            "shift_run": float(self.shift_run[index]),
        }

    def restore(self, index: int, record: Mapping[str, Any]) -> None:
        """Inverse of :meth:`record` (``record`` already checked by :func:`check_tensor_state`)."""
        for name in (*COUNTER_NAMES, *SHIFT_NAMES):
            getattr(self, name)[index] = record[name]
        self.boundary_pending[index] = record["boundary_pending"]


def check_tensor_state(state: Any, shape: tuple[int, ...], tokens: int, where: str) -> dict[str, Any]:
    """Validate one tensor's saved state and return it normalized (float32 arrays, ints, a bool).

    ``state`` holds every key of :data:`TENSOR_STATE_KEYS`: each slot of :data:`STATE_NAMES` with
    the tensor's ``shape``, ``coefficients`` ``[tokens, len(TOKEN_STATE_NAMES)]``, non-negative
    integer counters, the bool ``boundary_pending`` and the non-negative shift statistics of
    :data:`SHIFT_NAMES` (optional: a state saved before they existed loads with zeros, which
    restarts shift detection). Arrays may be NumPy arrays or tensors with ``numpy()`` (copied to
    host). Nothing is written anywhere; ``where`` names the entry in errors.

    Raises:
        ValueError: naming ``where``, the key and what was expected.
    """
    if not isinstance(state, Mapping):
        raise ValueError(f"{where} must be a dict of state, got {type(state).__name__}")
    missing = [k for k in TENSOR_STATE_KEYS if k not in state and k not in SHIFT_NAMES]
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
    for key in SHIFT_NAMES:
        value = state.get(key, 0.0)
        try:
            _check_real(f"{where}[{key!r}]", value)
        except TypeError as err:
            raise ValueError(str(err)) from None
        if not 0.0 <= float(value) <= _FLOAT32_MAX:
            raise ValueError(f"{where}[{key!r}] must be a finite number >= 0, got {value!r}")
        out[key] = float(np.float32(value))
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
