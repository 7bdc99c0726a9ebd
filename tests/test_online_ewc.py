"""Online EWC (lto_core.baselines.OnlineEWC): one running Fisher, decayed by gamma, and one anchor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lto_core.baselines import EWC, OnlineEWC
from lto_core.models import make_model
from lto_core.streams import Task


def _tasks(count: int) -> list[Task]:
    rng = np.random.default_rng(0)
    out = []
    for t in range(count):
        x = rng.normal(size=(48, 6)).astype(np.float32)
        y = (x[:, t] > 0).astype(np.int64)
        out.append(Task(x, y, x, y, None))
    return out


def _nudge(model: torch.nn.Module, seed: int) -> None:
    with torch.no_grad():
        generator = torch.Generator().manual_seed(seed)
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))


@pytest.mark.parametrize("gamma", [1.0, 0.5])
def test_running_fisher_is_the_decayed_sum_of_the_per_task_fishers_with_the_last_anchor(gamma):
    model = make_model("mlp", (6,), 2, seed=0, width=8, depth=1)
    online, per_task = OnlineEWC(lam=3.0, gamma=gamma, fisher_samples=16), EWC(lam=3.0, fisher_samples=16)
    for k, task in enumerate(_tasks(3)):
        _nudge(model, k)
        online.on_task_end(model, task)
        per_task.on_task_end(model, task)
    assert len(online.consolidated) == 1
    (fisher, anchor), fishers = online.consolidated[0], [f for f, _ in per_task.consolidated]
    for i, f in enumerate(fisher):
        expected = gamma**2 * fishers[0][i] + gamma * fishers[1][i] + fishers[2][i]
        torch.testing.assert_close(f, expected)
        torch.testing.assert_close(anchor[i], list(model.parameters())[i].detach())
    assert online.penalty(model).item() == 0.0  # at the anchor
    _nudge(model, 9)
    expected = 0.5 * 3.0 * sum((f * (p - a).square()).sum() for f, p, a in zip(fisher, model.parameters(), anchor))
    assert online.penalty(model).item() == pytest.approx(expected.item(), rel=1e-6) and expected.item() > 0.0


def test_bad_gamma_is_named():
    with pytest.raises(ValueError, match="Invalid online EWC gamma: 1.5"):
        OnlineEWC(lam=1.0, gamma=1.5)


def test_bench_cl_runs_online_ewc_with_its_gamma_and_records_it(tmp_path):
    import json

    from click.testing import CliRunner

    from lto_export.cli import main

    args = ["bench", "cl", "--quick", "--iters", "20", "--seeds", "1", "--tasks", "2", "--optimizers", "adam,online-ewc",
            "--online-ewc-gamma", "0.5", "--ewc-lambda", "10000", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["config"]["optimizers"]["online-ewc"] == {"lr": 1e-3, "base": "torch.optim.Adam", "ewc_lambda": 10000.0, "online_ewc_gamma": 0.5}
    R = {r["optimizer"]: r["R"] for r in doc["records"]}
    assert R["online-ewc"][0] == R["adam"][0]  # the same weights and batches; the penalty only acts after the boundary
    assert R["online-ewc"][1] != R["adam"][1]
