"""The ONNX file and the PyTorch step agree, on random windows and along training trajectories."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import digits_mlp, flat_params, frozen, outputs_like, train
from lto_adapters.torch import LTO
from lto_core.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from lto_core.executor import TorchStepFunction
from lto_export.onnx_export import example_inputs
from lto_export.validate import output_difference, validate_file
from lto_runtime import OptimizerSession, default_model_path
from lto_runtime.format import INPUT_NAMES, SCALAR_NAMES, TOKEN_STATE_NAMES


def test_random_head_file_matches_torch_step_on_random_windows(random_head_files):
    checkpoint, onnx_path = random_head_files
    graph, _ = load_checkpoint(checkpoint)
    session, reference = OptimizerSession(onnx_path), TorchStepFunction(graph, compile=False)
    for seed, windows in enumerate((1, 4, 9)):
        inputs = dict(zip(INPUT_NAMES, (x.numpy() for x in example_inputs(graph, windows, seed))))
        outs = [outputs_like(inputs) for _ in range(2)]
        session.run(inputs, outs[0])
        reference.run(inputs, outs[1])
        assert np.abs(outs[1]["update"]).max() > 0
        assert np.abs(outs[1]["refreshed_coefficients"]).max() > 0
        for key in outs[0]:
            assert output_difference(outs[1][key], outs[0][key]) < 1e-5


@pytest.mark.parametrize("coefficients", ["zero", "gate", "gate and pull"])
@pytest.mark.parametrize("compile", [False, True])
def test_step_in_place_writes_what_run_outputs(random_head_files, coefficients, compile):
    """The torch backend's in-place step (new moments over the old, the update added to the
    parameter or written into a buffer) computes run()'s outputs, on each of the graph's branches."""
    graph, _ = load_checkpoint(random_head_files[0])
    inputs = dict(zip(INPUT_NAMES, (x.numpy() for x in example_inputs(graph, windows=5, seed=2))))
    inputs["boundary_windows"] = inputs["refresh_windows"] = np.zeros(0, np.float32)
    inputs["scalars"][:, SCALAR_NAMES.index("weight_decay")] = 0.01
    if coefficients == "zero":
        inputs["coefficients"][:] = 0.0
    elif coefficients == "gate":
        inputs["coefficients"][..., TOKEN_STATE_NAMES.index("pull")] = 0.0
    expected = outputs_like(inputs)
    TorchStepFunction(graph, compile=False).run(inputs, expected)
    step = TorchStepFunction(graph, compile=compile)
    for onto_param in (True, False):
        written = {name: array.copy() for name, array in inputs.items()}
        update = None if onto_param else np.full_like(expected["update"], np.nan)
        step.step_in_place({name: torch.from_numpy(array) for name, array in written.items()}, None if onto_param else torch.from_numpy(update))
        got = written["param"] - inputs["param"] if onto_param else update
        assert output_difference(expected["update"], got) < 1e-5
        assert output_difference(expected["new_exp_avg"], written["exp_avg"]) < 1e-6
        assert output_difference(expected["new_exp_avg_sq"], written["exp_avg_sq"]) < 1e-6
        for name in ("grad", "mask", "log_importance", "anchor", "coefficients", "scalars", "ctx") + (() if onto_param else ("param",)):
            np.testing.assert_array_equal(written[name], inputs[name])


@pytest.mark.parametrize("compile", [False, True])
def test_run_listed_writes_what_run_outputs_for_the_listed_windows(random_head_files, compile):
    """The torch backend's consolidate- or refresh-only call (no step of every window) gives run()'s
    consolidated importance, anchors and refreshed coefficients, with weight decay in some windows."""
    graph, _ = load_checkpoint(random_head_files[0])
    inputs = dict(zip(INPUT_NAMES, (x.numpy() for x in example_inputs(graph, windows=7, seed=4))))
    inputs["scalars"][::2, SCALAR_NAMES.index("weight_decay")] = 0.01
    listed = {"boundary_windows": np.array([1, 4, 6], np.float32), "refresh_windows": np.array([0, 2, 3, 6], np.float32)}
    step = TorchStepFunction(graph, compile=compile)
    for name, windows in listed.items():
        case = {**inputs, "boundary_windows": np.zeros(0, np.float32), "refresh_windows": np.zeros(0, np.float32), name: windows}
        expected, got = outputs_like(case), outputs_like(case)
        TorchStepFunction(graph, compile=False).run(case, expected)
        step.run_listed(case, got)
        for key in ("consolidated_log_importance", "consolidated_anchor", "refreshed_coefficients"):
            assert output_difference(expected[key], got[key]) < 1e-5
    assert np.abs(got["refreshed_coefficients"]).max() > 0


def test_backends_agree_along_a_trajectory_with_boundaries(random_head_files):
    """Two models trained by the two backends stay together (the network really acts here)."""
    checkpoint, onnx_path = random_head_files
    models = digits_mlp(), digits_mlp()
    opts = LTO(models[0].parameters(), lr=3e-3, onnx_path=onnx_path), LTO(models[1].parameters(), lr=3e-3, backend="torch", checkpoint=checkpoint)
    adam_model = digits_mlp()
    train(adam_model, torch.optim.Adam(adam_model.parameters(), lr=3e-3), 60)
    for _ in range(3):
        for model, opt in zip(models, opts):
            train(model, opt, 20)
            opt.task_boundary()
    assert torch.allclose(flat_params(models[0]), flat_params(models[1]), rtol=0.0, atol=1e-5)
    assert not torch.allclose(flat_params(models[0]), flat_params(adam_model), atol=1e-3)


def test_validate_passes_for_packaged_default():
    report = validate_file(default_model_path(), DEFAULT_CHECKPOINT, steps=30)
    assert report.passed, report


def test_validate_flags_a_file_from_another_checkpoint(random_head_files, zero_head_files):
    report = validate_file(random_head_files[1], zero_head_files[0], steps=10)
    assert not report.checkpoint_matches
    assert report.trajectory_difference > 1e-5
    assert not report.passed


def test_torch_backend_runs_eagerly_where_no_compiler_exists(tmp_path, random_head_files):
    """With no C++ compiler on PATH, backend='torch' says so once at INFO, runs the step eagerly
    and still agrees with the onnx backend (a real process whose PATH holds no compiler)."""
    checkpoint, onnx_path = random_head_files
    script = f"""
import logging, sys
import torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from helpers import digits_mlp, flat_params, train
from lto_adapters.torch import LTO
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
models = digits_mlp(), digits_mlp()
eager = LTO(models[0].parameters(), lr=3e-3, backend="torch", checkpoint={str(checkpoint)!r})
onnx = LTO(models[1].parameters(), lr=3e-3, onnx_path={str(onnx_path)!r})
for opt, model in zip((eager, onnx), models):
    for _ in range(2):
        train(model, opt, 15)
        opt.task_boundary()
print("compiled", eager.runtime.compiled)
print("difference", float((flat_params(models[0]) - flat_params(models[1])).abs().max()))
"""
    empty = tmp_path / "bin"
    empty.mkdir()
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PATH": str(empty)}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compiled False" in result.stdout
    assert float(result.stdout.split("difference")[1]) < 1e-5
    assert result.stderr.count("no C++ compiler found") == 1


def test_torch_backend_matches_onnx_on_every_kind_of_parameter(random_head_files, one_torch_thread):
    """backend='torch' adds the update straight into contiguous float32 parameters and moments;
    strided, float64, one-window and tail-only parameters, a parameter without a gradient on some
    steps, weight decay in one group, boundaries (the network's gate and pull act) and a refused
    NaN gradient all give the onnx backend's step."""
    checkpoint, onnx_path = random_head_files
    rng = np.random.default_rng(0)
    values = [
        rng.normal(size=(70, 40)),  # whole windows and a tail
        rng.normal(size=(40, 70)).T,  # strided: no flat view to add into
        rng.normal(size=1500),  # float64
        rng.normal(size=1024),  # exactly one window
        rng.normal(size=5),  # a tail alone
    ]
    dtypes = [torch.float32, torch.float32, torch.float64, torch.float32, torch.float32]

    def make(backend):
        params = [torch.nn.Parameter(torch.tensor(v, dtype=d)) for v, d in zip(values, dtypes)]
        groups = [{"params": params[:3], "weight_decay": 0.01}, {"params": params[3:]}]
        if backend == "onnx":
            return params, LTO(groups, lr=3e-3, onnx_path=onnx_path)
        return params, LTO(groups, lr=3e-3, backend="torch", checkpoint=checkpoint)

    (onnx_params, onnx_opt), (torch_params, torch_opt) = make("onnx"), make("torch")
    assert not torch_params[1].is_contiguous()
    for step in range(24):
        grads = [rng.normal(size=v.shape) for v in values]
        if step == 13:
            grads[2][7] = np.nan
        for params, opt in ((onnx_params, onnx_opt), (torch_params, torch_opt)):
            for i, (p, g) in enumerate(zip(params, grads)):
                p.grad = None if (i == 4 and step % 3 == 0) else torch.tensor(g, dtype=p.dtype)
            if step in (6, 16):
                opt.task_boundary()
            if step == 13:
                before = [p.detach().clone() for p in params], frozen(opt.state_dict())
                with pytest.warns(RuntimeWarning, match="non-finite"):
                    opt.step()
                assert all(torch.equal(a, b) for a, b in zip(before[0], params)) and frozen(opt.state_dict()) == before[1]
            else:
                opt.step()
        for a, b in zip(onnx_params, torch_params):
            torch.testing.assert_close(b.detach().double(), a.detach().double(), rtol=0.0, atol=1e-5)
    state = torch_opt.engine.tensor_state(0)
    assert np.abs(state["coefficients"][:, 2]).max() > 0  # the pull acted
    for i in range(len(values)):
        a, b = onnx_opt.engine.tensor_state(i), torch_opt.engine.tensor_state(i)
        for key in ("exp_avg", "exp_avg_sq", "log_importance", "anchor", "coefficients"):
            np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-5)
