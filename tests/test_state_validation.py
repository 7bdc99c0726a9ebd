"""Bad saved state changes nothing (issue 15 item 2).

Every way state enters an optimizer (torch ``load_state_dict`` and ``opt.state[p] = ...``, NumPy
``load_state_dict``, Keras ``load_own_variables``, ``StepEngine.set_tensor_state``) checks everything
first. A truncated, mistyped, mis-shaped, non-finite or foreign state raises an error naming the
offending entry, and the parameters, the whole optimizer state (compared byte for byte) and the
hyper-parameters are exactly what they were.

Each optimizer trains a small real model (digits) across a task boundary; the state it is fed comes
from earlier in the same run, so a loader that wrote any entry before refusing a later one would
show.
"""

from __future__ import annotations

import copy
import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("KERAS_BACKEND", "torch")

from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import digits_batches, digits_mlp, frozen, keras_numpy, train  # noqa: E402
from lto_adapters.numpy import LTO as NumpyLTO  # noqa: E402
from lto_adapters.torch import LTO  # noqa: E402

ERRORS = (ValueError, TypeError)


# -- one tensor's state record: the cases every front end is fed --------------------------------

def _drop(key: str) -> Callable[[dict], None]:
    return lambda record: record.pop(key)


def _put(key: str, make: Callable[[Any], Any]) -> Callable[[dict], None]:
    """Replace ``record[key]`` by ``make(old value as a NumPy array or plain value)``."""

    def mutate(record: dict) -> None:
        old = record[key]
        record[key] = make(old.detach().numpy() if torch.is_tensor(old) else old)

    return mutate


def _poke(key: str, value: float) -> Callable[[dict], None]:
    """Set the first element of array ``record[key]`` to ``value``."""

    def make(old: np.ndarray) -> np.ndarray:
        new = np.array(old, copy=True)
        new.reshape(-1)[0] = value
        return new

    return _put(key, make)


#: name -> (mutation of one tensor's state record, regex the error must match after the entry's name)
RECORD_CASES: dict[str, tuple[Callable[[dict], None], str]] = {
    # truncated
    "missing exp_avg_sq": (_drop("exp_avg_sq"), r"lacks \['exp_avg_sq'\]"),
    "missing coefficients": (_drop("coefficients"), r"lacks \['coefficients'\]"),
    "missing step": (_drop("step"), r"lacks \['step'\]"),
    "missing boundary_pending": (_drop("boundary_pending"), r"lacks \['boundary_pending'\]"),
    "unknown key": (lambda r: r.update(momentum_buffer=np.zeros(1, np.float32)), r"unknown keys \['momentum_buffer'\]"),
    # mistyped
    "step as str": (_put("step", lambda v: str(v)), r"\['step'\] must be a non-negative int"),
    "step as float": (_put("step", lambda v: float(v)), r"\['step'\] must be a non-negative int"),
    "step as bool": (_put("step", lambda v: True), r"\['step'\] must be a non-negative int"),
    "step as array": (_put("step", lambda v: np.array([v])), r"\['step'\] must be a non-negative int"),
    "negative boundaries": (_put("boundaries", lambda v: -1), r"\['boundaries'\] must be a non-negative int"),
    "step beyond int64": (_put("step", lambda v: 2**70), r"\['step'\] must be a non-negative int"),
    "steps_since_boundary beyond step": (_put("steps_since_boundary", lambda v: 10**6), r"steps_since_boundary 1000000 exceeds step"),
    "boundary_pending as int": (_put("boundary_pending", lambda v: 1), r"\['boundary_pending'\] must be a bool"),
    "exp_avg as str": (_put("exp_avg", lambda v: "zeros"), r"\['exp_avg'\] must be a real array"),
    "exp_avg as list": (_put("exp_avg", lambda v: v.tolist()), r"\['exp_avg'\] must be a real array"),
    "exp_avg of strings": (_put("exp_avg", lambda v: v.astype(str)), r"\['exp_avg'\] must be a real array"),
    "exp_avg of bools": (_put("exp_avg", lambda v: v > 0), r"\['exp_avg'\] must be a real array"),
    "complex anchor": (_put("anchor", lambda v: v.astype(np.complex64)), r"\['anchor'\] (is complex|must be a real array)"),
    "coefficients of objects": (_put("coefficients", lambda v: v.astype(object)), r"\['coefficients'\] must be a real array"),
    # mis-shaped
    "exp_avg of another shape": (_put("exp_avg", lambda v: np.zeros((3, 3), np.float32)), r"\['exp_avg'\] has shape \(3, 3\)"),
    "anchor flattened": (_put("anchor", lambda v: v.reshape(-1, 1)), r"\['anchor'\] has shape"),
    "log_importance 0-d": (_put("log_importance", lambda v: np.zeros((), np.float32)), r"\['log_importance'\] has shape \(\)"),
    "coefficients short": (_put("coefficients", lambda v: v[:-1]), r"\['coefficients'\] has shape"),
    # non-finite
    "NaN exp_avg_sq": (_poke("exp_avg_sq", np.nan), r"\['exp_avg_sq'\] holds NaN or Inf"),
    "Inf log_importance": (_poke("log_importance", np.inf), r"\['log_importance'\] holds NaN or Inf"),
    "-Inf anchor": (_poke("anchor", -np.inf), r"\['anchor'\] holds NaN or Inf"),
    "NaN coefficients": (_poke("coefficients", np.nan), r"\['coefficients'\] holds NaN or Inf"),
}


def _as_tensors(record: dict) -> dict:
    """NumPy arrays in ``record`` as tensors, as a torch state_dict holds them (where torch can)."""
    out = {}
    for k, v in record.items():
        if isinstance(v, np.ndarray) and v.dtype.kind in "fcbiu":
            v = torch.from_numpy(np.array(v))
        out[k] = v
    return out


# -- torch ----------------------------------------------------------------------------------------


def _torch_run():
    """A digits MLP and its LTO after training across a boundary, with the state_dict of an earlier
    point of the run (another learning rate, other counters, other slots)."""
    model = digits_mlp()
    opt = LTO(model.parameters(), lr=1e-2)
    train(model, opt, 4)
    opt.task_boundary()
    train(model, opt, 3, seed=1)
    earlier = copy.deepcopy(opt.state_dict())
    earlier["param_groups"][0]["lr"] = 5e-3
    train(model, opt, 3, seed=2)
    opt.task_boundary()
    return model, opt, earlier


@pytest.fixture(scope="module")
def torch_run():
    return _torch_run()


def _torch_snapshot(model: torch.nn.Module, opt: LTO) -> Any:
    return frozen([p for p in model.parameters()]), frozen(opt.state_dict()), frozen(opt.param_groups[0]["lr"])


def _adam_state_dict() -> dict:
    model = digits_mlp()
    adam = torch.optim.Adam(model.parameters())
    train(model, adam, 2)
    return adam.state_dict()


def _lto_state_dict(model: torch.nn.Module) -> dict:
    opt = LTO(model.parameters())
    train(model, opt, 2)
    return opt.state_dict()


def _wide_mlp() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 33), torch.nn.Tanh(), torch.nn.Linear(33, 10))


def _group(key: str, value: Any) -> Callable[[dict], dict]:
    def mutate(sd: dict) -> dict:
        sd["param_groups"][0][key] = value
        return sd

    return mutate


def _without_group_key(key: str) -> Callable[[dict], dict]:
    def mutate(sd: dict) -> dict:
        del sd["param_groups"][0][key]
        return sd

    return mutate


def _state_key(old: Any, new: Any) -> Callable[[dict], dict]:
    def mutate(sd: dict) -> dict:
        sd["state"][new] = sd["state"].pop(old)
        return sd

    return mutate


#: name -> (make a bad state_dict from a deep copy of a good one, regex the error must match)
TORCH_CASES: dict[str, tuple[Callable[[dict], Any], str]] = {
    "not a dict": (lambda sd: list(sd.items()), r"state_dict must be a dict with keys 'state' and 'param_groups'"),
    "no state": (lambda sd: {"param_groups": sd["param_groups"]}, r"keys 'state' and 'param_groups'.*got \['param_groups'\]"),
    "extra key": (lambda sd: {**sd, "step": 3}, r"keys 'state' and 'param_groups'"),
    "no param groups": (lambda sd: {**sd, "param_groups": []}, r"state_dict has 0 param groups, this optimizer has 1"),
    "group without lr": (_without_group_key("lr"), r"param_groups\[0\]: lr must be a real number"),
    "group without betas": (_without_group_key("betas"), r"param_groups\[0\]: Invalid betas: None"),
    "group with too few params": (lambda sd: _group("params", [0, 1, 2])(sd), r"param_groups\[0\] does not match"),
    "group params not a list": (lambda sd: _group("params", 4)(sd), r"param_groups\[0\] does not match .* must list 4 indices"),
    "lr as str": (_group("lr", "5e-3"), r"param_groups\[0\]: lr must be a real number"),
    "lr as bool": (_group("lr", True), r"param_groups\[0\]: lr must be a real number"),
    "lr complex": (_group("lr", 5e-3 + 0j), r"param_groups\[0\]: lr must be a real"),
    "lr negative": (_group("lr", -5e-3), r"param_groups\[0\]: Invalid learning rate: -0.005"),
    "lr NaN": (_group("lr", float("nan")), r"param_groups\[0\]: Invalid learning rate: nan"),
    "lr beyond float32": (_group("lr", 1e300), r"param_groups\[0\]: Invalid learning rate: 1e\+300"),
    "one beta": (_group("betas", (0.9,)), r"param_groups\[0\]: Invalid betas"),
    "beta2 at 1": (_group("betas", (0.9, 1.0)), r"param_groups\[0\]: Invalid beta parameter at index 1: 1.0"),
    "beta1 rounding to 1 in float32": (_group("betas", (1 - 1e-12, 0.999)), r"param_groups\[0\]: Invalid beta parameter at index 0"),
    "eps NaN": (_group("eps", float("nan")), r"param_groups\[0\]: Invalid epsilon value: nan"),
    "weight_decay negative": (_group("weight_decay", -1), r"param_groups\[0\]: Invalid weight_decay value: -1"),
    "state key as str": (_state_key(3, "3"), r"state_dict\['state'\] must map parameter indices 0\.\.3"),
    "state key out of range": (_state_key(3, 4), r"state_dict\['state'\] must map parameter indices 0\.\.3"),
    "state entry not a dict": (lambda sd: {**sd, "state": {**sd["state"], 3: torch.zeros(10)}}, r"state_dict\['state'\]\[3\] must be a dict"),
    "state not a dict": (lambda sd: {**sd, "state": list(sd["state"].values())}, r"state_dict\['state'\] must map"),
    # foreign
    "torch.optim.Adam's": (lambda sd: _adam_state_dict(), r"state_dict\['state'\]\[0\] lacks \['log_importance', 'anchor', 'coefficients'"),
    "torch.optim.SGD's": (lambda sd: torch.optim.SGD(digits_mlp().parameters(), lr=0.1).state_dict(), r"param_groups\[0\]: eps must be a real number, got NoneType None"),
    "another LTO's over other shapes": (lambda sd: _lto_state_dict(_wide_mlp()), r"state_dict\['state'\]\[0\]\['exp_avg'\] has shape \(33, 64\), expected \(32, 64\)"),
    "another LTO's over fewer tensors": (lambda sd: _lto_state_dict(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))), r"param_groups\[0\] does not match"),
    "the NumPy LTO's": (lambda sd: NumpyLTO({"w": np.zeros(3, np.float32)}).state_dict(), r"keys 'state' and 'param_groups'.*\['hyper', 'state'\]"),
}


@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_torch_load_state_dict_refuses_and_changes_nothing(torch_run, case):
    model, opt, earlier = torch_run
    make, match = TORCH_CASES[case]
    bad = make(copy.deepcopy(earlier))
    before = _torch_snapshot(model, opt)
    with pytest.raises(ERRORS, match=match):
        opt.load_state_dict(bad)
    assert _torch_snapshot(model, opt) == before


@pytest.mark.parametrize("case", list(RECORD_CASES))
def test_torch_load_state_dict_refuses_a_bad_entry_and_changes_nothing(torch_run, case):
    """The bad entry is the last parameter's: the three before it are valid and must not be loaded."""
    model, opt, earlier = torch_run
    mutate, match = RECORD_CASES[case]
    bad = copy.deepcopy(earlier)
    mutate(bad["state"][3])
    bad["state"][3] = _as_tensors(bad["state"][3])
    before = _torch_snapshot(model, opt)
    with pytest.raises(ERRORS, match=r"state_dict\['state'\]\[3\].*" + match):
        opt.load_state_dict(bad)
    assert _torch_snapshot(model, opt) == before


@pytest.mark.parametrize("case", ["missing step", "exp_avg of another shape", "NaN coefficients", "step beyond int64"])
def test_assigning_opt_state_refuses_and_changes_nothing(torch_run, case):
    model, opt, _ = torch_run
    param = model[3].bias
    record = {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[param].items()}
    mutate, match = RECORD_CASES[case]
    mutate(record)
    before = _torch_snapshot(model, opt)
    with pytest.raises(ERRORS, match=match):
        opt.state[param] = _as_tensors(record)
    assert _torch_snapshot(model, opt) == before


def test_torch_earlier_state_loads_when_intact():
    """The control: the untouched earlier state_dict loads, restores the earlier lr and state, and resumes."""
    model, opt, earlier = _torch_run()
    opt.load_state_dict(copy.deepcopy(earlier))
    assert opt.param_groups[0]["lr"] == 5e-3
    assert frozen(opt.state_dict()) == frozen(earlier)
    train(model, opt, 1)
    assert opt.state_dict()["state"][3]["step"] == earlier["state"][3]["step"] + 1


def test_torch_backend_refuses_and_changes_nothing():
    """``backend="torch"`` keeps its state in torch tensors; the same checks come first."""
    _, onnx_opt, earlier = _torch_run()
    model = digits_mlp(seed=3)
    opt = LTO(model.parameters(), lr=1e-2, backend="torch")
    opt.load_state_dict(copy.deepcopy(onnx_opt.state_dict()))
    for case in ("missing step", "NaN exp_avg_sq", "exp_avg of another shape"):
        bad = copy.deepcopy(earlier)
        RECORD_CASES[case][0](bad["state"][3])
        bad["state"][3] = _as_tensors(bad["state"][3])
        before = _torch_snapshot(model, opt)
        with pytest.raises(ERRORS, match=r"state_dict\['state'\]\[3\]"):
            opt.load_state_dict(bad)
        assert _torch_snapshot(model, opt) == before
    assert frozen(opt.state_dict()["state"]) == frozen(onnx_opt.state_dict()["state"])


# -- NumPy ----------------------------------------------------------------------------------------


def _numpy_run():
    """The NumPy LTO over a digits MLP's parameters (its arrays share memory with the torch model,
    which only computes gradients), trained across a boundary, and an earlier state_dict."""
    model = digits_mlp()
    params = {name: p.detach().numpy() for name, p in model.named_parameters()}
    opt = NumpyLTO(params, lr=1e-2)

    def run(steps: int, seed: int) -> None:
        for x, y in digits_batches(steps, seed=seed):
            model.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step({name: p.grad.numpy() for name, p in model.named_parameters()})

    run(4, 0)
    opt.task_boundary()
    run(3, 1)
    earlier = copy.deepcopy(opt.state_dict())
    earlier["hyper"]["lr"] = 5e-3
    run(3, 2)
    opt.task_boundary()
    return params, opt, earlier


@pytest.fixture(scope="module")
def numpy_run():
    return _numpy_run()


def _numpy_snapshot(params: dict, opt: NumpyLTO) -> Any:
    return frozen(params), frozen(opt.state_dict()), frozen(opt.hyper)


def _hyper(key: str, value: Any) -> Callable[[dict], dict]:
    def mutate(sd: dict) -> dict:
        sd["hyper"][key] = value
        return sd

    return mutate


NUMPY_CASES: dict[str, tuple[Callable[[dict], Any], str]] = {
    "not a dict": (lambda sd: list(sd.items()), r"state_dict must be a dict with keys 'hyper' and 'state'"),
    "no hyper": (lambda sd: {"state": sd["state"]}, r"keys 'hyper' and 'state'.*got \['state'\]"),
    "hyper without lr": (lambda sd: {**sd, "hyper": {k: v for k, v in sd["hyper"].items() if k != "lr"}}, r"state_dict\['hyper'\] must hold"),
    "hyper with momentum": (_hyper("momentum", 0.9), r"state_dict\['hyper'\] must hold"),
    "hyper not a dict": (lambda sd: {**sd, "hyper": [1e-3]}, r"state_dict\['hyper'\] must hold"),
    "lr as str": (_hyper("lr", "5e-3"), r"lr must be a real number"),
    "lr negative": (_hyper("lr", -1.0), r"Invalid learning rate: -1.0"),
    "lr Inf": (_hyper("lr", float("inf")), r"Invalid learning rate: inf"),
    "betas at 1": (_hyper("betas", (1.0, 0.999)), r"Invalid beta parameter at index 0: 1.0"),
    "betas as str": (_hyper("betas", "ab"), r"Invalid betas"),
    "eps negative": (_hyper("eps", -1e-8), r"Invalid epsilon value"),
    "weight_decay as bool": (_hyper("weight_decay", False), r"weight_decay must be a real number"),
    "a parameter missing": (lambda sd: {**sd, "state": {k: v for k, v in sd["state"].items() if k != "3.bias"}}, r"state_dict holds parameters .* this optimizer has"),
    "a parameter renamed": (lambda sd: {**sd, "state": {("bias" if k == "3.bias" else k): v for k, v in sd["state"].items()}}, r"state_dict holds parameters"),
    "state not a dict": (lambda sd: {**sd, "state": list(sd["state"].values())}, r"state_dict holds parameters list"),
    "entry not a dict": (lambda sd: {**sd, "state": {**sd["state"], "3.bias": np.zeros(10, np.float32)}}, r"state_dict\['state'\]\['3.bias'\] must be a dict"),
    # foreign
    "the torch LTO's": (lambda sd: LTO(digits_mlp().parameters()).state_dict(), r"keys 'hyper' and 'state'.*\['param_groups', 'state'\]"),
    "another NumPy LTO's over other shapes": (
        lambda sd: NumpyLTO({n: np.zeros(s, np.float32) for n, s in [("1.weight", (33, 64)), ("1.bias", (33,)), ("3.weight", (10, 33)), ("3.bias", (10,))]}).state_dict(),
        r"state_dict\['state'\]\['1.weight'\]\['exp_avg'\] has shape \(33, 64\), expected \(32, 64\)",
    ),
}


@pytest.mark.parametrize("case", list(NUMPY_CASES))
def test_numpy_load_state_dict_refuses_and_changes_nothing(numpy_run, case):
    params, opt, earlier = numpy_run
    make, match = NUMPY_CASES[case]
    bad = make(copy.deepcopy(earlier))
    before = _numpy_snapshot(params, opt)
    with pytest.raises(ERRORS, match=match):
        opt.load_state_dict(bad)
    assert _numpy_snapshot(params, opt) == before


@pytest.mark.parametrize("case", list(RECORD_CASES))
def test_numpy_load_state_dict_refuses_a_bad_entry_and_changes_nothing(numpy_run, case):
    params, opt, earlier = numpy_run
    mutate, match = RECORD_CASES[case]
    bad = copy.deepcopy(earlier)
    mutate(bad["state"]["3.bias"])
    before = _numpy_snapshot(params, opt)
    with pytest.raises(ERRORS, match=r"state_dict\['state'\]\['3.bias'\].*" + match):
        opt.load_state_dict(bad)
    assert _numpy_snapshot(params, opt) == before


@pytest.mark.parametrize("case", list(RECORD_CASES))
def test_engine_set_tensor_state_refuses_and_changes_nothing(numpy_run, case):
    """``StepEngine.set_tensor_state`` (the issue's KeyError after a partial write) checks first too."""
    params, opt, earlier = numpy_run
    mutate, match = RECORD_CASES[case]
    record = copy.deepcopy(earlier["state"]["1.weight"])
    mutate(record)
    before = _numpy_snapshot(params, opt)
    with pytest.raises(ValueError, match=r"state of tensor 0.*" + match):
        opt.engine.set_tensor_state(0, record)
    assert _numpy_snapshot(params, opt) == before


def test_numpy_earlier_state_loads_when_intact():
    params, opt, earlier = _numpy_run()
    opt.load_state_dict(copy.deepcopy(earlier))
    assert opt.lr == 5e-3 and frozen(opt.state_dict()) == frozen(earlier)
    opt.engine.set_tensor_state(3, copy.deepcopy(earlier["state"]["3.bias"]))
    assert frozen(opt.state_dict()) == frozen(earlier)


# -- Keras ----------------------------------------------------------------------------------------


def _keras():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("Keras runs on the torch backend in these tests")
    return keras


def _keras_model(keras, width: int = 16):
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(width, activation="tanh"), keras.layers.Dense(10)])


def _keras_store(opt) -> dict:
    store: dict = {}
    opt.save_own_variables(store)
    return {k: keras_numpy(v) for k, v in store.items()}


@pytest.fixture(scope="module")
def keras_run():
    """A Keras model and its LTO trained across a boundary, with the store saved earlier in the run."""
    keras = _keras()
    from lto_adapters.keras import LTO as KerasLTO, TaskBoundary
    from lto_core.data import load_digits

    data = load_digits()
    x, y = data.x_train[:128], data.y_train[:128]
    model = _keras_model(keras)
    opt = KerasLTO(learning_rate=1e-2)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:64], y[:64], batch_size=16, epochs=1, verbose=0, callbacks=[TaskBoundary()])
    model.fit(x[64:], y[64:], batch_size=32, epochs=1, verbose=0)
    earlier = _keras_store(opt)
    earlier["1"] = np.array(5e-3, np.float32)
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0, callbacks=[TaskBoundary()])
    return keras, model, opt, earlier


def _keras_snapshot(keras, model, opt) -> Any:
    weights = [keras_numpy(v) for v in model.trainable_variables]
    return frozen(weights), frozen(_keras_store(opt)), frozen([opt.engine.tensor_state(i) for i in range(len(weights))])


def _store_put(key: str, make: Callable[[np.ndarray], Any]) -> Callable[[dict], dict]:
    def mutate(store: dict) -> dict:
        store[key] = make(store[key])
        return store

    return mutate


def _store_drop(key: str) -> Callable[[dict], dict]:
    def mutate(store: dict) -> dict:
        del store[key]
        return store

    return mutate


def _poked(value: float, index: tuple = (0,)) -> Callable[[np.ndarray], np.ndarray]:
    def make(old: np.ndarray) -> np.ndarray:
        new = np.array(old, copy=True)
        new[index] = value
        return new

    return make


def _keras_adam_store(keras) -> dict:
    model = _keras_model(keras)
    adam = keras.optimizers.Adam()
    adam.build(model.trainable_variables)
    return _keras_store(adam)


def _keras_wide_store(keras) -> dict:
    from lto_adapters.keras import LTO as KerasLTO

    model = _keras_model(keras, width=17)
    opt = KerasLTO()
    opt.build(model.trainable_variables)
    return _keras_store(opt)


def _keras_schedule_store(keras) -> dict:
    from lto_adapters.keras import LTO as KerasLTO

    model = _keras_model(keras)
    opt = KerasLTO(learning_rate=keras.optimizers.schedules.ExponentialDecay(1e-2, 10, 0.9))
    opt.build(model.trainable_variables)
    return _keras_store(opt)


#: name -> (make a bad store from a copy of a good one, given keras; regex the error must match)
KERAS_CASES: dict[str, tuple[Callable[[Any, dict], dict], str]] = {
    # truncated
    "no counters": (lambda k, s: _store_drop("lto_counters")(s), r"no 'lto_counters'; it was not saved by lto's LTO"),
    "no state of variable 3": (lambda k, s: _store_drop("lto_state_3")(s), r"'lto_state_3' for .* is missing"),
    "no coefficients of variable 1": (lambda k, s: _store_drop("lto_coefficients_1")(s), r"lacks 'lto_coefficients_1'"),
    "no learning rate variable": (lambda k, s: {("2" if key == "1" else key): v for key, v in s.items()}, r"'1'.*missing"),
    # mistyped
    "counters as floats": (lambda k, s: _store_put("lto_counters", lambda c: c.astype(np.float64))(s), r"\['step'\] must be a non-negative int"),
    "negative counter": (lambda k, s: _store_put("lto_counters", _poked(-1, (2, 3)))(s), r"\['boundaries'\] must be a non-negative int"),
    "counters beyond int64": (lambda k, s: _store_put("lto_counters", lambda c: c.astype(np.uint64) + np.uint64(2**63))(s), r"\['step'\] must be a non-negative int"),
    "state as str": (lambda k, s: _store_put("lto_state_3", lambda v: v.astype(str))(s), r"\['exp_avg'\] must be a real array"),
    "complex state": (lambda k, s: _store_put("lto_state_3", lambda v: v.astype(np.complex64))(s), r"\['exp_avg'\] must be a real array"),
    "iteration as str": (lambda k, s: _store_put("0", lambda v: np.array("12"))(s), r"'0' for .*iteration"),
    "learning rate negative": (lambda k, s: _store_put("1", lambda v: np.array(-1.0, np.float32))(s), r"'1' for .*learning_rate.*Invalid learning rate: -1.0"),
    "learning rate NaN": (lambda k, s: _store_put("1", lambda v: np.array(np.nan, np.float32))(s), r"'1' for .*learning_rate"),
    # mis-shaped
    "counters of another shape": (lambda k, s: _store_put("lto_counters", lambda c: c[:, :3])(s), r"'lto_counters' has shape \(4, 3\)"),
    "state of another shape": (lambda k, s: _store_put("lto_state_3", lambda v: v[:3])(s), r"'lto_state_3' .* is shape \(3, 10\), expected shape \(4, 10\)"),
    "coefficients short": (lambda k, s: _store_put("lto_coefficients_0", lambda v: v[:-1])(s), r"\['coefficients'\] has shape"),
    "iteration of another shape": (lambda k, s: _store_put("0", lambda v: np.zeros(2, v.dtype))(s), r"'0' for .*iteration"),
    # non-finite
    "NaN exp_avg_sq": (lambda k, s: _store_put("lto_state_3", _poked(np.nan, (1, 0)))(s), r"\['exp_avg_sq'\] holds NaN or Inf"),
    "Inf anchor": (lambda k, s: _store_put("lto_state_0", _poked(np.inf, (3, 0, 0)))(s), r"\['anchor'\] holds NaN or Inf"),
    "NaN coefficients": (lambda k, s: _store_put("lto_coefficients_2", _poked(np.nan, (0, 0)))(s), r"\['coefficients'\] holds NaN or Inf"),
    # foreign
    "keras Adam's": (lambda k, s: _keras_adam_store(k), r"no 'lto_counters'; it was not saved by lto's LTO"),
    "another LTO's over other shapes": (lambda k, s: _keras_wide_store(k), r"'lto_state_0' .* is shape \(4, 64, 17\), expected shape \(4, 64, 16\)"),
    "an LTO's with a schedule": (lambda k, s: _keras_schedule_store(k), r"has 1 Keras variables, 'lto' has 2"),
}


@pytest.mark.parametrize("case", list(KERAS_CASES))
def test_keras_load_own_variables_refuses_and_changes_nothing(keras_run, case):
    keras, model, opt, earlier = keras_run
    make, match = KERAS_CASES[case]
    bad = make(keras, copy.deepcopy(earlier))
    before = _keras_snapshot(keras, model, opt)
    with pytest.raises(ERRORS, match=match):
        opt.load_own_variables(bad)
    assert _keras_snapshot(keras, model, opt) == before


def test_keras_earlier_store_loads_when_intact(keras_run):
    """The control (last, as it changes the module's optimizer): the earlier store loads exactly."""
    keras, model, opt, earlier = keras_run
    opt.load_own_variables(copy.deepcopy(earlier))
    assert frozen(_keras_store(opt)) == frozen(earlier)
    assert float(opt.learning_rate) == pytest.approx(5e-3)
