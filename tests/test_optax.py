"""The optax front end computes what the NumPy adapter computes, inside ``jax.jit``, with its state as a pytree."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
import jax.numpy as jnp  # noqa: E402

from lto_adapters import optax as lto_optax  # noqa: E402
from lto_adapters.numpy import LTO as NumpyLTO  # noqa: E402
from lto_runtime.state import TENSOR_STATE_KEYS  # noqa: E402

#: A nested pytree of assorted shapes: a scalar, a vector, a matrix that spans several windows, a
#: 3-D kernel and a matrix large enough to cross into the host step on its own; one is float16.
SHAPES = {"dense": {"w": (70, 40), "b": (40,)}, "conv": [(3, 4, 5, 5)], "scale": (), "big": (300, 220)}


def _params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), SHAPES, is_leaf=lambda s: isinstance(s, tuple))
    params["dense"]["b"] = params["dense"]["b"].astype(np.float16)
    return params


def _grads(params, rng: np.random.Generator) -> dict:
    return jax.tree.map(lambda p: rng.normal(size=p.shape).astype(p.dtype), params)


def _flat_names(tree) -> dict[str, object]:
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _training_step(tx, jit: bool = True):
    def step(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step) if jit else step


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_matches_numpy_adapter_across_task_boundaries(random_head_files, jit):
    """Ten steps with boundaries after steps 3 and 7, a network whose every coefficient matters
    and small chunks: parameters and every state entry equal the NumPy adapter's."""
    _, onnx_path = random_head_files
    start = _params()
    host = {name: leaf.copy() for name, leaf in _flat_names(start).items()}
    reference = NumpyLTO(host, lr=3e-2, weight_decay=1e-2, onnx_path=onnx_path, max_batch_windows=2)
    tx = lto_optax.lto(3e-2, weight_decay=1e-2, onnx_path=onnx_path, max_batch_windows=2)
    params = jax.tree.map(jnp.asarray, start)
    state = tx.init(params)
    step = _training_step(tx, jit)
    boundary = jax.jit(lto_optax.task_boundary) if jit else lto_optax.task_boundary
    rng = np.random.default_rng(1)
    for i in range(10):
        if i in (3, 7):
            state = boundary(state)
            reference.task_boundary()
        grads = _grads(start, rng)
        assert reference.step(_flat_names(grads))
        params, state = step(params, state, grads)

    for name, leaf in _flat_names(params).items():
        assert leaf.dtype == host[name].dtype
        np.testing.assert_allclose(np.asarray(leaf, np.float64), host[name].astype(np.float64), atol=1e-6, rtol=0, err_msg=name)
    expected = reference.state_dict()["state"]
    for key in TENSOR_STATE_KEYS:
        for name, leaf in _flat_names(getattr(state, key)).items():
            np.testing.assert_allclose(np.asarray(leaf, np.float64), np.asarray(expected[name][key], np.float64), atol=1e-6, rtol=0, err_msg=f"{key}{name}")
    assert int(state.count) == 10
    assert {int(b) for b in jax.tree.leaves(state.boundaries)} == {2}
    assert any(np.abs(np.asarray(c)).max() > 0 for c in jax.tree.leaves(state.coefficients)), "the network never ran"


def test_state_fields_are_the_engine_record():
    """One state format everywhere: the pytree's fields are the runtime's per-tensor record."""
    assert lto_optax.LTOState._fields == ("count", *TENSOR_STATE_KEYS)
    params = jax.tree.map(jnp.asarray, _params())
    state = lto_optax.lto().init(params)
    assert jax.tree.structure(state.exp_avg) == jax.tree.structure(params)
    assert state.anchor["dense"]["b"].dtype == jnp.float32
    assert state.step["scale"].dtype == jnp.int32 and state.boundary_pending["scale"].dtype == jnp.bool_


def test_saved_state_resumes_identically():
    """A state taken to host NumPy arrays (as a checkpoint holds it) and back continues the same run."""
    tx = lto_optax.lto(1e-2)
    step = _training_step(tx)
    params = jax.tree.map(jnp.asarray, _params())
    state = tx.init(params)
    rng = np.random.default_rng(2)
    grads = [_grads(params, rng) for _ in range(6)]
    for g in grads[:3]:
        params, state = step(params, state, g)
    state = lto_optax.task_boundary(state)
    saved_params, saved_state = jax.device_get((params, state))
    for g in grads[3:]:
        params, state = step(params, state, g)
    resumed_params, resumed_state = jax.tree.map(jnp.asarray, (saved_params, saved_state))
    for g in grads[3:]:
        resumed_params, resumed_state = step(resumed_params, resumed_state, g)
    for a, b in zip(jax.tree.leaves((params, state)), jax.tree.leaves((resumed_params, resumed_state))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_states_sharing_one_transformation_do_not_interact():
    """Two models stepped alternately through one ``tx`` get what each gets alone."""
    tx = lto_optax.lto(1e-2)
    step = _training_step(tx)
    rng = np.random.default_rng(3)
    a0, b0 = jax.tree.map(jnp.asarray, _params(4)), jax.tree.map(jnp.asarray, _params(5))
    grads_a, grads_b = [_grads(a0, rng) for _ in range(4)], [_grads(b0, rng) for _ in range(4)]
    alone, alone_state = a0, tx.init(a0)
    for g in grads_a:
        alone, alone_state = step(alone, alone_state, g)
    a, a_state, b, b_state = a0, tx.init(a0), b0, tx.init(b0)
    for ga, gb in zip(grads_a, grads_b):
        a, a_state = step(a, a_state, ga)
        b, b_state = step(b, b_state, gb)
    for x, y in zip(jax.tree.leaves((alone, alone_state)), jax.tree.leaves((a, a_state))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_schedule_in_a_chain_is_adam_before_any_boundary():
    """Before a task boundary every lto network is Adam: inside ``optax.chain`` after gradient
    clipping, with a learning-rate schedule, it follows ``optax.adam`` with the same schedule."""
    schedule = optax.exponential_decay(1e-2, transition_steps=1, decay_rate=0.8)
    tx = optax.chain(optax.clip_by_global_norm(1.0), lto_optax.lto(schedule))
    adam = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    params = {"w": jnp.asarray(np.random.default_rng(6).normal(size=(30, 20)).astype(np.float32))}
    reference = params
    state, adam_state = tx.init(params), adam.init(params)
    update = jax.jit(tx.update)
    rng = np.random.default_rng(7)
    for _ in range(8):
        grads = {"w": jnp.asarray(rng.normal(size=(30, 20)).astype(np.float32))}
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
        adam_updates, adam_state = adam.update(grads, adam_state, reference)
        reference = optax.apply_updates(reference, adam_updates)
    np.testing.assert_allclose(np.asarray(params["w"]), np.asarray(reference["w"]), atol=1e-6, rtol=0)
    marked = lto_optax.task_boundary(state)
    assert bool(marked[1].boundary_pending["w"]) and not bool(state[1].boundary_pending["w"])


def test_vmap_steps_each_member_of_an_ensemble():
    """``jax.vmap`` over stacked parameters and states steps each member as a separate run."""
    tx = lto_optax.lto(1e-2)
    rng = np.random.default_rng(8)
    members = [{"w": jnp.asarray(rng.normal(size=(6, 5)).astype(np.float32))} for _ in range(2)]
    grads = [{"w": jnp.asarray(rng.normal(size=(6, 5)).astype(np.float32))} for _ in range(2)]
    stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731
    batched, _ = jax.jit(jax.vmap(tx.update))(stack(grads), stack([tx.init(m) for m in members]), stack(members))
    for k, (member, grad) in enumerate(zip(members, grads)):
        single, _ = tx.update(grad, tx.init(member), member)
        np.testing.assert_array_equal(np.asarray(batched["w"][k]), np.asarray(single["w"]))


def test_nonfinite_gradient_skips_the_step_and_names_the_leaf():
    tx = lto_optax.lto(1e-2)
    params = {"a": jnp.ones((4, 3)), "b": jnp.ones(3)}
    state = tx.init(params)
    grads = {"a": jnp.ones((4, 3)), "b": jnp.array([1.0, np.nan, 1.0])}
    with pytest.warns(RuntimeWarning, match=r"non-finite gradient or parameter in \[\"\['b'\]\"\]"):
        updates, new_state = jax.jit(tx.update)(grads, state, params)
    assert all(not np.asarray(u).any() for u in jax.tree.leaves(updates))
    for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))


def test_a_negative_scheduled_learning_rate_skips_the_step():
    tx = lto_optax.lto(lambda count: -1e-3 * (count + 1))
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    with pytest.warns(RuntimeWarning, match="learning-rate schedule gave -0.001"):
        updates, new_state = jax.jit(tx.update)({"w": jnp.ones(3)}, state, params)
    assert not np.asarray(updates["w"]).any() and int(new_state.count) == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"learning_rate": -1.0}, ValueError, "Invalid learning rate: -1.0"),
        ({"b2": 1.0}, ValueError, "Invalid beta parameter at index 1: 1.0"),
        ({"eps": "small"}, TypeError, "eps must be a real number"),
        ({"threads": -1}, ValueError, "Invalid threads"),
    ],
)
def test_bad_hyper_parameters_are_refused_by_name(kwargs, error, message):
    with pytest.raises(error, match=message):
        lto_optax.lto(**kwargs)


def test_bad_inputs_are_refused_with_the_leaf_and_the_fix():
    tx = lto_optax.lto()
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones(3)}
    state = tx.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    with pytest.raises(ValueError, match=r"call tx\.update\(grads, state, params\)"):
        tx.update(grads, state)
    with pytest.raises(TypeError, match=r"parameter \['n'\] is .* int32.*optax\.masked"):
        tx.init({**params, "n": jnp.arange(3)})
    with pytest.raises(ValueError, match="holds no arrays"):
        tx.init({})
    with pytest.raises(ValueError, match="one gradient per parameter"):
        tx.update({"w": grads["w"]}, state, params)
    with pytest.raises(ValueError, match=r"gradient \['b'\] has shape \(4,\), its parameter has \(3,\)"):
        tx.update({**grads, "b": jnp.ones(4)}, state, params)
    with pytest.raises(TypeError, match=r"gradient \['w'\] .* complex64; lto takes real"):
        tx.update({**grads, "w": jnp.ones((4, 3), jnp.complex64)}, state, params)
    other = tx.init({"w": jnp.ones((4, 3)), "b": jnp.ones(5)})
    with pytest.raises(ValueError, match=r"state\.exp_avg\['b'\] is float32\[5\], expected float32\[3\]; was the state made by init"):
        jax.jit(tx.update)(grads, other, params)
    with pytest.raises(TypeError, match="state must be the LTOState"):
        tx.update(grads, optax.adam(1e-3).init(params), params)
    with pytest.raises(ValueError, match="Invalid max_batch_windows: 0"):
        lto_optax.lto(max_batch_windows=0).init(params)
    with pytest.raises(ValueError, match="holds no LTOState"):
        lto_optax.task_boundary(optax.adam(1e-3).init(params))


def test_masked_leaves_are_left_alone():
    """``optax.masked`` keeps integer leaves (a step counter in the model, say) out of lto."""
    params = {"w": jnp.ones((4, 3)), "n": jnp.arange(3)}
    tx = optax.masked(lto_optax.lto(1e-2), {"w": True, "n": False})
    state = tx.init(params)
    grads = {"w": jnp.ones((4, 3)), "n": jnp.zeros(3, jnp.int32)}
    updates, state = jax.jit(tx.update)(grads, state, params)
    assert np.asarray(updates["w"]).min() < 0
    state = lto_optax.task_boundary(state)
    assert bool(state.inner_state.boundary_pending["w"])
