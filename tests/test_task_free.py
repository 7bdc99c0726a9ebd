"""Task-free use, ``boundaries="auto"``: the optimizer marks task boundaries where the gradients shift.

The detector (:meth:`lto_runtime.StepCounters.detect_shift`) is checked on its own, on a real
stream (every task change found, close to where it happened), on plain training (nothing found, so
the step stays Adam's), across front ends (the same boundaries and parameters), through a saved
and restored state, and against bad input.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import digits_mlp, flat_params, train
from lto_adapters.numpy import LTO as NumpyLTO
from lto_adapters.torch import LTO
from lto_core.continual import run_stream
from lto_core.data import load_dataset
from lto_core.models import make_model
from lto_core.streams import make_stream
from lto_core.step import StepGraph
from lto_core.unroll import UnrolledLTO
from lto_runtime.state import SHIFT_PERSIST, SHIFT_WARMUP, StepCounters, hyper_row

SHAPES = {"w": (48, 40), "b": (40,), "v": (40, 10)}
SHIFT_AT = 90


def shifting_gradients(steps: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Gradients of a two-task stream: within a task their scale falls as ``1/sqrt(1 + j/10)``
    (the loss falls); at step :data:`SHIFT_AT` a new task starts, twice as large as the first began."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(steps):
        j, size = (t, 1.0) if t < SHIFT_AT else (t - SHIFT_AT, 2.0)
        scale = size / np.sqrt(1.0 + j / 10.0)
        out.append({n: (scale * rng.standard_normal(s)).astype(np.float32) for n, s in SHAPES.items()})
    return out


def numpy_params(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: (0.1 * rng.standard_normal(s)).astype(np.float32) for n, s in SHAPES.items()}


def advance(counters: StepCounters, energies) -> bool:
    """One step of all tensors with ``energies``; whether it consolidated a boundary (first step aside)."""
    active = np.ones(len(counters.step), dtype=bool)
    first = counters.step == 0
    _, boundary, _ = counters.advance(active, np.zeros((len(active), 5)), np.asarray(energies, dtype=np.float64))
    return bool((boundary & ~first).any())


def test_detector_fires_on_a_lasting_jump_and_not_on_falling_or_noisy_gradients():
    counters = StepCounters(3, refresh_every=10, boundaries="auto")
    rng = np.random.default_rng(0)
    fired = [advance(counters, (1.0 / (1 + t / 10)) * rng.uniform(0.5, 1.5, 3)) for t in range(300)]
    assert not any(fired)
    fired = [advance(counters, [20.0, 20.0, 20.0]) for _ in range(SHIFT_PERSIST + 5)]
    assert fired.index(True) == SHIFT_PERSIST - 1 and sum(fired) == 1
    assert (counters.boundaries == 1).all() and (counters.steps_since_boundary <= 6).all()


def test_detector_ignores_a_short_spike_and_follows_the_tensor_that_shifts_most():
    counters = StepCounters(3, refresh_every=10, boundaries="auto")
    for _ in range(100):
        advance(counters, [1.0, 1.0, 1.0])
    # Two noisy batches in every tensor (the short average forgets them within SHIFT_PERSIST steps): no boundary.
    assert not any(advance(counters, [20.0, 20.0, 20.0]) for _ in range(2))
    assert not any(advance(counters, [1.0, 1.0, 1.0]) for _ in range(50))
    # A lasting shift in one tensor of three (the first layer under new inputs): a boundary.
    fired = [advance(counters, [30.0, 1.0, 1.0]) for _ in range(SHIFT_PERSIST + 5)]
    assert sum(fired) == 1 and counters.boundaries.tolist() == [1, 1, 1]


def test_detector_waits_for_warmup_and_restarts_at_manual_boundaries():
    counters = StepCounters(2, refresh_every=10, boundaries="auto")
    assert not any(advance(counters, [1.0, 1.0]) for _ in range(SHIFT_WARMUP - 10))
    assert not any(advance(counters, [50.0, 50.0]) for _ in range(10))  # the jump came before warmup ended...
    assert not any(advance(counters, [1.0, 1.0]) for _ in range(20))  # ...and was over after it
    counters.task_boundary()
    assert advance(counters, [1.0, 1.0])  # the marked boundary consolidates...
    assert counters.energy_short.tolist() == [0.0, 0.0]  # ...and restarts the statistics
    assert counters.boundaries.tolist() == [1, 1]


def test_detector_judges_each_group_alone():
    counters = StepCounters(4, refresh_every=10, boundaries="auto", groups=[0, 1, 0, 1])
    for _ in range(100):
        advance(counters, [1.0, 1.0, 1.0, 1.0])
    for _ in range(SHIFT_PERSIST + 2):
        advance(counters, [1.0, 30.0, 1.0, 30.0])
    assert counters.boundaries.tolist() == [0, 1, 0, 1]


def test_manual_mode_ignores_shifts():
    counters = StepCounters(2, refresh_every=10)
    for t in range(200):
        advance(counters, [1.0, 1.0] if t < 100 else [100.0, 100.0])
    assert counters.boundaries.tolist() == [0, 0] and counters.energy_long.tolist() == [0.0, 0.0]


def test_auto_finds_every_task_change_of_a_split_stream(one_torch_thread):
    """Split digits, told nothing: each of the four task changes is found within a few steps, and
    ACC stays within 0.02 of the run that is told where tasks end."""
    stream = make_stream(load_dataset("digits", 0), "split", "task", 5, 0)
    results, found = {}, []
    for mode in ("manual", "auto"):
        model = make_model("mlp", stream.input_shape, stream.num_outputs, seed=0)
        opt = LTO(model.parameters(), lr=1e-3, boundaries=mode)

        def on_step(taken: int, _model, opt=opt, mode=mode) -> None:
            if mode == "auto" and opt.engine.counters.steps_since_boundary[0] == 1 and taken > 1:
                found.append(taken)

        results[mode] = run_stream(model, opt, stream, 200, seed=0, on_step=on_step, boundaries=mode == "manual")
    assert len(found) == 4
    assert all(0 < f - 200 * (k + 1) <= SHIFT_PERSIST + 10 for k, f in enumerate(found)), found
    assert results["auto"].acc > results["manual"].acc - 0.02


def test_plain_training_in_auto_mode_is_adam(random_head_files):
    """One task: no shift is detected, so every step is Adam's, whatever the network."""
    _, onnx_path = random_head_files
    ref_model, lto_model = digits_mlp(), digits_mlp()
    train(ref_model, torch.optim.Adam(ref_model.parameters(), lr=1e-3), 300)
    opt = LTO(lto_model.parameters(), lr=1e-3, onnx_path=onnx_path, boundaries="auto")
    train(lto_model, opt, 300)
    assert opt.engine.counters.boundaries.tolist() == [0] * len(ref_model.state_dict())
    assert torch.allclose(flat_params(ref_model), flat_params(lto_model), rtol=0.0, atol=1e-6)


def test_the_statistic_is_each_gradient_against_adams_second_moment(random_head_files):
    """The engine's normalized energy of a step, from its window-layout state, is
    ``mean((g / (sqrt(v_hat) + eps))^2)`` over each tensor's elements, and meta-training's unroll
    computes the same from its own packed state (no boundary is counted yet, so both step as Adam)."""
    _, onnx_path = random_head_files
    grads = shifting_gradients(12)
    _, opt = _run_numpy(onnx_path, grads[:11])
    engine, last = opt.engine, grads[11]
    hyper = np.tile(hyper_row(1e-2, (0.9, 0.999), 1e-8, 0.0), (len(SHAPES), 1))
    got = engine._normalized_energies([last[n].reshape(-1) for n in SHAPES], hyper)
    want = []
    for i, name in enumerate(SHAPES):
        state = engine.tensor_state(i)
        v_hat = state["exp_avg_sq"].astype(np.float64) / (1 - 0.999 ** state["step"])
        want.append(np.mean((last[name] / (np.sqrt(v_hat) + 1e-8)) ** 2))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert got.min() > 0
    unrolled = UnrolledLTO(StepGraph(), list(SHAPES.values()), lr=1e-2, boundaries="auto")
    params = [torch.from_numpy(p) for p in numpy_params().values()]
    for g in grads[:11]:
        params = unrolled.step(params, [torch.from_numpy(g[n]) for n in SHAPES])
    packed = unrolled.packer.pack([torch.from_numpy(last[n]) for n in SHAPES])
    np.testing.assert_allclose(unrolled._normalized_energies(packed), want, rtol=1e-4)


def _run_numpy(onnx_path, grads, params=None, opt=None):
    params = numpy_params() if params is None else params
    opt = NumpyLTO(params, lr=1e-2, onnx_path=onnx_path, boundaries="auto") if opt is None else opt
    for g in grads:
        assert opt.step(g)
    return params, opt


def test_front_ends_detect_the_same_shift_and_take_the_same_steps(random_head_files):
    checkpoint, onnx_path = random_head_files
    grads = shifting_gradients(SHIFT_AT + 30)
    ref, opt = _run_numpy(onnx_path, grads)
    assert opt.engine.counters.boundaries.tolist() == [1, 1, 1]
    assert (opt.engine.counters.steps_since_boundary < 30).all()
    for backend, files in (("onnx", dict(onnx_path=onnx_path)), ("torch", dict(checkpoint=checkpoint))):
        tensors = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in numpy_params().values()]
        topt = LTO(tensors, lr=1e-2, backend=backend, boundaries="auto", **files)
        for g in grads:
            for t, name in zip(tensors, SHAPES):
                t.grad = torch.from_numpy(g[name])
            topt.step()
        assert topt.engine.counters.boundaries.tolist() == [1, 1, 1], backend
        for t, name in zip(tensors, SHAPES):
            np.testing.assert_allclose(t.detach().numpy(), ref[name], rtol=0, atol=1e-5, err_msg=backend)


def test_optax_detects_the_same_shift_under_jit(random_head_files):
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    from lto_adapters import optax as lto_optax

    _, onnx_path = random_head_files
    grads = shifting_gradients(SHIFT_AT + 30)
    ref, _ = _run_numpy(onnx_path, grads)
    tx = lto_optax.lto(learning_rate=1e-2, onnx_path=onnx_path, boundaries="auto")
    params = {n: jnp.asarray(p) for n, p in numpy_params().items()}
    state = tx.init(params)

    @jax.jit
    def step(params, state, g):
        updates, state = tx.update(g, state, params)
        return jax.tree.map(lambda p, u: p + u, params, updates), state

    for g in grads:
        params, state = step(params, state, {n: jnp.asarray(v) for n, v in g.items()})
    assert [int(b) for b in jax.tree.leaves(state.boundaries)] == [1, 1, 1]
    for name in SHAPES:
        np.testing.assert_allclose(np.asarray(params[name]), ref[name], rtol=0, atol=1e-5)


def test_state_dict_mid_statistics_resumes_exactly(random_head_files):
    """Saved after warmup but before the shift, loaded into a fresh optimizer: the same detection
    and the same parameters as the run that never stopped."""
    _, onnx_path = random_head_files
    grads = shifting_gradients(SHIFT_AT + 30)
    ref, ref_opt = _run_numpy(onnx_path, grads)
    params, opt = _run_numpy(onnx_path, grads[: SHIFT_AT - 10])
    saved = opt.state_dict()
    assert saved["state"]["w"]["energy_long"] > 0
    resumed = NumpyLTO(params, lr=1e-2, onnx_path=onnx_path, boundaries="auto")
    resumed.load_state_dict(saved)
    _run_numpy(onnx_path, grads[SHIFT_AT - 10 :], params, resumed)
    assert resumed.engine.counters.boundaries.tolist() == ref_opt.engine.counters.boundaries.tolist() == [1, 1, 1]
    for name in SHAPES:
        np.testing.assert_array_equal(params[name], ref[name])


def test_state_saved_before_shift_statistics_existed_loads(random_head_files):
    _, onnx_path = random_head_files
    _, opt = _run_numpy(onnx_path, shifting_gradients(5))
    saved = opt.state_dict()
    for record in saved["state"].values():
        del record["energy_short"], record["energy_long"]
    opt.load_state_dict(saved)
    assert opt.engine.counters.energy_long.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("value", [-1.0, float("nan"), "big", np.ones(2)])
def test_bad_shift_statistics_are_refused_and_change_nothing(random_head_files, value):
    _, onnx_path = random_head_files
    _, opt = _run_numpy(onnx_path, shifting_gradients(60))
    before = opt.state_dict()
    bad = opt.state_dict()
    bad["state"]["b"]["energy_short"] = value
    with pytest.raises(ValueError, match=r"state_dict\['state'\]\['b'\]\['energy_short'\]"):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["state"]["b"]["energy_short"] == before["state"]["b"]["energy_short"]
    np.testing.assert_array_equal(after["state"]["w"]["exp_avg"], before["state"]["w"]["exp_avg"])


def test_unknown_boundaries_mode_is_refused_by_every_front_end():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="Invalid boundaries: 'sometimes'; use 'manual'"):
        LTO(model.parameters(), boundaries="sometimes")
    with pytest.raises(ValueError, match="Invalid boundaries: 'Auto'"):
        NumpyLTO({"w": np.zeros(3, np.float32)}, boundaries="Auto")
    with pytest.raises(ValueError, match="Invalid boundaries: None"):
        StepCounters(1, 10, boundaries=None)
    from lto_adapters.keras import LTO as KerasLTO

    with pytest.raises(ValueError, match="Invalid boundaries: 'task'"):
        KerasLTO(boundaries="task")
    pytest.importorskip("optax")
    from lto_adapters import optax as lto_optax

    with pytest.raises(ValueError, match="Invalid boundaries: 1"):
        lto_optax.lto(boundaries=1)


def test_keras_auto_mode_saves_and_restores_its_shift_statistics(tmp_path):
    import keras

    from lto_adapters.keras import LTO as KerasLTO

    def model(opt):
        m = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        m.compile(optimizer=opt, loss="mse")
        return m

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((64, 8)).astype(np.float32), rng.standard_normal((64, 4)).astype(np.float32)
    trained = model(KerasLTO(learning_rate=1e-2, boundaries="auto"))
    trained.fit(x, y, batch_size=8, epochs=2, verbose=0)
    trained.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert loaded.optimizer.boundaries == "auto"
    for name in ("energy_short", "energy_long"):
        saved = [trained.optimizer.engine.tensor_state(i)[name] for i in range(2)]
        assert saved == [loaded.optimizer.engine.tensor_state(i)[name] for i in range(2)] and min(saved) > 0


def test_shift_detection_script_records_and_replays_the_detector(tmp_path):
    """scripts/shift_detection.py in its own processes: Adam's recorded statistic on split digits,
    replayed through StepCounters, marks the one task change and nothing in plain training."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "shift_detection.py"
    record = [sys.executable, str(script), "record", "--out", str(tmp_path), "--data", "digits", "--archs", "mlp",
              "--seeds", "0", "--tasks", "2", "--steps", "150"]
    done = subprocess.run(record, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = np.load(tmp_path / "digits-split-mlp-0.npy")
    assert rows.shape == (300, len(list(make_model("mlp", (64,), 10, seed=0).parameters())))
    assert (rows[1:] > 0).all() and (rows[0] == 0).all()
    scored = subprocess.run([sys.executable, str(script), "score", str(tmp_path), "--steps", "150"], capture_output=True, text=True, timeout=300)
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert re.search(r"^split-mlp\s+changes found 1/1  false marks 0 in 300 steps$", scored.stdout, flags=re.MULTILINE), scored.stdout
    assert re.search(r"^stationary-mlp\s+changes found 0/0  false marks 0 in 300 steps$", scored.stdout, flags=re.MULTILINE), scored.stdout
