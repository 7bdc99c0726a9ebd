"""Weight decay means one thing in every front end: L2 added to the gradient inside the step."""

from __future__ import annotations

import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from lto_adapters.numpy import LTO as NumpyLTO  # noqa: E402
from lto_adapters.torch import LTO as TorchLTO  # noqa: E402

SHAPES = {"w": (5, 7), "b": (7,)}
HYPER = dict(lr=3e-2, weight_decay=0.1)


def test_torch_numpy_and_keras_take_the_same_step_with_weight_decay(random_head_files):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("Keras runs on the torch backend in these tests")
    from lto_adapters.keras import LTO as KerasLTO

    _, onnx_path = random_head_files
    rng = np.random.default_rng(0)
    start = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    arrays = {k: v.copy() for k, v in start.items()}
    numpy_opt = NumpyLTO(arrays, **HYPER, onnx_path=onnx_path)
    tensors = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in start.values()]
    torch_opt = TorchLTO(tensors, **HYPER, onnx_path=onnx_path)
    variables = [keras.Variable(v.copy()) for v in start.values()]
    keras_opt = KerasLTO(learning_rate=HYPER["lr"], weight_decay=HYPER["weight_decay"], onnx_path=onnx_path)
    keras_opt.build(variables)
    grads = [[rng.normal(size=s).astype(np.float32) for s in SHAPES.values()] for _ in range(5)]
    for step, step_grads in enumerate(grads):
        if step == 2:
            numpy_opt.task_boundary(), torch_opt.task_boundary(), keras_opt.task_boundary()
        numpy_opt.step(dict(zip(SHAPES, step_grads)))
        for p, g in zip(tensors, step_grads):
            p.grad = torch.from_numpy(g.copy())
        torch_opt.step()
        keras_opt.apply([keras.ops.convert_to_tensor(g) for g in step_grads], variables)
    for name, p, v in zip(SHAPES, tensors, variables):
        np.testing.assert_array_equal(p.detach().numpy(), arrays[name])
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), arrays[name])
    # Weight decay acted: without it the same gradients end elsewhere.
    plain = {k: v.copy() for k, v in start.items()}
    plain_opt = NumpyLTO(plain, lr=HYPER["lr"], onnx_path=onnx_path)
    for step, step_grads in enumerate(grads):
        if step == 2:
            plain_opt.task_boundary()
        plain_opt.step(dict(zip(SHAPES, step_grads)))
    assert not np.allclose(plain["w"], arrays["w"], rtol=0, atol=1e-4)


def test_keras_exclude_from_weight_decay_matches_a_torch_group_without_it(random_head_files):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("Keras runs on the torch backend in these tests")
    from lto_adapters.keras import LTO as KerasLTO

    _, onnx_path = random_head_files
    rng = np.random.default_rng(1)
    start = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    tensors = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in start.items()}
    groups = [{"params": [tensors["w"]]}, {"params": [tensors["b"]], "weight_decay": 0.0}]
    torch_opt = TorchLTO(groups, **HYPER, onnx_path=onnx_path)
    variables = [keras.Variable(v.copy(), name=k) for k, v in start.items()]
    keras_opt = KerasLTO(learning_rate=HYPER["lr"], weight_decay=HYPER["weight_decay"], onnx_path=onnx_path)
    keras_opt.exclude_from_weight_decay(var_names=["b"])
    keras_opt.build(variables)
    for _ in range(3):
        grads = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
        for k, p in tensors.items():
            p.grad = torch.from_numpy(grads[k].copy())
        torch_opt.step()
        keras_opt.apply([keras.ops.convert_to_tensor(grads[k]) for k in SHAPES], variables)
    for k, v in zip(SHAPES, variables):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(v), tensors[k].detach().numpy())
