"""scripts/onnx_adam_floor.py times the right thing: its onnxruntime graph computes Adam's step
(the moments and the update of ``torch.optim.Adam``), written in place as its timing loop binds it.
To 1e-4 relative: the graph gets its betas as float32, so ``1 - beta2`` differs from torch's in
the fifth digit."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np
import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "onnx_adam_floor.py"
spec = importlib.util.spec_from_file_location("onnx_adam_floor", SCRIPT)
floor = importlib.util.module_from_spec(spec)
spec.loader.exec_module(floor)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_timed_graph_is_adam_and_steps_in_place():
    session = floor.onnx_session(threads=1)
    windows, steps = 3, 4
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal((windows, floor.WINDOW, floor.CHUNK)).astype(np.float32) for _ in range(steps)]
    exp_avg, exp_avg_sq = (np.zeros_like(grads[0]) for _ in range(2))
    update = np.zeros_like(grads[0])
    param = torch.zeros(grads[0].size, requires_grad=True)
    reference = torch.optim.Adam([param], lr=1e-3)
    for step, grad in enumerate(grads, start=1):
        scalars = floor.scalar_rows(windows)
        scalars[:, floor.SCALAR_NAMES.index("step")] = step
        floor.run_windows(session, grad, exp_avg, exp_avg_sq, scalars.numpy(), update)
        before = param.detach().clone()
        param.grad = torch.from_numpy(grad.reshape(-1)).clone()
        reference.step()
        np.testing.assert_allclose(update.reshape(-1), (param.detach() - before).numpy(), rtol=1e-4, atol=1e-9)
        state = reference.state[param]
        np.testing.assert_allclose(exp_avg.reshape(-1), state["exp_avg"].numpy(), rtol=1e-4, atol=1e-9)
        np.testing.assert_allclose(exp_avg_sq.reshape(-1), state["exp_avg_sq"].numpy(), rtol=1e-4, atol=1e-12)
