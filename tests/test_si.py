"""Synaptic intelligence (lto_core.baselines.SI): the path integral by hand, and less forgetting than Adam."""

from __future__ import annotations

import json
import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import pytest
import torch
from click.testing import CliRunner

from lto_core.baselines import SI
from lto_core.continual import run_stream
from lto_core.data import load_dataset
from lto_core.models import make_model
from lto_core.streams import make_stream
from lto_export.cli import main


#: These models are tiny: one torch thread (see conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sgd_steps(si: SI, model: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int):
    """``steps`` plain SGD steps on the squared error plus SI's penalty. Returns, per step, the
    task loss's gradients (penalty excluded) and the parameters' change."""
    task_grads, moves = [], []
    for _ in range(steps):
        model.zero_grad()
        task_loss = (model(x) - y).square().mean()
        task_grads.append([g.detach() for g in torch.autograd.grad(task_loss, list(model.parameters()), retain_graph=True)])
        (task_loss + si.penalty(model)).backward()
        with torch.no_grad():
            moves.append([-lr * p.grad for p in model.parameters()])
            for p in model.parameters():
                p.sub_(lr * p.grad)
    return task_grads, moves


def _expected_importance(task_grads, moves, travelled, xi):
    """``sum_t -g(t) * (theta(t+1) - theta(t)) / (Delta^2 + xi)`` per parameter tensor."""
    return [
        sum(-g[k] * m[k] for g, m in zip(task_grads, moves)) / (travelled[k].square() + xi)
        for k in range(len(travelled))
    ]


def test_importance_is_the_path_integral_of_the_task_gradient_over_the_squared_travel():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.randn(8, 3)
    x[:, 2] = 0.0  # the third weight never sees a gradient
    y = torch.randn(8, 1)
    si = SI(c=0.5, xi=1e-3)
    assert si.penalty(model).item() == 0.0  # nothing consolidated yet
    start = [p.detach().clone() for p in model.parameters()]
    grads, moves = _sgd_steps(si, model, x, y, 0.1, steps=3)
    si.on_task_end(model)
    travelled = [p.detach() - p0 for p, p0 in zip(model.parameters(), start)]
    for got, expected in zip(si.importance, _expected_importance(grads, moves, travelled, 1e-3)):
        torch.testing.assert_close(got, expected)
    # SGD moves each weight along -g, so its path integral lr * sum_t g(t)^2 is positive where it moved
    weight_importance = si.importance[0][0]
    assert float(weight_importance[2]) == 0.0 and bool((weight_importance[:2] > 0).all())
    assert si.penalty(model).item() == 0.0  # at the new anchor


def test_the_penalty_gradient_is_left_out_of_the_path_integral():
    torch.manual_seed(1)
    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    si = SI(c=5.0)
    _sgd_steps(si, model, x, y, 0.1, steps=3)
    si.on_task_end(model)
    first = [o.clone() for o in si.importance]
    anchor = [p.detach().clone() for p in model.parameters()]
    grads, moves = _sgd_steps(si, model, x, torch.randn(8, 1), 0.1, steps=3)
    assert si.penalty(model).item() > 0.0  # the second task pulled the weights off the anchor
    si.on_task_end(model)
    travelled = [p.detach() - a for p, a in zip(model.parameters(), anchor)]
    for got, before, added in zip(si.importance, first, _expected_importance(grads, moves, travelled, 1e-3)):
        torch.testing.assert_close(got, before + added)


def test_si_forgets_less_than_adam_on_split_digits():
    stream = make_stream(load_dataset("digits", 0), "split", "task", 5, seed=0)
    results = {}
    for name in ("adam", "si"):
        model = make_model("mlp", stream.input_shape, stream.num_outputs, seed=0)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        si = SI() if name == "si" else None
        results[name] = run_stream(
            model, optimizer, stream, iters=100, seed=0,
            penalty=None if si is None else si.penalty, on_task_end=None if si is None else si.on_task_end,
        )
    assert results["si"].bwt > results["adam"].bwt + 0.02
    assert results["si"].acc > results["adam"].acc


def test_si_validates_its_arguments():
    with pytest.raises(ValueError, match="Invalid SI c: -1"):
        SI(c=-1.0)
    with pytest.raises(ValueError, match="Invalid SI xi: 0"):
        SI(xi=0.0)


def test_bench_cl_runs_si_and_records_its_settings(tmp_path):
    args = ["bench", "cl", "--tasks", "2", "--iters", "5", "--seeds", "1", "--optimizers", "adam,si", "--si-c", "0.5", "--quick", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "| `si` |" in result.output
    settings = json.loads((tmp_path / "results.json").read_text())["config"]["optimizers"]["si"]
    assert settings == {"lr": 1e-3, "base": "torch.optim.Adam", "si_c": 0.5, "si_xi": 1e-3}
    bad = CliRunner().invoke(main, ["bench", "cl", "--si-xi", "0", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "--si-xi" in bad.output
