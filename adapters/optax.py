"""The optax front end: ``lto(learning_rate)`` is an ``optax.GradientTransformation``.

The optimizer state is a pytree (:class:`LTOState`) that mirrors the parameters: the four state
slots of every parameter, its per-token coefficients and its step counters, all as arrays, so it
goes through ``jax.jit``, checkpointing and ``optax.chain`` like any optax state. The step itself
runs in onnxruntime on the host, reached from traced code through ``jax.pure_callback``; it
computes exactly what the NumPy and PyTorch adapters compute.

Imports JAX, optax, NumPy and ``lto_runtime``, never torch.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lto_runtime import MAX_BATCH_WINDOWS, STATE_NAMES, TOKEN_STATE_NAMES, OptimizerSession, StepEngine, hyper_row
from lto_runtime.state import COUNTER_NAMES, SHIFT_NAMES, TENSOR_STATE_KEYS, check_boundaries


class LTOState(NamedTuple):
    """The state of :func:`lto`: one entry per parameter in every field but ``count``.

    Each field except ``count`` is a pytree with the parameters' structure. The slots are float32
    arrays of the parameter's shape; ``coefficients`` is ``[tokens, 3]`` float32 (the token
    network's ``gate_offset``, ``gate_slope`` and ``pull`` for each token of the parameter); the
    counters are int32 scalars, ``boundary_pending`` a bool scalar and the shift statistics
    float32 scalars.
    """

    count: jax.Array
    """Updates taken so far (what a learning-rate schedule reads), an int32 scalar."""
    exp_avg: optax.Params
    """Adam's first moment ``m``."""
    exp_avg_sq: optax.Params
    """Adam's second moment ``v``."""
    log_importance: optax.Params
    """Consolidated importance, stored as ``log(1 + Omega)``."""
    anchor: optax.Params
    """The parameters at the last task boundary."""
    coefficients: optax.Params
    """Per-token coefficients the token network chose at its last refresh."""
    step: optax.Params
    """Steps taken (Adam's ``t``)."""
    steps_since_boundary: optax.Params
    """Steps since the last consolidated task boundary."""
    boundaries: optax.Params
    """Task boundaries consolidated so far."""
    boundary_pending: optax.Params
    """Whether the next step consolidates a task boundary (set by :func:`task_boundary`)."""
    energy_short: optax.Params
    """Short running average of the normalized gradient energy since the last boundary (``boundaries="auto"``)."""
    energy_long: optax.Params
    """Long running average of the normalized gradient energy since the last boundary (``boundaries="auto"``)."""
    shift_run: optax.Params
    """Steps in a row the shift ratio has been above its threshold (``boundaries="auto"``)."""


def lto(
    learning_rate: float | optax.Schedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    *,
    onnx_path: str | os.PathLike | None = None,
    providers: str | Sequence[str] | None = None,
    max_batch_windows: int = MAX_BATCH_WINDOWS,
    threads: int = 1,
    boundaries: str = "manual",
) -> optax.GradientTransformation:
    """The lto optimizer as an optax gradient transformation.

    Every element follows Adam's direction ``d = m_hat / (sqrt(v_hat) + eps)`` (Kingma & Ba,
    2015), gated and pulled per token by the coefficients ``(alpha, beta, c)`` the token network
    chose:

    ``u = -lr * (2 sigmoid(alpha - beta P) d + c P (theta - theta*))``

    with ``P = log(1 + Omega)`` the importance consolidated at task boundaries and ``theta*`` the
    anchor. Until the first :func:`task_boundary` has consolidated something, ``u = -lr d``:
    exactly Adam with bias correction. ``update`` returns ``u`` as the updates, to be added with
    ``optax.apply_updates``.

    Args:
        learning_rate: a float, or an optax schedule read at :attr:`LTOState.count`.
        b1: Adam's first-moment decay.
        b2: Adam's second-moment decay.
        eps: added to ``sqrt(v_hat)`` in Adam's direction.
        weight_decay: L2 weight decay added to the gradient, ``g + weight_decay * theta`` (as
            ``torch.optim.Adam``; not decoupled).
        onnx_path: optimizer file; ``None`` for the packaged default.
        providers: onnxruntime providers (``None``: CPU; ``"auto"``: CUDA if available).
        max_batch_windows: windows per session call (bounds the step's memory).
        threads: onnxruntime intra-op threads (default 1; 0: onnxruntime's choice).
        boundaries: ``"manual"`` (task boundaries where :func:`task_boundary` marks them) or
            ``"auto"`` (task-free: the optimizer also detects shifts in the gradients itself,
            see :class:`lto_adapters.torch.LTO`).

    Returns:
        ``optax.GradientTransformation(init, update)``. ``update(grads, state, params)`` needs
        ``params``, runs under ``jax.jit`` and ``jax.vmap``, and skips a step whose gradient or
        parameter holds NaN or Inf (updates zero, state unchanged, a warning names the leaf).
        ``init`` and ``update`` refuse parameters, gradients or a state that do not fit with a
        ``TypeError`` or ``ValueError`` naming the leaf, while tracing, before anything runs.

    Raises:
        ValueError: a hyper-parameter is out of range (named as ``torch.optim`` names it), or
            the optimizer file is invalid.
        TypeError: a hyper-parameter is not a real number.

    Examples:
        >>> params = {"w": jnp.zeros((3, 2))}
        >>> tx = lto(learning_rate=1e-2)
        >>> state = tx.init(params)
        >>> updates, state = tx.update({"w": jnp.ones((3, 2))}, state, params)
        >>> params = optax.apply_updates(params, updates)
    """
    schedule = learning_rate if callable(learning_rate) else None
    hyper_row(1.0 if schedule else learning_rate, (b1, b2), eps, weight_decay)
    hyper = {"betas": (float(b1), float(b2)), "eps": float(eps), "weight_decay": float(weight_decay)}
    check_boundaries(boundaries)
    host = _HostStep(OptimizerSession(onnx_path, providers, threads), max_batch_windows, hyper, boundaries)

    def init(params: optax.Params) -> LTOState:
        leaves = _checked_params(params)
        engine = host.engine(tuple(leaf.shape for leaf in leaves))
        treedef = jax.tree.structure(params)

        def per_leaf(make: Callable[[int, Any], jax.Array]) -> optax.Params:
            return jax.tree.unflatten(treedef, [make(i, leaf) for i, leaf in enumerate(leaves)])

        slots = {name: per_leaf(lambda i, leaf: jnp.zeros(leaf.shape, jnp.float32)) for name in STATE_NAMES}
        counters = {name: per_leaf(lambda i, leaf: jnp.zeros((), jnp.int32)) for name in COUNTER_NAMES}
        return LTOState(
            count=jnp.zeros((), jnp.int32),
            **slots,
            coefficients=per_leaf(lambda i, leaf: jnp.zeros((engine.token_count(i), len(TOKEN_STATE_NAMES)), jnp.float32)),
            **counters,
            boundary_pending=per_leaf(lambda i, leaf: jnp.zeros((), bool)),
            **{name: per_leaf(lambda i, leaf: jnp.zeros((), jnp.float32)) for name in SHIFT_NAMES},
        )

    def update(grads: optax.Updates, state: LTOState, params: optax.Params | None = None) -> tuple[optax.Updates, LTOState]:
        if params is None:
            raise ValueError("lto needs the parameters (its anchor and the pull toward it read them): call tx.update(grads, state, params)")
        leaves = _checked_params(params)
        engine = host.engine(tuple(leaf.shape for leaf in leaves))
        paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
        treedef = jax.tree.structure(params)
        grad_leaves = _checked_grads(grads, treedef, leaves, paths)
        records = _checked_state(state, treedef, leaves, paths, engine)
        lr = jnp.asarray(schedule(state.count) if schedule else learning_rate, jnp.float32)
        shapes = [tuple(leaf.shape) for leaf in leaves]
        state_floats = [leaf for name in _FLOAT_FIELDS for leaf in records[name]]
        state_shapes = [tuple(leaf.shape) for leaf in state_floats]
        inputs, outputs = _Crossing((*shapes, *shapes, *state_shapes)), _Crossing((*shapes, *state_shapes))
        floats = inputs.pack(jnp, [*(g.astype(jnp.float32) for g in grad_leaves), *(p.astype(jnp.float32) for p in leaves), *state_floats])
        counters = jnp.stack([jnp.stack(records[name]) for name in COUNTER_NAMES])
        pending = jnp.stack(records["boundary_pending"])
        new_floats, new_counters, new_pending, stepped = jax.pure_callback(
            functools.partial(host.step, inputs=inputs, outputs=outputs, paths=paths),
            (outputs.specs(), counters, pending, jax.ShapeDtypeStruct((), bool)),
            lr, floats, counters, pending,
            vmap_method="sequential",
        )
        results = outputs.unpack(new_floats)
        fields = _fields(results[len(leaves) :], new_counters, new_pending)
        new_state = LTOState(
            count=state.count + stepped.astype(jnp.int32),
            **{name: jax.tree.unflatten(treedef, values) for name, values in fields.items()},
        )
        return jax.tree.unflatten(treedef, [u.astype(p.dtype) for u, p in zip(results, leaves)]), new_state

    return optax.GradientTransformation(init, update)


def task_boundary(opt_state: Any) -> Any:
    """Mark a task boundary: the next update of every parameter consolidates its importance
    (``Omega``, accumulated since the last boundary) and re-anchors ``theta* = theta``.

    Pure: returns a new state with ``boundary_pending`` set for every parameter of every
    :class:`LTOState` inside ``opt_state`` (the state of :func:`lto`, or of a chain holding it).
    Works under ``jax.jit``.

    Raises:
        ValueError: ``opt_state`` holds no :class:`LTOState`.

    Examples:
        >>> state = task_boundary(state)
    """
    found = []

    def mark(node: Any) -> Any:
        if not isinstance(node, LTOState):
            return node
        found.append(node)
        return node._replace(boundary_pending=jax.tree.map(jnp.ones_like, node.boundary_pending))

    marked = jax.tree.map(mark, opt_state, is_leaf=lambda node: isinstance(node, LTOState))
    if not found:
        raise ValueError(
            f"opt_state ({type(opt_state).__name__}) holds no LTOState; pass the state that lto().init returned, "
            "or the state of the optax.chain that holds lto()"
        )
    return marked


class _HostStep:
    """The host side of :func:`lto`'s update: one engine per list of parameter shapes, reused.

    An engine's state is scratch here: every call loads the state it was given and reads the new
    state back, so the engine holds nothing between calls that a result depends on (its padding
    windows step only zero gradients and parameters) and one engine serves any number of states.
    """

    def __init__(self, session: OptimizerSession, max_batch_windows: int, hyper: dict[str, Any], boundaries: str) -> None:
        self.session, self.max_batch_windows, self.hyper, self.boundaries = session, max_batch_windows, hyper, boundaries
        self._engines: dict[tuple[tuple[int, ...], ...], StepEngine] = {}
        # jax may call a callback from several threads (one per device); an engine's buffers are shared.
        self._lock = threading.Lock()

    def engine(self, shapes: tuple[tuple[int, ...], ...]) -> StepEngine:
        """The engine for ``shapes`` (built on first use, when its layout gives the token counts)."""
        with self._lock:
            if shapes not in self._engines:
                self._engines[shapes] = StepEngine(
                    self.session, shapes, max_batch_windows=self.max_batch_windows, boundaries=self.boundaries
                )
            return self._engines[shapes]

    def step(
        self, lr: np.ndarray, floats: list[np.ndarray], counters: np.ndarray, pending: np.ndarray, *,
        inputs: _Crossing, outputs: _Crossing, paths: list[str],
    ) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """One step on the host: ``(updates and new float state, new counters, new pending flags, stepped)``.

        ``floats`` (gradients, parameters, then the float state by :data:`_FLOAT_FIELDS`) cross as
        ``inputs`` packed them, the updates and the new float state as ``outputs`` packs them;
        ``counters`` is ``[3, parameters]`` (:data:`~lto_runtime.state.COUNTER_NAMES`) and
        ``pending`` the boundary flags. Bad values do not raise here (an exception inside
        ``jax.pure_callback`` is undefined behaviour under ``jit``; everything else was checked
        while tracing): an invalid scheduled learning rate or a non-finite gradient or parameter
        skips the step with a warning, returning zero updates and the state unchanged.
        """
        count = len(paths)
        # jax hands the callback jax arrays: index host arrays, not device arrays (an op per element otherwise).
        floats = inputs.unpack([np.asarray(a) for a in floats])
        counters, pending = np.asarray(counters), np.asarray(pending)
        grads, params, state = floats[:count], floats[count : 2 * count], floats[2 * count :]

        def skipped() -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
            return outputs.pack(np, [*(np.zeros_like(p) for p in params), *state]), counters, pending, np.array(False)

        try:
            row = hyper_row(float(lr), **self.hyper)
        except ValueError:
            warnings.warn(f"lto: the learning-rate schedule gave {float(lr)}, not a finite number >= 0; step skipped, state unchanged", RuntimeWarning)
            return skipped()
        engine = self.engine(tuple(p.shape for p in params))
        updates = [np.zeros(p.shape, np.float32) for p in params]

        def apply(index: int, start: int, stop: int, update: np.ndarray) -> None:
            updates[index].reshape(-1)[start:stop] = update

        fields = _fields(state, counters, pending)
        with self._lock:
            engine.load_states([{name: values[i] for name, values in fields.items()} for i in range(count)])
            bad = engine.step(grads, params, np.tile(row, (count, 1)), apply)
            if bad:
                warnings.warn(f"lto: non-finite gradient or parameter in {[paths[i] for i in bad]}; step skipped, state unchanged", RuntimeWarning)
                return skipped()
            stepped = [engine.tensor_state(i) for i in range(count)]
        new_state = [np.asarray(s[name], np.float32) for name in _FLOAT_FIELDS for s in stepped]
        new_counters = np.array([[s[name] for s in stepped] for name in COUNTER_NAMES], np.int32)
        return outputs.pack(np, [*updates, *new_state]), new_counters, np.array([s["boundary_pending"] for s in stepped]), np.array(True)


#: The float fields of a parameter's state, in the order they cross into the host step.
_FLOAT_FIELDS: tuple[str, ...] = (*STATE_NAMES, "coefficients", *SHIFT_NAMES)
#: Arrays with fewer elements than this cross into and out of the host step concatenated into one
#: vector (jax's cost per array crossing exceeds copying them); larger ones cross as they are.
_SMALL_ARRAY = 1 << 16


class _Crossing(NamedTuple):
    """How float32 arrays of fixed ``shapes`` cross ``jax.pure_callback``: the small ones (fewer
    than :data:`_SMALL_ARRAY` elements) concatenated into one vector in front, each large one as is."""

    shapes: tuple[tuple[int, ...], ...]

    def _small(self) -> list[bool]:
        return [math.prod(s) < _SMALL_ARRAY for s in self.shapes]

    def pack(self, xp: Any, arrays: Sequence[Any]) -> list[Any]:
        """``arrays`` (one per shape) as the parts that cross (``xp``: ``numpy`` or ``jax.numpy``)."""
        small = self._small()
        parts = [a for a, is_small in zip(arrays, small) if not is_small]
        if any(small):
            parts.insert(0, xp.concatenate([xp.ravel(a) for a, is_small in zip(arrays, small) if is_small]))
        return parts

    def unpack(self, parts: Sequence[Any]) -> list[Any]:
        """Inverse of :meth:`pack`: one array per shape (the small ones are views of the vector)."""
        small = self._small()
        packed = _split(parts[0], [s for s, is_small in zip(self.shapes, small) if is_small]) if any(small) else []
        pieces, large = iter(packed), iter(parts[1:] if any(small) else parts)
        return [next(pieces) if is_small else next(large) for is_small in small]

    def specs(self) -> list[jax.ShapeDtypeStruct]:
        """Shapes and dtypes of the parts :meth:`pack` makes."""
        small = self._small()
        parts = [jax.ShapeDtypeStruct(s, jnp.float32) for s, is_small in zip(self.shapes, small) if not is_small]
        if any(small):
            parts.insert(0, jax.ShapeDtypeStruct((sum(math.prod(s) for s, is_small in zip(self.shapes, small) if is_small),), jnp.float32))
        return parts


def _fields(floats: Sequence[Any], counters: Any, pending: Any) -> dict[str, list[Any]]:
    """Each per-parameter field of :class:`LTOState` as one value per parameter, from the float
    state in :data:`_FLOAT_FIELDS` order, the ``[3, parameters]`` counters and the pending flags."""
    count = len(pending)
    out = {name: list(floats[k * count : (k + 1) * count]) for k, name in enumerate(_FLOAT_FIELDS)}
    out.update({name: [counters[k, i] for i in range(count)] for k, name in enumerate(COUNTER_NAMES)})
    out["boundary_pending"] = [pending[i] for i in range(count)]
    return out


def _split(flat: Any, shapes: Sequence[tuple[int, ...]]) -> list[Any]:
    """Consecutive pieces of the vector ``flat`` with the given shapes (views, no copies)."""
    out, offset = [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(flat[offset : offset + size].reshape(shape))
        offset += size
    return out


def _checked_params(params: optax.Params) -> list[Any]:
    """The leaves of ``params``: at least one, each a real floating-point array."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    if not flat:
        raise ValueError(f"params ({type(params).__name__}) holds no arrays; pass the pytree of parameter arrays to optimize")
    for path, leaf in flat:
        dtype = getattr(leaf, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"parameter {jax.tree_util.keystr(path)} is {type(leaf).__name__} {dtype}; lto optimizes real floating-point "
                "arrays: convert it (jnp.asarray(x, jnp.float32)), or leave it out with optax.masked"
            )
    return [leaf for _, leaf in flat]


def _checked_grads(grads: optax.Updates, treedef: Any, params: list[Any], paths: list[str]) -> list[Any]:
    """The leaves of ``grads``: the parameters' structure and shapes, real floating point."""
    if jax.tree.structure(grads) != treedef:
        raise ValueError(f"grads have structure {jax.tree.structure(grads)}, the parameters {treedef}; pass one gradient per parameter")
    leaves = jax.tree.leaves(grads)
    for path, grad, param in zip(paths, leaves, params):
        dtype = getattr(grad, "dtype", None)
        if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"gradient {path} is {type(grad).__name__} {dtype}; lto takes real floating-point gradients")
        if tuple(grad.shape) != tuple(param.shape):
            raise ValueError(f"gradient {path} has shape {tuple(grad.shape)}, its parameter has {tuple(param.shape)}")
    return leaves


def _checked_state(state: Any, treedef: Any, params: list[Any], paths: list[str], engine: StepEngine) -> dict[str, list[Any]]:
    """The per-parameter fields of ``state`` as lists of leaves, after checking every structure,
    shape and dtype against the parameters (at trace time: values are not read)."""
    if not isinstance(state, LTOState):
        raise TypeError(f"state must be the LTOState that lto().init returned, got {type(state).__name__}")
    if tuple(getattr(state.count, "shape", (None,))) != () or getattr(state.count, "dtype", None) != jnp.int32:
        raise ValueError(f"state.count must be an int32 scalar, got {state.count!r}")
    records = {}
    for name in TENSOR_STATE_KEYS:
        tree = getattr(state, name)
        if jax.tree.structure(tree) != treedef:
            raise ValueError(f"state.{name} has structure {jax.tree.structure(tree)}, the parameters {treedef}; was the state made by init for these parameters?")
        records[name] = jax.tree.leaves(tree)
    for i, (path, param) in enumerate(zip(paths, params)):
        wants = {
            **{name: (tuple(param.shape), jnp.float32) for name in STATE_NAMES},
            "coefficients": ((engine.token_count(i), len(TOKEN_STATE_NAMES)), jnp.float32),
            **{name: ((), jnp.int32) for name in COUNTER_NAMES},
            "boundary_pending": ((), jnp.bool_),
            **{name: ((), jnp.float32) for name in SHIFT_NAMES},
        }
        for name, (shape, dtype) in wants.items():
            leaf = records[name][i]
            if tuple(leaf.shape) != shape or leaf.dtype != dtype:
                raise ValueError(
                    f"state.{name}{path} is {leaf.dtype}{list(leaf.shape)}, expected {jnp.dtype(dtype)}{list(shape)}; "
                    "was the state made by init for these parameters?"
                )
    return records


__all__ = ["LTOState", "lto", "task_boundary"]
