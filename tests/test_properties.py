"""Property-based tests of the three front ends (issue 15 item 5).

Random shapes (0-d, empty, several windows), dtypes, memory layouts (transposed and strided views),
NaN and Inf in gradients or parameters, parameters without a gradient, duplicate parameters and
hyper-parameters at and beyond their bounds. Every case either steps (parameters stay finite, those
without a gradient do not move, the state stays finite and loads into a fresh optimizer) or is
refused (a warning for NaN/Inf, an error naming the argument otherwise) with parameters and state
byte-identical. The seed is fixed (``derandomize=True``), so CI runs the same cases every time.

Speed: an optimizer loads its onnxruntime session when it is built (20-40 ms); the session is a
pure function of its inputs, so the tests share one per file (see :func:`shared_sessions`) and build
a real optimizer (engine, layout, validation) for every case in about a millisecond.
"""

from __future__ import annotations

import math
import os
import re
import warnings

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("KERAS_BACKEND", "torch")

from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import lto_adapters.numpy as numpy_adapter  # noqa: E402
import lto_adapters.torch as torch_adapter  # noqa: E402
from lto_runtime import OptimizerSession  # noqa: E402
from helpers import frozen, keras_numpy  # noqa: E402


def fixed(examples: int):
    """Hypothesis settings for CI: a fixed seed, no deadline, no example database."""
    return settings(
        max_examples=examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module", autouse=True)
def shared_sessions():
    """Every optimizer built with the packaged default file shares one onnxruntime session."""
    sessions: dict[Any, OptimizerSession] = {}

    def session(onnx_path=None, providers=None, threads=1):
        key = (onnx_path, repr(providers), threads)
        if key not in sessions:
            sessions[key] = OptimizerSession(onnx_path, providers, threads)
        return sessions[key]

    make_step_function = torch_adapter._make_step_function

    def step_function(backend, onnx_path, checkpoint, providers, threads):
        if backend == "onnx" and checkpoint is None:
            return session(onnx_path, providers, 1 if threads is None else threads)
        return make_step_function(backend, onnx_path, checkpoint, providers, threads)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(numpy_adapter, "OptimizerSession", session)
        patch.setattr(torch_adapter, "_make_step_function", step_function)
        try:
            import lto_adapters.keras as keras_adapter

            patch.setattr(keras_adapter, "OptimizerSession", session)
        except ImportError:
            pass
        yield


# -- what a case is made of -----------------------------------------------------------------------

#: Shapes: 0-d, empty, one element, odd sizes, and one that spans two windows of 1,024 elements.
SHAPES = [(), (0,), (1,), (5,), (2, 3), (3, 0), (2, 1, 3), (1030,)]
#: Memory layouts of parameters and gradients: contiguous, a transposed view, every other row.
LAYOUTS = ["contiguous", "transposed", "strided"]
NONFINITE = [float("nan"), float("inf"), float("-inf")]
#: The sequence every case runs: the network runs on the second step after a boundary.
ACTIONS = ["step", "boundary", "step", "step"]


@st.composite
def tensor_specs(draw, dtypes: list) -> list[dict]:
    """1-3 tensors: shape, dtype, layouts of parameter and gradient, whether it has a gradient."""
    return [
        dict(
            shape=draw(st.sampled_from(SHAPES)),
            dtype=draw(st.sampled_from(dtypes)),
            layout=draw(st.sampled_from(LAYOUTS)),
            grad_layout=draw(st.sampled_from(LAYOUTS)),
            has_grad=draw(st.integers(0, 4)) > 0,
        )
        for _ in range(draw(st.integers(1, 3)))
    ]


@st.composite
def injections(draw, count: int) -> list[tuple]:
    """NaN/Inf to write before a step: (step number, tensor, "grad" or "param", value, element)."""
    return draw(
        st.lists(
            st.tuples(st.integers(0, 2), st.integers(0, count - 1), st.sampled_from(["grad", "param"]), st.sampled_from(NONFINITE), st.integers(0, 10**6)),
            max_size=2,
        )
    )


#: Valid hyper-parameters for the stepping cases (bounds included; eps > 0 keeps Adam's 0/0 out).
VALID_HYPER = st.fixed_dictionaries(
    dict(
        lr=st.sampled_from([0.0, 1e-3, 0.1, 1.0]) | st.floats(0.0, 1.0),
        betas=st.tuples(st.sampled_from([0.0, 0.9, 0.999]) | st.floats(0.0, 0.999), st.sampled_from([0.0, 0.999]) | st.floats(0.0, 0.9999)),
        eps=st.sampled_from([1e-8, 1e-12, 1e-3]) | st.floats(1e-12, 1e-2),
        weight_decay=st.sampled_from([0.0, 0.0, 1e-2]) | st.floats(0.0, 1.0),
    )
)


def numpy_array(rng: np.random.Generator, shape: tuple, dtype, layout: str) -> np.ndarray:
    """Random normal values of ``shape`` and ``dtype`` in ``layout`` (a view where it is not contiguous)."""
    if layout == "transposed" and len(shape) >= 2:
        return rng.standard_normal(shape[::-1]).astype(dtype).T
    if layout == "strided" and len(shape) >= 1:
        return rng.standard_normal((2 * shape[0], *shape[1:])).astype(dtype)[::2]
    return np.asarray(rng.standard_normal(shape), dtype=dtype)


def torch_tensor(rng: np.random.Generator, shape: tuple, dtype: torch.dtype, layout: str) -> torch.Tensor:
    """As :func:`numpy_array`, a torch tensor of any dtype (bfloat16 included)."""
    if layout == "transposed" and len(shape) >= 2:
        return torch.from_numpy(rng.standard_normal(shape[::-1]).astype(np.float32)).to(dtype).permute(*reversed(range(len(shape))))
    if layout == "strided" and len(shape) >= 1:
        return torch.from_numpy(rng.standard_normal((2 * shape[0], *shape[1:])).astype(np.float32)).to(dtype)[::2]
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(dtype)


def _index(shape: tuple, element: int) -> tuple[int, ...] | None:
    """The ``element``-th element (modulo the size) of ``shape`` as an index; ``None`` when empty."""
    size = math.prod(shape)
    return None if size == 0 else tuple(int(i) for i in np.unravel_index(element % size, shape))


def _finite(value: Any) -> bool:
    if torch.is_tensor(value):
        return bool(torch.isfinite(value.detach().float()).all())
    return bool(np.isfinite(np.asarray(value, dtype=np.float64)).all())


def _assert_state_finite(states: dict) -> None:
    for name, record in states.items():
        for key, value in record.items():
            if torch.is_tensor(value) or isinstance(value, np.ndarray):
                assert _finite(value), f"state of {name}: {key} is not finite"


def adam_first_step(param: np.ndarray, grad: np.ndarray, hyper: dict) -> np.ndarray:
    """Adam's first step in float32, bias-corrected: ``param - lr * g / (|g| + eps)`` with ``g`` the
    gradient plus L2 decay. LTO takes exactly this step until a task has been consolidated."""
    p = param.astype(np.float32)
    g = grad.astype(np.float32) + np.float32(hyper["weight_decay"]) * p
    return p - np.float32(hyper["lr"]) * g / (np.abs(g) + np.float32(hyper["eps"]))


# -- NumPy ----------------------------------------------------------------------------------------


@fixed(400)
@given(st.data())
def test_numpy_steps_or_skips_and_never_corrupts(data):
    specs = data.draw(tensor_specs([np.float16, np.float32, np.float64]), label="tensors")
    hyper = data.draw(VALID_HYPER, label="hyper")
    inject = data.draw(injections(len(specs)), label="nonfinite")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    params = {f"t{i}": numpy_array(rng, s["shape"], s["dtype"], s["layout"]) for i, s in enumerate(specs)}
    opt = numpy_adapter.LTO(params, **hyper)
    steps = 0
    for action in ACTIONS:
        if action == "boundary":
            opt.task_boundary()
            continue
        grads = {f"t{i}": numpy_array(rng, s["shape"], s["dtype"], s["grad_layout"]) for i, s in enumerate(specs) if s["has_grad"]}
        for when, i, where, value, element in inject:
            index = _index(specs[i]["shape"], element)
            target = grads.get(f"t{i}") if where == "grad" else params[f"t{i}"]
            if when == steps and target is not None and index is not None:
                target[index] = value
        bad = [n for n in grads if not (_finite(grads[n]) and _finite(params[n]))]
        before_params, before_state = frozen(params), frozen(opt.state_dict())
        event("skipped" if bad else "stepped")
        if bad:
            with pytest.warns(RuntimeWarning, match="non-finite") as record:
                assert opt.step(grads) is False
            assert all(repr(n) in str(record[0].message) for n in bad)
            assert frozen(params) == before_params and frozen(opt.state_dict()) == before_state
            continue
        counts = opt.engine.counters.step.copy()
        old = {n: p.copy() for n, p in params.items()}
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*non-finite")
            assert opt.step(grads) is True
        steps += 1
        state = opt.state_dict()["state"]
        _assert_state_finite(state)
        for i, (name, p) in enumerate(params.items()):
            assert state[name]["step"] == counts[i] + (name in grads)
            if name not in grads:
                assert frozen(p) == frozen(old[name])
                continue
            assert _finite(p), f"{name} stepped to NaN/Inf"
            if counts[i] == 0 and p.dtype != np.float16:
                expected = adam_first_step(old[name], grads[name], hyper)
                np.testing.assert_allclose(p.astype(np.float32), expected, rtol=2e-5, atol=2e-6 * (1 + hyper["lr"]))
    fresh = numpy_adapter.LTO({n: p.copy() for n, p in params.items()}, **hyper)
    fresh.load_state_dict(opt.state_dict())
    assert frozen(fresh.state_dict()) == frozen(opt.state_dict())


# -- hyper-parameters: an oracle restating the contract -------------------------------------------

F32_MAX = float(np.finfo(np.float32).max)
REAL_EDGES = [0.0, -0.0, 1.0, 1 - 1e-12, 1 - 1e-7, 0.999, 3.5e38, F32_MAX, 1e300, -1e-8, -1.0, 5e-324, float("nan"), float("inf"), float("-inf")]
REALS = st.sampled_from(REAL_EDGES) | st.floats(allow_nan=True, allow_infinity=True) | st.integers(-2, 3)
ODD = st.sampled_from(["1e-3", "", None, True, False, np.bool_(True), 1j, [0.1], (), b"1", {"lr": 1e-3}])
VALUES = REALS | REALS.map(np.float64) | REALS.map(lambda v: np.array(float(v))) | ODD
BETAS = st.tuples(VALUES, VALUES) | st.tuples(REALS) | st.tuples(REALS, REALS, REALS) | ODD
#: Words an error must use for each argument.
NAMES = {"lr": r"\blr\b|learning rate", "betas": r"beta", "eps": r"\beps\b|epsilon", "weight_decay": r"weight_decay"}


def _real(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_, str, bytes, complex)):
        return False
    if isinstance(value, np.ndarray):
        return value.ndim == 0 and value.dtype.kind in "iuf"
    return isinstance(value, (int, float, np.integer, np.floating))


def invalid_arguments(hyper: dict) -> list[str]:
    """The arguments torch.optim's rules (and float32 range, which the step reads) refuse."""
    bad = []
    for name in ("lr", "eps", "weight_decay"):
        value = hyper[name]
        if not _real(value) or not 0.0 <= float(value) <= F32_MAX:
            bad.append(name)
    betas = hyper["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2 or not all(_real(b) and 0.0 <= float(b) < 1.0 and np.float32(float(b)) < 1.0 for b in betas):
        bad.append("betas")
    return bad


def _refused_naming(error: BaseException, bad: list[str]) -> bool:
    return isinstance(error, (TypeError, ValueError)) and any(re.search(NAMES[n], str(error)) for n in bad)


def mostly(valid: st.SearchStrategy) -> st.SearchStrategy:
    """``valid`` three times in four, else anything from :data:`VALUES`: about half the cases with
    four arguments are accepted and step."""
    return st.integers(0, 3).flatmap(lambda k: valid if k else VALUES)


UNIT = st.sampled_from([0.0, 0.5, 0.9, 0.999]) | st.floats(0.0, 0.999)
POSITIVE = st.sampled_from([0.0, 1e-8, 1e-3, 1.0, 10]) | st.floats(0.0, 10.0)
HYPER = st.fixed_dictionaries(
    dict(lr=mostly(POSITIVE), betas=st.integers(0, 3).flatmap(lambda k: st.tuples(mostly(UNIT), mostly(UNIT)) if k else BETAS), eps=mostly(POSITIVE), weight_decay=mostly(POSITIVE))
)


@fixed(300)
@given(hyper=HYPER)
def test_numpy_hyper_parameters_are_checked_where_they_enter(hyper):
    bad = invalid_arguments(hyper)
    params = {"w": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy overflow casting 1e300 to float32
        try:
            opt = numpy_adapter.LTO(params, **hyper)
        except Exception as error:  # noqa: BLE001 - the property is about which errors
            assert bad and _refused_naming(error, bad), f"{hyper}: {error!r}"
            event(f"refused {type(error).__name__}")
            return
    event("accepted")
    assert not bad, f"accepted invalid {bad}: {hyper}"
    # The same values through the learning-rate setter and a loaded state_dict.
    other = numpy_adapter.LTO({"w": params["w"].copy()}, lr=1e-3)
    other.lr = hyper["lr"]
    other.load_state_dict(opt.state_dict())
    assert frozen(other.hyper) == frozen(opt.hyper)
    w = params["w"].copy()
    assert opt.step({"w": np.ones((2, 3), np.float32)})
    # Finite wherever Adam's first step is, short of float32's range (eps=0 on a zero gradient is
    # 0/0 in Adam too; lr near float32's largest value overflows it).
    with np.errstate(all="ignore"):
        g = (1 + np.float32(float(hyper["weight_decay"])) * w).astype(np.float64)  # float32, as Adam's
        adam = w - float(hyper["lr"]) * g / (np.abs(g) + float(hyper["eps"]))
    assert _finite(params["w"][np.abs(adam) < F32_MAX / 2])


@fixed(150)
@given(value=VALUES, name=st.sampled_from(["lr", "eps", "weight_decay", "beta1", "beta2"]))
def test_numpy_bad_hyper_parameter_in_a_state_dict_or_setter_changes_nothing(value, name):
    key = "betas" if name.startswith("beta") else name
    params = {"w": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)}
    opt = numpy_adapter.LTO(params, lr=1e-2)
    opt.step({"w": np.ones((2, 3), np.float32)})
    sd = opt.state_dict()
    hyper = dict(sd["hyper"])
    hyper[key] = (value, 0.999) if name == "beta1" else (0.9, value) if name == "beta2" else value
    bad = invalid_arguments(hyper)
    before = frozen(params), frozen(opt.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            opt.load_state_dict({"hyper": hyper, "state": sd["state"]})
            if key == "lr":
                opt.lr = value
        except Exception as error:  # noqa: BLE001
            assert bad and _refused_naming(error, bad), f"{hyper}: {error!r}"
            assert (frozen(params), frozen(opt.state_dict())) == before
            return
    assert not bad, f"accepted invalid {bad}: {hyper}"


# -- torch ----------------------------------------------------------------------------------------


@fixed(250)
@given(st.data())
def test_torch_steps_or_skips_and_never_corrupts(data):
    specs = data.draw(tensor_specs([torch.float16, torch.bfloat16, torch.float32, torch.float64]), label="tensors")
    hyper = data.draw(VALID_HYPER, label="hyper")
    inject = data.draw(injections(len(specs)), label="nonfinite")
    duplicate = data.draw(st.none() | st.integers(0, len(specs) - 1), label="duplicate")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    params = [torch.nn.Parameter(torch_tensor(rng, s["shape"], s["dtype"], s["layout"])) for s in specs]
    listed = params + ([params[duplicate]] if duplicate is not None else [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt = torch_adapter.LTO(listed, **hyper)
    # Duplicates: what torch.optim does (a warning, each entry stepped) is what LTO does.
    assert any("duplicate parameters" in str(w.message) for w in caught) == (duplicate is not None)
    for action in ACTIONS:
        if action == "boundary":
            opt.task_boundary()
            continue
        step = int(opt.engine.counters.step.max())
        for p, s in zip(params, specs):
            p.grad = torch_tensor(rng, s["shape"], s["dtype"], s["grad_layout"]) if s["has_grad"] else None
        with torch.no_grad():
            for when, i, where, value, element in inject:
                index = _index(specs[i]["shape"], element)
                target = params[i].grad if where == "grad" else params[i]
                if when == step and target is not None and index is not None:
                    target[index] = value
        bad = [i for i, p in enumerate(params) if p.grad is not None and not (_finite(p.grad) and _finite(p))]
        before = frozen(list(params)), frozen(opt.state_dict())
        event("skipped" if bad else "stepped")
        if bad:
            with pytest.warns(RuntimeWarning, match=r"non-finite .* in param_groups\[0\]\['params'\]\[%d\]" % bad[0]):
                opt.step()
            assert (frozen(list(params)), frozen(opt.state_dict())) == before
            continue
        counts = opt.engine.counters.step.copy()
        old = [(p.detach().clone(), p.stride()) for p in params]
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*non-finite")
            opt.step()
        _assert_state_finite(opt.state_dict()["state"])
        for i, (p, (o, stride)) in enumerate(zip(params, old)):
            assert p.dtype == o.dtype and p.stride() == stride
            if p.grad is None:
                assert frozen(p) == frozen(o)
                continue
            assert _finite(p)
            if counts[i] == 0 and p.dtype in (torch.float32, torch.float64) and i != duplicate:
                expected = adam_first_step(o.numpy(), p.grad.numpy(), hyper)
                np.testing.assert_allclose(p.detach().float().numpy(), expected, rtol=2e-5, atol=2e-6 * (1 + hyper["lr"]))
    if duplicate is None:  # torch.optim's state_dict keeps one state per tensor, not one per entry
        fresh = torch_adapter.LTO([p.detach().clone().requires_grad_() for p in params], **hyper)
        fresh.load_state_dict(opt.state_dict())
        assert frozen(fresh.state_dict()["state"]) == frozen(opt.state_dict()["state"])


@fixed(250)
@given(hyper=HYPER)
def test_torch_hyper_parameters_are_checked_like_torch_optim(hyper):
    bad = invalid_arguments(hyper)
    p = torch.nn.Parameter(torch.linspace(-1, 1, 6).reshape(2, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            opt = torch_adapter.LTO([p], **hyper)
        except Exception as error:  # noqa: BLE001
            assert bad and _refused_naming(error, bad), f"{hyper}: {error!r}"
            event(f"refused {type(error).__name__}")
            return
    event("accepted")
    assert not bad, f"accepted invalid {bad}: {hyper}"
    # Never more lenient than torch.optim.Adam on values (Adam also wants both betas of one type).
    q = torch.nn.Parameter(p.detach().clone())
    adam = torch.optim.Adam([q], lr=float(hyper["lr"]), betas=tuple(float(b) for b in hyper["betas"]), eps=float(hyper["eps"]), weight_decay=float(hyper["weight_decay"]))
    p.grad, q.grad = torch.ones(2, 3), torch.ones(2, 3)
    opt.step()
    adam.step()
    # Finite wherever Adam's step is, short of float32's range (as in the NumPy test above).
    assert _finite(p[q.abs() < F32_MAX / 2])


@fixed(150)
@given(value=VALUES, name=st.sampled_from(["lr", "eps", "weight_decay", "beta1", "beta2"]))
def test_torch_bad_group_value_refuses_the_step_and_changes_nothing(value, name):
    """A scheduler or user may write anything into ``param_groups``; the step checks it first."""
    p = torch.nn.Parameter(torch.linspace(-1, 1, 6).reshape(2, 3))
    opt = torch_adapter.LTO([p], lr=1e-2)
    p.grad = torch.ones(2, 3)
    opt.step()
    group = opt.param_groups[0]
    key = "betas" if name.startswith("beta") else name
    group[key] = (value, 0.999) if name == "beta1" else (0.9, value) if name == "beta2" else value
    bad = invalid_arguments({k: group[k] for k in ("lr", "betas", "eps", "weight_decay")})
    before = frozen(p), frozen(opt.state_dict()["state"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            opt.step()
        except Exception as error:  # noqa: BLE001
            assert bad and _refused_naming(error, bad), f"{group}: {error!r}"
            assert (frozen(p), frozen(opt.state_dict()["state"])) == before
            return
    assert not bad and _finite(p)


def test_torch_duplicates_across_groups_are_refused_as_torch_optim_does():
    p, q = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        torch_adapter.LTO([{"params": [p]}, {"params": [q, p]}])
    opt = torch_adapter.LTO([p])
    p.grad = torch.ones(3)
    opt.step()
    before = frozen(opt.state_dict())
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [q, p]})
    assert frozen(opt.state_dict()) == before and len(opt.param_groups) == 1


# -- Keras ----------------------------------------------------------------------------------------


def _keras():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("Keras runs on the torch backend in these tests")
    return keras


@fixed(150)
@given(st.data())
def test_keras_steps_or_skips_and_never_corrupts(data):
    keras = _keras()
    from lto_adapters.keras import LTO as KerasLTO

    specs = data.draw(tensor_specs(["float32", "float16", "float64"]), label="variables")
    lr = data.draw(VALID_HYPER, label="hyper")["lr"]
    inject = data.draw(injections(len(specs)), label="nonfinite")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    variables = [keras.Variable(rng.standard_normal(s["shape"]).astype(s["dtype"]), dtype=s["dtype"]) for s in specs]
    opt = KerasLTO(learning_rate=lr)
    opt.build(variables)

    def weights():
        return [keras_numpy(v) for v in variables]

    def engine_state():
        return frozen([opt.engine.tensor_state(i) for i in range(len(variables))])

    for action in ACTIONS:
        if action == "boundary":
            opt.task_boundary()
            continue
        step = int(opt.engine.counters.step.max())
        present = [i for i, s in enumerate(specs) if s["has_grad"]]
        grads = {i: rng.standard_normal(specs[i]["shape"]).astype(specs[i]["dtype"]) for i in present}
        for when, i, where, value, element in inject:
            index = _index(specs[i]["shape"], element)
            if when != step or index is None:
                continue
            if where == "grad" and i in grads:
                grads[i][index] = value
            elif where == "param":
                w = keras_numpy(variables[i])
                w[index] = value
                variables[i].assign(w)
        if not present:
            continue
        bad = [i for i in present if not (_finite(grads[i]) and _finite(keras_numpy(variables[i])))]
        before = frozen(weights()), engine_state()
        args = ([keras.ops.convert_to_tensor(grads[i]) for i in present], [variables[i] for i in present])
        event("skipped" if bad else "stepped")
        if bad:
            with pytest.warns(RuntimeWarning, match="non-finite"):
                opt.apply(*args)
            assert (frozen(weights()), engine_state()) == before
            continue
        old = weights()
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*non-finite")
            opt.apply(*args)
        _assert_state_finite({i: opt.engine.tensor_state(i) for i in range(len(variables))})
        for i, (w, o) in enumerate(zip(weights(), old)):
            assert w.dtype == o.dtype
            assert _finite(w) if i in grads else frozen(w) == frozen(o)


#: The Keras front end's errors name an argument in Keras' words or torch.optim's (``eps``, ``betas[0]``).
KERAS_NAMES = {"learning_rate": r"\blr\b|learning.rate", "beta_1": r"beta", "beta_2": r"beta", "epsilon": r"\beps\b|epsilon"}


@fixed(100)
@given(hyper=st.fixed_dictionaries(dict(learning_rate=mostly(POSITIVE.map(float)), beta_1=mostly(UNIT), beta_2=mostly(UNIT), epsilon=mostly(POSITIVE))))
def test_keras_hyper_parameters_are_named(hyper):
    _keras()
    from lto_adapters.keras import LTO as KerasLTO

    torch_style = dict(lr=hyper["learning_rate"], betas=(hyper["beta_1"], hyper["beta_2"]), eps=hyper["epsilon"], weight_decay=0.0)
    bad = invalid_arguments(torch_style)
    # Keras itself takes only a float (or a schedule) as the learning rate.
    keras_refuses_lr = not isinstance(hyper["learning_rate"], float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            KerasLTO(**hyper)
        except Exception as error:  # noqa: BLE001
            assert isinstance(error, (TypeError, ValueError)), repr(error)
            named = [k for k, pattern in KERAS_NAMES.items() if re.search(pattern, str(error))]
            assert named and (bad or keras_refuses_lr), f"{hyper}: {error!r}"
            event(f"refused {type(error).__name__}")
            return
    event("accepted")
    assert not bad and not keras_refuses_lr, f"accepted {hyper}"


def test_a_huge_finite_gradient_leaves_its_window_finite():
    """A finite gradient whose square overflows float32 (1e30) makes its own ``exp_avg_sq`` infinite,
    as in Adam; consolidation and the network bound it, so its 1,023 window neighbours stay finite."""
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal(2000).astype(np.float32)}
    opt = numpy_adapter.LTO(params, lr=1e-2)
    for i in range(12):
        grad = rng.standard_normal(2000).astype(np.float32)
        if i == 4:
            grad[7] = 1e30
        if i in (2, 6):
            opt.task_boundary()
        opt.step({"w": grad})
    assert np.isfinite(params["w"]).all()
    saved = opt.state_dict()
    assert np.isinf(saved["state"]["w"]["exp_avg_sq"][7])  # as in torch.optim.Adam
    numpy_adapter.LTO({"w": params["w"].copy()}, lr=1e-2).load_state_dict(saved)  # and it loads back
