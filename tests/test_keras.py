"""The Keras 3 front end: fit, schedules, config, .keras save/load with exact state, task boundaries."""

from __future__ import annotations

import os

# conftest.py sets these too (and a throwaway KERAS_HOME); repeated so Keras picks the torch backend
# even if this file is imported first.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("KERAS_BACKEND", "torch")

import importlib.util  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lto_adapters.keras import LTO, TaskBoundary  # noqa: E402
from lto_adapters.numpy import LTO as NumpyLTO  # noqa: E402
from lto_core.data import load_digits  # noqa: E402

pytestmark = pytest.mark.skipif(keras.backend.backend() != "torch", reason="these tests run Keras on the torch backend")

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return data.x_train[:320], data.y_train[:320]


def _model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(32, activation="tanh"), keras.layers.Dense(10)]
    )


def _compiled(optimizer, seed: int = 0) -> keras.Model:
    model = _model(seed)
    model.compile(optimizer=optimizer, loss=LOSS)
    return model


def _weights(model: keras.Model) -> list[np.ndarray]:
    return [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]


def test_importing_lto_adapters_does_not_import_keras():
    code = "import sys, lto_adapters, lto_adapters.numpy, lto_adapters.torch, lto_runtime; print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_fit_lowers_the_loss_and_counts_steps_per_variable(digits):
    x, y = digits
    opt = LTO(learning_rate=3e-3)
    model = _compiled(opt)
    history = model.fit(x, y, batch_size=32, epochs=4, verbose=0)
    assert history.history["loss"][-1] < 0.6 * history.history["loss"][0]
    assert int(opt.iterations) == 40
    assert opt.engine.counters.step.tolist() == [40] * len(model.trainable_variables)
    assert opt.runtime.providers[0] == "CPUExecutionProvider"


def test_same_numbers_as_the_numpy_adapter(random_head_files, digits):
    """Fed the same gradients, the Keras and NumPy front ends give identical parameters and state."""
    _, onnx_path = random_head_files
    model = _model()
    opt = LTO(learning_rate=3e-3, onnx_path=onnx_path)
    opt.build(model.trainable_variables)
    arrays = {str(i): w.copy() for i, w in enumerate(_weights(model))}
    reference = NumpyLTO(arrays, lr=3e-3, onnx_path=onnx_path)
    rng = np.random.default_rng(0)
    for step in range(6):
        if step == 3:
            opt.task_boundary(), reference.task_boundary()
        grads = [rng.normal(size=w.shape).astype(np.float32) for w in arrays.values()]
        opt.apply([keras.ops.convert_to_tensor(g) for g in grads], model.trainable_variables)
        reference.step(dict(zip(arrays, grads)))
    for i, w in enumerate(_weights(model)):
        np.testing.assert_array_equal(w, arrays[str(i)])
        for key, value in opt.engine.tensor_state(i).items():
            np.testing.assert_array_equal(value, reference.engine.tensor_state(i)[key])


def test_save_and_load_resume_exactly(digits, tmp_path):
    x, y = digits
    opt = LTO(learning_rate=3e-3)
    model = _compiled(opt)
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[TaskBoundary()])
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, custom_objects={"LTO": LTO})
    again = loaded.optimizer
    assert isinstance(again, LTO) and again is not opt
    assert int(again.iterations) == int(opt.iterations) == 12
    for i in range(len(model.trainable_variables)):
        saved, restored = opt.engine.tensor_state(i), again.engine.tensor_state(i)
        assert restored["steps_since_boundary"] == 2 and restored["step"] == 12
        for key in saved:
            np.testing.assert_array_equal(saved[key], restored[key])
    for m in (model, loaded):
        m.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(_weights(model), _weights(loaded)):
        np.testing.assert_array_equal(a, b)


def test_weights_file_carries_the_optimizer_state(digits, tmp_path):
    x, y = digits
    model = _compiled(LTO(learning_rate=3e-3))
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    model.save_weights(tmp_path / "w.weights.h5")
    other = _compiled(LTO(learning_rate=3e-3), seed=1)
    other.optimizer.build(other.trainable_variables)
    other.load_weights(tmp_path / "w.weights.h5")
    np.testing.assert_array_equal(other.optimizer.engine.tensor_state(0)["exp_avg"], model.optimizer.engine.tensor_state(0)["exp_avg"])


def test_a_store_of_the_wrong_shape_is_refused_and_state_kept(digits):
    x, y = digits
    model = _compiled(LTO(learning_rate=3e-3))
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    wide = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(33, activation="tanh"), keras.layers.Dense(10)])
    wide.compile(optimizer=LTO(learning_rate=3e-3), loss=LOSS)
    wide.optimizer.build(wide.trainable_variables)
    store = {k: np.asarray(v) for k, v in _optimizer_store(model).items()}
    before = wide.optimizer.engine.tensor_state(0)
    with pytest.raises(ValueError, match=r"lto_state_0.*shape \(4, 64, 32\), expected shape \(4, 64, 33\)"):
        wide.optimizer.load_own_variables(store)
    assert wide.optimizer.engine.tensor_state(0)["step"] == before["step"] == 0
    with pytest.raises(ValueError, match="not saved by lto's LTO"):
        wide.optimizer.load_own_variables({"0": np.array(0), "1": np.array(1e-3, np.float32)})


def _optimizer_store(model: keras.Model) -> dict:
    store: dict = {}
    model.optimizer.save_own_variables(store)
    return store


def test_learning_rate_schedule_drives_the_step_and_config_round_trips(digits):
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2], [1e-2, 0.0])
    opt = LTO(learning_rate=schedule, beta_2=0.99, providers="auto", max_batch_windows=8)
    model = _model()
    opt.build(model.trainable_variables)
    grads = [keras.ops.ones(v.shape) for v in model.trainable_variables]
    moved = []
    for _ in range(5):
        before = _weights(model)
        opt.apply(grads, model.trainable_variables)
        moved.append(any((a != b).any() for a, b in zip(before, _weights(model))))
    assert moved == [True, True, True, False, False]
    config = opt.get_config()
    clone = LTO.from_config({**config})  # Keras' from_config replaces the schedule's config in place
    assert clone.get_config() == config
    assert (clone.beta_2, clone.max_batch_windows, config["providers"], config["threads"]) == (0.99, 8, "auto", 1)
    assert keras.optimizers.deserialize(keras.optimizers.serialize(opt)).get_config() == config


def test_task_boundary_callback_marks_each_fit(digits):
    x, y = digits
    opt = LTO(learning_rate=3e-3)
    model = _compiled(opt)
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0, callbacks=[TaskBoundary()])
    assert opt.engine.counters.boundary_pending.all()
    model.fit(x[:96], y[:96], batch_size=32, epochs=1, verbose=0, callbacks=[TaskBoundary()])
    assert opt.engine.counters.steps_since_boundary.tolist() == [3] * 4 and opt.engine.counters.step.tolist() == [5] * 4
    adam_model = _compiled(keras.optimizers.Adam())
    before = _weights(adam_model)
    with pytest.raises(TypeError, match="TaskBoundary needs a model compiled with lto_adapters.keras.LTO, got Adam"):
        adam_model.fit(x[:32], y[:32], verbose=0, callbacks=[TaskBoundary()])
    assert all((a == b).all() for a, b in zip(before, _weights(adam_model))), "refused before training"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"learning_rate": -1.0}, "Invalid learning rate: -1.0"),
        ({"beta_1": 1.5}, "Invalid beta parameter at index 0: 1.5"),
        ({"epsilon": -1e-8}, "Invalid epsilon value"),
        ({"max_batch_windows": 0}, "Invalid max_batch_windows: 0"),
        ({"providers": "cuda"}, "providers must be None, 'auto' or a list"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LTO(**kwargs)


def test_nonfinite_gradient_skips_the_step_and_keeps_state(digits):
    x, y = digits
    opt = LTO(learning_rate=3e-3)
    model = _compiled(opt)
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)
    weights, state = _weights(model), opt.engine.tensor_state(0)
    grads = [keras.ops.ones(v.shape) for v in model.trainable_variables]
    grads[1] = keras.ops.full(model.trainable_variables[1].shape, float("nan"))
    with pytest.warns(RuntimeWarning, match=r"non-finite gradient or parameter in \['sequential.*dense.*bias'\]; step skipped"):
        opt.apply(grads, model.trainable_variables)
    for a, b in zip(weights, _weights(model)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(state["exp_avg"], opt.engine.tensor_state(0)["exp_avg"])
    assert opt.engine.counters.step.tolist() == [2] * 4


def test_task_boundary_before_build_is_a_clear_error():
    with pytest.raises(RuntimeError, match="LTO is not built yet"):
        LTO().task_boundary()


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_backend_fits_under_jit_and_resumes(tmp_path):
    """Keras picks its backend once per process, so the jax run is a subprocess."""
    code = textwrap.dedent(
        f"""
        import numpy as np, keras
        from lto_adapters.keras import LTO, TaskBoundary
        from lto_core.data import load_digits
        d = load_digits()
        x, y = d.x_train[:320], d.y_train[:320]
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8, 8)), keras.layers.Flatten(), keras.layers.Dense(32, activation="tanh"), keras.layers.Dense(10)])
        model.compile(optimizer=LTO(learning_rate=3e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True)
        h = model.fit(x, y, batch_size=32, epochs=4, verbose=0, callbacks=[TaskBoundary()])
        assert h.history["loss"][-1] < 0.6 * h.history["loss"][0], h.history
        assert model.optimizer.engine.counters.step.tolist() == [40] * 4
        model.save({str(tmp_path / 'jax.keras')!r})
        loaded = keras.models.load_model({str(tmp_path / 'jax.keras')!r})
        for i in range(4):
            a, b = model.optimizer.engine.tensor_state(i), loaded.optimizer.engine.tensor_state(i)
            assert all(np.array_equal(a[k], b[k]) for k in a)
        print("ok")
        """
    )
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
