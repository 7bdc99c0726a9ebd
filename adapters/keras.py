"""The Keras 3 front end: :class:`LTO`, a ``keras.optimizers.Optimizer``, and the :class:`TaskBoundary` callback.

``LTO`` runs the same ONNX step as the PyTorch and NumPy front ends, through one
:class:`~lto_runtime.StepEngine` over all the model's trainable variables, so every framework gets
the same numbers. Importing this module imports Keras; importing ``lto_adapters`` does not.

Backends: ``torch`` (the engine reads the variables' tensors in place; on CUDA with
``onnxruntime-gpu`` the state stays on the GPU, see :mod:`lto_adapters.torch`) and ``jax`` (the
step runs on the host through ``jax.experimental.io_callback``, so it works inside ``jit``).
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import keras
import numpy as np

from lto_runtime import HYPER_NAMES, MAX_BATCH_WINDOWS, STATE_NAMES, OptimizerSession, StepEngine, hyper_row
from lto_runtime.state import SHIFT_NAMES, check_boundaries

#: Rows of the saved ``lto_counters`` array: each variable's counters, in this order.
COUNTERS: tuple[str, ...] = ("step", "steps_since_boundary", "boundaries", "boundary_pending")

#: Keras backends ``LTO`` runs on.
BACKENDS = ("torch", "jax")

#: Prefix of the keys ``LTO`` adds to Keras' weight store, next to the base optimizer's ``"0"``, ``"1"``, ...
STATE_KEY_PREFIX = "lto_"


@keras.saving.register_keras_serializable(package="lto", name="LTO")
class LTO(keras.optimizers.Optimizer):
    """The lto learned optimizer for Keras 3: ``model.compile(optimizer=LTO(learning_rate=1e-3))``.

    Args:
        learning_rate: a float, a ``keras.optimizers.schedules.LearningRateSchedule`` or a callable;
            the step scales with it, as in Adam.
        beta_1: Adam's decay rate of the first moment.
        beta_2: Adam's decay rate of the second moment.
        epsilon: Adam's denominator term (``1e-8``, as the other lto front ends, so all agree).
        weight_decay: L2 penalty added to the gradient inside the step, ``g + weight_decay * theta``,
            as in the torch and NumPy front ends (and ``torch.optim.Adam``), so the three take the
            same step; not Keras' decoupled decay. ``None`` means 0. Variables named in
            ``exclude_from_weight_decay()`` get none.
        onnx_path: optimizer file; ``None`` for the packaged default.
        providers: onnxruntime providers: ``None`` (CPU), ``"auto"`` (CUDA when it really loads,
            else CPU) or a list. The providers in use are ``opt.runtime.providers``.
        max_batch_windows: windows per session call; bounds the step's extra memory.
        threads: onnxruntime intra-op threads (default 1; 0: onnxruntime's choice, one per physical core).
        boundaries: ``"manual"`` (task boundaries where :meth:`task_boundary` is called, or the
            :class:`TaskBoundary` callback) or ``"auto"`` (task-free: the optimizer also detects
            shifts in the gradients itself; see :class:`lto_adapters.torch.LTO`).
        **kwargs: the base optimizer's arguments (``clipnorm``, ``global_clipnorm``, ``clipvalue``,
            ``use_ema``, ``loss_scale_factor``, ``gradient_accumulation_steps`` (torch backend
            only), ``name``).

    Where the state lives: per-element state (``exp_avg``, ``exp_avg_sq``, ``log_importance``,
    ``anchor``), per-token ``coefficients`` and the per-variable counters (step, steps since
    boundary, boundaries, boundary pending) live in the engine (``opt.engine``), not in Keras
    variables; ``opt.variables`` holds only Keras' ``iteration`` and ``learning_rate``.
    :meth:`save_own_variables` and :meth:`load_own_variables` write and read the engine state in
    Keras' weight store (keys ``lto_state_<i>``: ``[4, *shape]`` float32 per trainable variable;
    ``lto_coefficients_<i>``: ``[tokens, 3]`` float32; ``lto_counters``: ``[4, variables]`` int64;
    ``lto_energy``: ``[3, variables]`` float32, the shift statistics of ``boundaries="auto"``),
    so ``model.save("m.keras")`` and ``keras.models.load_model`` resume exactly.

    Call :meth:`task_boundary` (or use the :class:`TaskBoundary` callback) when one task ends.
    NaN or Inf in a gradient (or in a variable being stepped) skips the step: a warning names the
    variable, and parameters and engine state are unchanged (Keras' ``iterations`` still counts the step).

    Examples:
        >>> model.compile(optimizer=LTO(learning_rate=1e-3), loss="sparse_categorical_crossentropy")
        >>> model.fit(x_task1, y_task1, callbacks=[TaskBoundary()])
        >>> model.fit(x_task2, y_task2, callbacks=[TaskBoundary()])
    """

    def __init__(
        self,
        learning_rate: float | Any = 1e-3,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        weight_decay: float | None = 0.0,
        *,
        onnx_path: str | os.PathLike | None = None,
        providers: str | Sequence[str] | None = None,
        max_batch_windows: int = MAX_BATCH_WINDOWS,
        threads: int = 1,
        boundaries: str = "manual",
        name: str = "lto",
        **kwargs: Any,
    ) -> None:
        backend = keras.backend.backend()
        if backend not in BACKENDS:
            raise ValueError(f"LTO runs on the Keras backends {BACKENDS}; KERAS_BACKEND is {backend!r}. Set KERAS_BACKEND=torch or jax")
        if backend == "jax" and kwargs.get("gradient_accumulation_steps"):
            raise ValueError("gradient_accumulation_steps is not supported by LTO on the jax backend (the host step cannot be undone); use the torch backend")
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        weight_decay = 0.0 if weight_decay is None else weight_decay
        # A schedule's learning rates are checked at every step; a float is checked now.
        hyper_row(learning_rate if isinstance(learning_rate, float) else 0.0, (beta_1, beta_2), epsilon, weight_decay)
        if max_batch_windows < 1:
            raise ValueError(f"Invalid max_batch_windows: {max_batch_windows}; must be >= 1")
        #: ``"manual"`` or ``"auto"``.
        self.boundaries = check_boundaries(boundaries)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        # Set after the base constructor, which would otherwise apply it as decoupled decay.
        self.weight_decay = float(weight_decay)
        self.onnx_path = None if onnx_path is None else str(onnx_path)
        self._providers_request = providers if providers is None or isinstance(providers, str) else tuple(providers)
        self.max_batch_windows = int(max_batch_windows)
        #: The onnxruntime session; ``runtime.providers`` are the providers really in use.
        self.threads = threads
        self.runtime = OptimizerSession(self.onnx_path, self._providers_request, threads)
        self._engine: StepEngine | None = None

    # -- engine ---------------------------------------------------------------------------------

    @property
    def engine(self) -> StepEngine:
        """The :class:`~lto_runtime.StepEngine` holding the state of every trainable variable.

        Raises:
            RuntimeError: the optimizer is not built yet.
        """
        if self._engine is None:
            raise RuntimeError("LTO is not built yet: train a step, or call optimizer.build(model.trainable_variables)")
        return self._engine

    def build(self, variables: Sequence[Any]) -> None:
        """Create the engine for ``variables`` (called by Keras before the first step)."""
        if self.built:
            return
        super().build(variables)
        kwargs = dict(max_batch_windows=self.max_batch_windows, boundaries=self.boundaries)
        if keras.backend.backend() == "torch":
            from lto_runtime._torch_engine import build_engine

            self._engine = build_engine(self.runtime, [v.value for v in variables], **kwargs)
        else:
            self._engine = StepEngine(self.runtime, [tuple(v.shape) for v in variables], **kwargs)

    def task_boundary(self) -> None:
        """Signal the end of a task: the next step consolidates importance and re-anchors."""
        self.engine.task_boundary()

    # -- stepping -------------------------------------------------------------------------------

    def _apply_weight_decay(self, variables: Sequence[Any]) -> None:
        """Nothing: the step adds ``weight_decay * theta`` to the gradient itself (see the class docstring)."""

    def _hyper(self, learning_rate: float) -> np.ndarray:
        """Each trainable variable's row of :data:`~lto_runtime.HYPER_NAMES` at ``learning_rate``."""
        row = hyper_row(learning_rate, (self.beta_1, self.beta_2), self.epsilon, self.weight_decay)
        rows = np.tile(row, (len(self._trainable_variables), 1))
        rows[:, HYPER_NAMES.index("weight_decay")] *= [self._use_weight_decay(v) for v in self._trainable_variables]
        return rows

    def _warn_nonfinite(self, bad: list[int]) -> None:
        names = [self._trainable_variables[i].path for i in bad]
        warnings.warn(f"LTO: non-finite gradient or parameter in {names}; step skipped, parameters and state unchanged", RuntimeWarning, stacklevel=4)

    def _backend_update_step(self, grads: list, trainable_variables: list, learning_rate: Any) -> None:
        """Step every variable at once through the engine (Keras calls this with the gradients it has)."""
        index = [self._get_variable_index(v) for v in trainable_variables]
        if keras.backend.backend() == "jax":
            self._jax_update(grads, trainable_variables, index, learning_rate)
            return
        from lto_runtime._torch_engine import step_tensors

        full: list = [None] * len(self._trainable_variables)
        for i, g in zip(index, grads):
            full[i] = g
        hyper = self._hyper(float(learning_rate))
        bad = step_tensors(self.engine, full, [v.value for v in self._trainable_variables], hyper)
        if bad:
            self._warn_nonfinite(bad)

    def _jax_update(self, grads: list, trainable_variables: list, index: list[int], learning_rate: Any) -> None:
        """The step as an ordered host callback: works eagerly and under ``jax.jit``."""
        import jax
        from jax.experimental import io_callback

        count = len(self._trainable_variables)

        def host_step(lr, present_grads, all_params):
            full: list = [None] * count
            for i, g in zip(index, present_grads):
                full[i] = np.asarray(g)
            params = [np.array(p, dtype=np.float32) for p in all_params]

            def apply(i: int, start: int, stop: int, update: np.ndarray) -> None:
                params[i].reshape(-1)[start:stop] += update

            bad = self.engine.step(full, params, self._hyper(float(lr)), apply)
            if bad:
                self._warn_nonfinite(bad)
            return [params[i].astype(v.dtype) for i, v in zip(index, trainable_variables)]

        shapes = [jax.ShapeDtypeStruct(tuple(v.shape), v.dtype) for v in trainable_variables]
        new_values = io_callback(
            host_step,
            shapes,
            keras.ops.convert_to_tensor(learning_rate),
            list(grads),
            [v.value for v in self._trainable_variables],
            ordered=True,
        )
        for variable, value in zip(trainable_variables, new_values):
            variable.assign(value)

    # -- saving ---------------------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments (with the base optimizer's), for ``from_config`` and ``.keras`` files."""
        config = super().get_config()
        providers = self._providers_request
        config.update(
            beta_1=self.beta_1,
            beta_2=self.beta_2,
            epsilon=self.epsilon,
            onnx_path=self.onnx_path,
            providers=list(providers) if isinstance(providers, tuple) else providers,
            max_batch_windows=self.max_batch_windows,
            threads=self.threads,
            boundaries=self.boundaries,
        )
        return config

    def save_own_variables(self, store: Any) -> None:
        """Write Keras' optimizer variables and the engine state (see the class docstring) to ``store``."""
        super().save_own_variables(store)
        if self._engine is None:
            return
        engine = self._engine
        states = [engine.tensor_state(i) for i in range(len(self._trainable_variables))]
        for i, state in enumerate(states):
            store[f"{STATE_KEY_PREFIX}state_{i}"] = np.stack([state[name] for name in STATE_NAMES])
            store[f"{STATE_KEY_PREFIX}coefficients_{i}"] = state["coefficients"]
        store[f"{STATE_KEY_PREFIX}counters"] = np.array(
            [[int(s[name]) for s in states] for name in COUNTERS], dtype=np.int64
        ).reshape(len(COUNTERS), len(states))
        store[f"{STATE_KEY_PREFIX}energy"] = np.array(
            [[s[name] for s in states] for name in SHIFT_NAMES], dtype=np.float32
        ).reshape(len(SHIFT_NAMES), len(states))

    def load_own_variables(self, store: Any) -> None:
        """Restore what :meth:`save_own_variables` wrote; everything is checked before anything changes.

        Raises:
            ValueError: the store was not written by an ``LTO`` over variables of these shapes.
        """
        keys = list(store.keys())
        base_keys = [k for k in keys if not k.startswith(STATE_KEY_PREFIX)]
        if not self.built:
            warnings.warn(
                f"Skipping variable loading for optimizer '{self.name}': it is not built yet; "
                "call optimizer.build(model.trainable_variables) before loading",
                stacklevel=2,
            )
            return
        counters_key = f"{STATE_KEY_PREFIX}counters"
        if counters_key not in keys:
            raise ValueError(f"the saved optimizer has no {counters_key!r}; it was not saved by lto's LTO")
        if len(base_keys) != len(self.variables):
            raise ValueError(
                f"the saved optimizer has {len(base_keys)} Keras variables, '{self.name}' has {len(self.variables)}; "
                "was it saved with a learning-rate schedule and loaded with a float (or the reverse)?"
            )
        count = len(self._trainable_variables)
        counters = np.asarray(store[counters_key])
        if counters.shape != (len(COUNTERS), count):
            raise ValueError(
                f"saved {counters_key!r} has shape {counters.shape}; this optimizer has {count} variables, expected ({len(COUNTERS)}, {count})"
            )
        # Saved before lto kept shift statistics: none, which restarts shift detection; saved
        # before it counted the steps over the threshold (two rows): that count starts at zero.
        energy_key = f"{STATE_KEY_PREFIX}energy"
        energy = np.asarray(store[energy_key]) if energy_key in keys else np.zeros((0, count), np.float32)
        if energy.shape in ((0, count), (2, count)):
            energy = np.concatenate([energy, np.zeros((len(SHIFT_NAMES) - len(energy), count), np.float32)])
        if energy.shape != (len(SHIFT_NAMES), count):
            raise ValueError(f"saved {energy_key!r} has shape {energy.shape}, expected ({len(SHIFT_NAMES)}, {count})")
        states = []
        for i, variable in enumerate(self._trainable_variables):
            key = f"{STATE_KEY_PREFIX}state_{i}"
            want = (len(STATE_NAMES), *tuple(variable.shape))
            value = np.asarray(store[key]) if key in keys else None
            if value is None or value.shape != want:
                got = "missing" if value is None else f"shape {value.shape}"
                raise ValueError(f"saved optimizer state {key!r} for {variable.path} is {got}, expected shape {want}")
            coefficients = f"{STATE_KEY_PREFIX}coefficients_{i}"
            if coefficients not in keys:
                raise ValueError(f"saved optimizer state lacks {coefficients!r} for {variable.path}; it was not saved by this version of lto's LTO")
            state = {name: value[s] for s, name in enumerate(STATE_NAMES)}
            state["coefficients"] = np.asarray(store[coefficients])
            state.update({name: counters[c, i].item() for c, name in enumerate(COUNTERS)})
            state["boundary_pending"] = bool(state["boundary_pending"])
            state.update({name: energy[e, i].item() for e, name in enumerate(SHIFT_NAMES)})
            states.append(state)
        checked = self.engine.check_states(states, [f"saved state of {v.path}" for v in self._trainable_variables])
        values = [self._saved_variable(store, keys, i, variable) for i, variable in enumerate(self.variables)]
        for variable, value in zip(self.variables, values):
            variable.assign(value)
        self.engine.load_states(checked)

    def _saved_variable(self, store: Any, keys: list[str], index: int, variable: Any) -> np.ndarray:
        """The saved value of Keras variable ``index`` (iterations, learning rate), checked before any is assigned."""
        key = str(index)
        value = np.asarray(store[key]) if key in keys else None
        want = tuple(variable.shape)
        if value is None or value.shape != want or value.dtype.kind not in "iuf" or not np.isfinite(value).all():
            got = "missing" if value is None else f"{value.dtype} of shape {value.shape}"
            raise ValueError(f"saved optimizer variable {key!r} for {variable.path} is {got}, expected finite numbers of shape {want}")
        if variable is self._learning_rate:
            try:
                hyper_row(float(value), (self.beta_1, self.beta_2), self.epsilon, self.weight_decay)
            except ValueError as err:
                raise ValueError(f"saved optimizer variable {key!r} for {variable.path}: {err}") from None
        return value


class TaskBoundary(keras.callbacks.Callback):
    """Calls the model's :meth:`LTO.task_boundary` when ``fit`` ends: train one ``fit`` per task.

    Examples:
        >>> for x, y in tasks:
        ...     model.fit(x, y, epochs=5, callbacks=[TaskBoundary()])
    """

    def _optimizer(self) -> LTO:
        optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)  # unwrap LossScaleOptimizer
        if not isinstance(optimizer, LTO):
            raise TypeError(f"TaskBoundary needs a model compiled with lto_adapters.keras.LTO, got {type(optimizer).__name__}")
        return optimizer

    def on_train_begin(self, logs: dict | None = None) -> None:
        """Check, before any training, that the model's optimizer is an ``LTO``.

        Raises:
            TypeError: it is not.
        """
        self._optimizer()

    def on_train_end(self, logs: dict | None = None) -> None:
        """Mark the task boundary on the model's optimizer."""
        self._optimizer().task_boundary()


__all__ = ["BACKENDS", "LTO", "STATE_KEY_PREFIX", "TaskBoundary"]
