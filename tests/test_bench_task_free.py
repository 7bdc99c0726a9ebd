"""Task-free continual learning in the benchmark: streams without boundaries, gradual streams,
task-free online EWC, and ``lto bench cl --no-boundaries`` / ``--gradual``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from lto_export.cli import main

from lto_core.baselines import TaskFreeOnlineEWC
from lto_core.continual import mixed_task_loss, run_stream, task_loss
from lto_core.data import load_dataset
from lto_core.models import make_model
from lto_core.streams import make_stream

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _stream(tasks: int = 3):
    return make_stream(load_dataset("digits", 0), "split", "task", tasks, seed=0)


class CountingSGD(torch.optim.SGD):
    """SGD that counts the task boundaries it is told of."""

    def __init__(self, params, lr: float = 0.03) -> None:
        super().__init__(params, lr=lr)
        self.boundaries = 0

    def task_boundary(self) -> None:
        self.boundaries += 1


@pytest.mark.parametrize("boundaries", [True, False])
def test_without_boundaries_nothing_is_told_where_a_task_ends_yet_every_task_end_is_measured(boundaries):
    stream = _stream()
    model = make_model("mlp", stream.input_shape, stream.num_outputs, seed=0)
    optimizer = CountingSGD(model.parameters())
    ended = []
    result = run_stream(model, optimizer, stream, 15, seed=0, on_task_end=lambda m, task: ended.append(task), boundaries=boundaries)
    told = len(stream.tasks) - 1 if boundaries else 0
    assert optimizer.boundaries == told and len(ended) == told
    assert result.R.shape == (3, 3) and (np.diag(result.R) > 0.5).all()  # each task learned, measured at its end
    assert len(result.losses) == 3 * 15


class RecordingMLP(torch.nn.Module):
    """An MLP that keeps every training batch it sees."""

    def __init__(self, stream) -> None:
        super().__init__()
        self.net = make_model("mlp", stream.input_shape, stream.num_outputs, seed=0)
        self.batches: list[np.ndarray] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.batches.append(x.numpy().copy())
        return self.net(x)


def _sources(stream, model: RecordingMLP) -> list[np.ndarray]:
    """Which task each example of each recorded batch came from (looked up by its pixels)."""
    owner = {row.tobytes(): t for t, task in enumerate(stream.tasks) for row in task.x_train}
    return [np.array([owner[row.tobytes()] for row in batch]) for batch in model.batches]


def test_a_gradual_stream_blends_the_previous_task_out_linearly_and_deterministically():
    stream, iters, blend, batch = _stream(), 12, 8, 400
    runs = []
    for _ in range(2):
        model = RecordingMLP(stream)
        run_stream(model, torch.optim.SGD(model.parameters(), lr=0.01), stream, iters, batch_size=batch, seed=5, blend=blend)
        runs.append(_sources(stream, model))
    sources = runs[0]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1]))  # a function of the seed alone
    assert all((s == 0).all() for s in sources[:iters])  # the first task is not blended
    for task in (1, 2):
        steps = sources[task * iters : (task + 1) * iters]
        assert set(np.unique(np.concatenate(steps))) <= {task - 1, task}
        previous = np.array([(s == task - 1).mean() for s in steps])
        expected = np.array([max(0.0, 1 - j / blend) for j in range(iters)])
        assert np.abs(previous - expected).max() < 0.1, previous.round(2)
        assert previous[0] == 1.0 and (previous[blend:] == 0.0).all()


def test_a_mixed_batch_scores_each_example_under_its_own_tasks_mask():
    stream = _stream()
    model = make_model("mlp", stream.input_shape, stream.num_outputs, seed=0)
    source, index = np.array([0, 1, 1, 2, 0]), np.array([3, 1, 4, 1, 5])
    mixed = mixed_task_loss(model, stream.tasks, source, index)
    alone = torch.stack([task_loss(model, stream.tasks[s], np.array([i])) for s, i in zip(source, index)]).mean()
    torch.testing.assert_close(mixed, alone)


@pytest.mark.parametrize("blend", [-1, 10, 11])
def test_a_blend_as_long_as_the_task_is_refused(blend):
    stream = _stream(2)
    model = make_model("mlp", stream.input_shape, stream.num_outputs, seed=0)
    with pytest.raises(ValueError, match=f"blend must be >= 0 and smaller than iters \\(10\\), got {blend}"):
        run_stream(model, torch.optim.SGD(model.parameters(), lr=0.01), stream, 10, blend=blend)


def test_task_free_online_ewc_consolidates_every_period_with_the_mean_squared_gradient_there():
    stream, period, batch = _stream(), 7, 16
    model = make_model("mlp", stream.input_shape, stream.num_outputs, seed=0)
    ewc = TaskFreeOnlineEWC(lam=50.0, gamma=0.5, period=period, batch_size=batch)
    squares, snapshots, consolidations, fishers = [], {}, [], []

    def on_backward(m):
        if ewc.consolidations == 0:  # the penalty is zero so far: .grad is the task loss's gradient
            squares.append([batch * p.grad.square() for p in m.parameters()])
        ewc.on_backward(m)

    def on_step(taken, m):
        snapshots[taken] = [p.detach().clone() for p in m.parameters()]
        consolidations.append(ewc.consolidations)
        if taken == period:
            fishers.append([f.clone() for f in ewc.fisher])

    run_stream(model, torch.optim.Adam(model.parameters(), 1e-3), stream, 10, batch_size=batch, seed=0,
               penalty=ewc.penalty, on_backward=on_backward, on_step=on_step, boundaries=False)
    assert consolidations == [step // period for step in range(1, 31)]  # on the clock, boundaries unseen
    # the anchor: the parameters at the last consolidation (step 28's gradient, before its update)
    for anchor, p in zip(ewc.anchor, snapshots[27]):
        torch.testing.assert_close(anchor, p)
    assert ewc.accumulated_steps == 30 - 28
    # the first Fisher: the mean over its period of B g^2
    for fisher, k in zip(fishers[0], range(len(ewc.fisher))):
        torch.testing.assert_close(fisher, sum(s[k] for s in squares[:period]) / period)
    assert ewc.penalty(model).item() > 0.0


def test_task_free_online_ewc_counts_only_the_task_loss_gradient_and_a_boundary_consolidates_at_once():
    model = torch.nn.Linear(2, 1)
    ewc = TaskFreeOnlineEWC(lam=4.0, gamma=1.0, period=100, batch_size=1)
    ewc.penalty(model)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    ewc.on_backward(model)
    ewc.on_task_end(model)
    assert ewc.consolidations == 1 and all(torch.equal(f, torch.ones_like(f)) for f in ewc.fisher)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    penalty = ewc.penalty(model)
    assert penalty.item() == pytest.approx(0.5 * 4.0 * 3)  # three weights, each F = 1 and 1 away
    model.zero_grad()
    penalty.backward()  # .grad = the penalty's own gradient, 4 * 1 * 1; the task loss's is zero
    ewc.on_backward(model)
    assert all(torch.allclose(a, torch.zeros_like(a)) for a in ewc.accumulated)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"lam": -1.0}, "Invalid EWC lambda"), ({"lam": 1.0, "gamma": 2.0}, "Invalid online EWC gamma"),
     ({"lam": 1.0, "period": 0}, "Invalid online EWC period: 0"), ({"lam": 1.0, "batch_size": 0}, "Invalid batch_size: 0")],
)
def test_task_free_online_ewc_names_a_bad_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TaskFreeOnlineEWC(**kwargs)


def test_bench_cl_no_boundaries_runs_the_task_free_methods_and_says_which_need_boundaries(tmp_path):
    args = ["bench", "cl", "--quick", "--iters", "12", "--seeds", "1", "--tasks", "2", "--no-boundaries", "--gradual", "4",
            "--optimizers", "sgd,adam,upgd,online-ewc", "--online-ewc-period", "5", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "needs task boundaries: ewc, si, gated-adam (not run)" in result.output
    doc = json.loads((tmp_path / "results.json").read_text())
    config = doc["config"]
    assert config["no_boundaries"] is True and config["gradual"] == 4
    assert config["not_run"] == {"ewc": "needs task boundaries", "si": "needs task boundaries", "gated-adam": "needs task boundaries"}
    assert set(doc["summary"]) == {"sgd", "adam", "upgd", "online-ewc"}
    assert config["optimizers"]["online-ewc"]["variant"] == "task-free" and config["optimizers"]["online-ewc"]["online_ewc_period"] == 5
    assert config["optimizers"]["upgd"]["lr"] == 0.03
    assert all(r["boundaries_found"] == 0 for r in doc["records"])  # none of these is LTO
    markdown = (tmp_path / "results.md").read_text()
    assert "| boundaries found |" in markdown
    assert "no task boundaries" in markdown and "needs task boundaries: ewc, si, gated-adam (not run)" in markdown


def test_bench_cl_no_boundaries_refuses_a_method_that_needs_them_by_name(tmp_path):
    args = ["bench", "cl", "--quick", "--no-boundaries", "--optimizers", "adam,ewc", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert "ewc needs task boundaries" in result.output and "--no-boundaries" in result.output
    assert not (tmp_path / "results.json").exists()


def test_bench_cl_refuses_a_blend_longer_than_a_task(tmp_path):
    result = CliRunner().invoke(main, ["bench", "cl", "--quick", "--iters", "10", "--gradual", "10", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--gradual" in result.output


def test_no_boundaries_builds_lto_with_automatic_boundaries():
    from lto_export.bench_cli import _methods

    methods = _methods(["lto-torch"], 1e-3, 0.03, 0.0, 100.0, 1.0, None, 1, no_boundaries=True)
    assert methods["lto-torch"].settings["boundaries"] == "auto"
    optimizer = methods["lto-torch"].make_optimizer([torch.nn.Parameter(torch.zeros(3))])
    assert optimizer.boundaries == "auto"


def test_bench_train_no_boundaries_runs_lto_task_free_and_counts_what_it_marked(tmp_path):
    """One task: LTO in task-free mode finds no boundary there, so it trains exactly as Adam."""
    args = ["bench", "train", "--quick", "--iters", "60", "--seeds", "1", "--no-boundaries", "--optimizers", "adam,lto", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["config"]["no_boundaries"] is True and doc["config"]["optimizers"]["lto"]["boundaries"] == "auto"
    assert [r["boundaries_found"] for r in doc["records"]] == [0, 0]
    assert doc["records"][0]["losses"] == doc["records"][1]["losses"]
    assert "| boundaries found |" in (tmp_path / "results.md").read_text()
