"""The ONNX file and the PyTorch step agree, on random windows and along training trajectories."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from helpers import digits_mlp, flat_params, outputs_like, train
from lto_adapters.torch import LTO
from lto_core.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from lto_core.executor import TorchStepFunction
from lto_export.onnx_export import example_inputs
from lto_export.validate import output_difference, validate_file
from lto_runtime import OptimizerSession, default_model_path
from lto_runtime.format import INPUT_NAMES


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
