"""The NumPy adapter trains a model with hand-written gradients, and needs no torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from lto_adapters.numpy import LTO
from lto_core.data import load_digits


def _softmax_regression_grads(params, x, y):
    logits = x @ params["w"] + params["b"]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    loss = -np.log(p[np.arange(len(y)), y]).mean()
    p[np.arange(len(y)), y] -= 1.0
    p /= len(y)
    return loss, {"w": x.T @ p, "b": p.sum(axis=0)}


def test_logistic_regression_on_digits_learns():
    data = load_digits()
    x, y = data.x_train.reshape(len(data.x_train), -1), data.y_train
    params = {"w": np.zeros((64, 10), np.float32), "b": np.zeros(10, np.float32)}
    opt = LTO(params, lr=1e-2)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(200):
        idx = rng.integers(0, len(x), 64)
        loss, grads = _softmax_regression_grads(params, x[idx], y[idx])
        assert opt.step(grads)
        losses.append(loss)
    xt = data.x_test.reshape(len(data.x_test), -1)
    accuracy = ((xt @ params["w"] + params["b"]).argmax(1) == data.y_test).mean()
    assert np.mean(losses[-20:]) < 0.5 * losses[0]
    assert accuracy > 0.85


def test_numpy_adapter_matches_adam_with_zero_head(zero_head_files):
    torch = pytest.importorskip("torch")
    _, onnx_path = zero_head_files
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(5, 3)).astype(np.float32)
    params = {"w": w0.copy()}
    opt = LTO(params, lr=1e-2, onnx_path=onnx_path)
    ref = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    adam = torch.optim.Adam([ref], lr=1e-2)
    for _ in range(50):
        g = rng.normal(size=(5, 3)).astype(np.float32)
        opt.step({"w": g})
        ref.grad = torch.from_numpy(g)
        adam.step()
    np.testing.assert_allclose(params["w"], ref.detach().numpy(), atol=1e-6, rtol=0)


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(0)
    grads = [{"a": rng.normal(size=(3, 4)), "b": rng.normal(size=())} for _ in range(20)]
    params = {"a": np.ones((3, 4)), "b": np.array(0.5)}
    opt = LTO(params, lr=1e-2)
    for g in grads[:10]:
        opt.step(g)
    opt.task_boundary()
    sd = opt.state_dict()
    saved_params = {k: v.copy() for k, v in params.items()}
    for g in grads[10:]:
        opt.step(g)
    other_params = saved_params
    other = LTO(other_params, lr=1.0)
    other.load_state_dict(sd)
    for g in grads[10:]:
        other.step(g)
    for k in params:
        np.testing.assert_array_equal(params[k], other_params[k])


def test_missing_gradients_skip_that_parameter():
    params = {"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)}
    opt = LTO(params, lr=0.1)
    opt.step({"a": np.ones(3, np.float32)})
    assert (params["a"] < 1).all() and (params["b"] == 1).all()
    assert opt.state_dict()["state"]["b"]["step"] == 0


@pytest.mark.parametrize(
    "params, grads, error, match",
    [
        ({"w": np.ones(3, np.int64)}, None, TypeError, "dtype"),
        ({"w": [1.0, 2.0]}, None, TypeError, "numpy.ndarray"),
        ({"w": np.ones(3)}, {"v": np.ones(3)}, KeyError, "unknown"),
        ({"w": np.ones(3)}, {"w": np.ones(4)}, ValueError, "shape"),
        ({"w": np.ones(3)}, {"w": np.ones(3, complex)}, TypeError, "complex"),
    ],
)
def test_bad_input_is_named(params, grads, error, match):
    with pytest.raises(error, match=match):
        opt = LTO(params)
        opt.step(grads)


def test_runtime_and_numpy_adapter_import_without_torch():
    code = (
        "import sys, lto_runtime, lto_adapters.numpy\n"
        "import numpy as np\n"
        "p = {'w': np.zeros(4, np.float32)}\n"
        "lto_adapters.numpy.LTO(p, lr=0.1).step({'w': np.ones(4, np.float32)})\n"
        "assert (p['w'] < 0).all()\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
