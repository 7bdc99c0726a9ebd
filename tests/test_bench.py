"""Benchmarks: GEM metrics, the .npz loader, the baselines, and a --quick run of each `lto bench` verb."""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lto_core.baselines import EWC, GatedAdam
from lto_core.continual import run_stream
from lto_core.data import load_npz
from lto_core.metrics import average_accuracy, backward_transfer, forward_transfer
from lto_core.models import make_model
from lto_core.streams import Stream, Task
from lto_export.cli import main


#: These models are tiny: one torch thread (see conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ---------------------------------------------------------------------------------------------
# GEM metrics (Lopez-Paz & Ranzato, 2017) on hand-made accuracy matrices
# ---------------------------------------------------------------------------------------------

# R[i][j]: accuracy on task j after training task i (T = 3); b: accuracy at initialization.
R3 = np.array(
    [
        [0.90, 0.30, 0.20],
        [0.70, 0.95, 0.40],
        [0.60, 0.80, 0.85],
    ]
)
B3 = np.array([0.10, 0.25, 0.30])


def test_acc_is_the_mean_of_the_last_row():
    assert average_accuracy(R3) == pytest.approx((0.60 + 0.80 + 0.85) / 3)


def test_bwt_compares_the_end_with_just_after_learning_each_earlier_task():
    # (R[T][1] - R[1][1] + R[T][2] - R[2][2]) / (T - 1), 1-indexed
    assert backward_transfer(R3) == pytest.approx(((0.60 - 0.90) + (0.80 - 0.95)) / 2)


def test_fwt_compares_before_learning_a_task_with_initialization():
    # (R[1][2] - b_2 + R[2][3] - b_3) / (T - 1), 1-indexed
    assert forward_transfer(R3, B3) == pytest.approx(((0.30 - 0.25) + (0.40 - 0.30)) / 2)


def test_metrics_of_a_learner_that_never_forgets():
    R = np.array([[1.0, 0.5], [1.0, 1.0]])
    assert average_accuracy(R) == 1.0
    assert backward_transfer(R) == 0.0
    assert forward_transfer(R, [0.5, 0.5]) == 0.0


def test_single_task_metrics_and_shape_errors():
    assert backward_transfer([[0.7]]) == 0.0
    assert forward_transfer([[0.7]], [0.1]) == 0.0
    with pytest.raises(ValueError, match="square"):
        average_accuracy(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="one entry per task"):
        forward_transfer(R3, [0.1, 0.2])


# ---------------------------------------------------------------------------------------------
# The user's .npz loader
# ---------------------------------------------------------------------------------------------


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def test_npz_images_with_channel_axis_load_as_standardized_float32(tmp_path):
    rng = np.random.default_rng(0)
    path = _write_npz(
        tmp_path / "tiny.npz",
        x_train=rng.integers(0, 256, size=(20, 6, 6, 1), dtype=np.uint8),
        y_train=rng.integers(0, 3, size=20),
        x_test=rng.integers(0, 256, size=(8, 6, 6, 1), dtype=np.uint8),
        y_test=rng.integers(0, 3, size=(8, 1)),
    )
    data = load_npz(path)
    assert data.name == "tiny"
    assert data.input_shape == (6, 6)
    assert data.x_train.dtype == np.float32 and data.y_test.shape == (8,)
    assert abs(float(data.x_train.mean())) < 1e-5 and float(data.x_train.std()) == pytest.approx(1.0, rel=1e-3)
    assert data.num_classes == int(max(data.y_train.max(), data.y_test.max())) + 1


def test_npz_vectors_load(tmp_path):
    path = _write_npz(tmp_path / "vec.npz", x_train=np.ones((4, 5)), y_train=np.arange(4), x_test=np.ones((2, 5)), y_test=np.arange(2))
    assert load_npz(path).input_shape == (5,)


def test_npz_missing_key_names_the_key_and_what_is_needed(tmp_path):
    path = _write_npz(tmp_path / "bad.npz", x_train=np.ones((4, 5)), y_train=np.arange(4), x_test=np.ones((2, 5)))
    with pytest.raises(ValueError, match=r"lacks \['y_test'\].*x_train, y_train, x_test, y_test"):
        load_npz(path)


def test_npz_length_mismatch_and_float_labels_are_refused(tmp_path):
    path = _write_npz(tmp_path / "len.npz", x_train=np.ones((4, 5)), y_train=np.arange(3), x_test=np.ones((2, 5)), y_test=np.arange(2))
    with pytest.raises(ValueError, match="lengths differ"):
        load_npz(path)
    path = _write_npz(tmp_path / "lab.npz", x_train=np.ones((4, 5)), y_train=np.ones(4), x_test=np.ones((2, 5)), y_test=np.ones(2))
    with pytest.raises(ValueError, match="labels must be integers"):
        load_npz(path)


def test_a_file_that_is_not_an_npz_is_refused_clearly(tmp_path):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"this is not a zip archive")
    with pytest.raises(ValueError, match="broken.npz is not a readable .npz"):
        load_npz(path)
    with pytest.raises(FileNotFoundError, match="nothere.npz not found"):
        load_npz(tmp_path / "nothere.npz")


# ---------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------


def _train(optimizer_factory, steps=25, boundary_at=None):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    optimizer = optimizer_factory(model.parameters())
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        x, y = torch.randn(16, 6, generator=generator), torch.randint(0, 3, (16,), generator=generator)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if step == boundary_at and hasattr(optimizer, "task_boundary"):
            optimizer.task_boundary()
    return model, optimizer


def test_gated_adam_with_zero_gate_is_adam_even_across_boundaries():
    adam, _ = _train(lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3))
    gated, _ = _train(lambda p: GatedAdam(p, lr=1e-2, weight_decay=1e-3, gate=0.0), boundary_at=10)
    for a, g in zip(adam.parameters(), gated.parameters()):
        torch.testing.assert_close(g, a, rtol=1e-6, atol=1e-7)


def test_gated_adam_importance_averages_one_per_boundary_and_slows_the_step():
    _, optimizer = _train(lambda p: GatedAdam(p, lr=1e-2, gate=1.0), steps=12, boundary_at=10)
    for state in optimizer.state.values():
        assert float(state["importance"].mean()) == pytest.approx(1.0, rel=1e-5)
    free, _ = _train(lambda p: GatedAdam(p, lr=1e-2, gate=0.0), steps=12, boundary_at=10)
    gated, _ = _train(lambda p: GatedAdam(p, lr=1e-2, gate=10.0), steps=12, boundary_at=10)
    reference, _ = _train(lambda p: GatedAdam(p, lr=1e-2, gate=0.0), steps=11)
    moved_free = sum(float((a - b).detach().abs().sum()) for a, b in zip(free.parameters(), reference.parameters()))
    moved_gated = sum(float((a - b).detach().abs().sum()) for a, b in zip(gated.parameters(), reference.parameters()))
    assert moved_gated < moved_free


def test_gated_adam_validates_its_arguments():
    with pytest.raises(ValueError, match="Invalid gate value: -1"):
        GatedAdam([torch.zeros(2, requires_grad=True)], gate=-1.0)
    with pytest.raises(ValueError, match="Invalid learning rate"):
        GatedAdam([torch.zeros(2, requires_grad=True)], lr=-1.0)


def _two_task_stream():
    rng = np.random.default_rng(0)
    tasks = []
    for t in range(2):
        x = rng.normal(size=(64, 6)).astype(np.float32)
        y = (x[:, t] > 0).astype(np.int64)
        tasks.append(Task(x, y, x, y, None))
    return Stream("toy", "domain", tuple(tasks), 2, (6,))


def test_ewc_penalty_is_zero_before_the_first_boundary_and_positive_after():
    stream = _two_task_stream()
    model = make_model("mlp", (6,), 2, seed=0, width=8, depth=1)
    ewc = EWC(lam=10.0, fisher_samples=32)
    assert ewc.penalty(model).item() == 0.0
    ewc.on_task_end(model, stream.tasks[0])
    assert ewc.penalty(model).item() == 0.0  # at the anchor
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    result = run_stream(model, optimizer, stream, iters=20, seed=0, penalty=ewc.penalty, on_task_end=ewc.on_task_end)
    assert len(ewc.consolidated) == 2  # the explicit call above and the stream's one boundary
    assert ewc.penalty(model).item() > 0.0
    assert result.R.shape == (2, 2)
    with pytest.raises(ValueError, match="Invalid EWC lambda"):
        EWC(lam=-1.0)


def test_run_stream_on_step_sees_every_step():
    stream = _two_task_stream()
    model = make_model("mlp", (6,), 2, seed=0, width=8, depth=1)
    seen = []
    run_stream(model, torch.optim.SGD(model.parameters(), lr=0.1), stream, iters=5, seed=0, on_step=lambda k, m: seen.append(k))
    assert seen == list(range(1, 11))


# ---------------------------------------------------------------------------------------------
# `lto bench` smoke runs
# ---------------------------------------------------------------------------------------------


def _invoke(args):
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_bench_cl_quick_writes_json_table_and_plots(tmp_path):
    out = tmp_path / "cl"
    output = _invoke(
        ["bench", "cl", "--data", "digits", "--stream", "split", "--tasks", "3", "--iters", "15", "--seeds", "2",
         "--eval-every", "5", "--optimizers", "sgd,adam,ewc,gated-adam,lto", "--quick", "--out", str(out)]
    )
    assert "| `gated-adam` |" in output
    payload = json.loads((out / "results.json").read_text())
    assert payload["complete"] is True
    assert set(payload["summary"]) == {"sgd", "adam", "ewc", "gated-adam", "lto"}
    assert len(payload["records"]) == 10
    record = payload["records"][0]
    for key in ("optimizer", "seed", "R", "b", "ACC", "BWT", "FWT", "losses", "seconds", "curve"):
        assert key in record
    assert np.asarray(record["R"]).shape == (3, 3) and len(record["losses"]) == 3 * 15
    assert record["ACC"] == pytest.approx(average_accuracy(record["R"]), abs=1e-4)  # R is stored rounded
    assert set(payload["summary"]["ewc"]) == {"ACC", "BWT", "FWT", "seconds", "boundaries_found"}
    # same init and same batches: the packaged LTO file may be Adam-equivalent, so only the
    # shared starting point is asserted, which holds whatever the file is
    b = {r["optimizer"]: r["b"] for r in payload["records"] if r["seed"] == 0}
    assert all(v == b["adam"] for v in b.values())
    assert "| ACC |" in (out / "results.md").read_text()
    for name in ("heatmaps.png", "task_accuracy.png", "loss.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_cl_resume_reuses_finished_runs(tmp_path):
    args = ["bench", "cl", "--tasks", "2", "--iters", "5", "--seeds", "1", "--optimizers", "sgd", "--quick", "--out", str(tmp_path)]
    _invoke(args)
    first = json.loads((tmp_path / "results.json").read_text())["records"]
    _invoke(args + ["--resume"])
    assert json.loads((tmp_path / "results.json").read_text())["records"] == first
    result = CliRunner().invoke(main, args[:-2] + ["--sgd-lr", "0.5", "--out", str(tmp_path), "--resume"])
    assert result.exit_code != 0 and "different configuration" in str(result.exception)


def test_bench_without_matplotlib_still_writes_json_and_table(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    output = _invoke(["bench", "cl", "--tasks", "2", "--iters", "5", "--seeds", "1", "--optimizers", "adam", "--quick", "--out", str(tmp_path)])
    assert "matplotlib is not installed" in output
    payload = json.loads((tmp_path / "results.json").read_text())
    assert "plots_skipped" in payload and (tmp_path / "results.md").exists()
    assert not (tmp_path / "heatmaps.png").exists()


def test_bench_cl_rejects_bad_input_with_the_fix(tmp_path):
    result = CliRunner().invoke(main, ["bench", "cl", "--optimizers", "adam,rmsprop", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "rmsprop" in result.output and "gated-adam" in result.output
    result = CliRunner().invoke(main, ["bench", "cl", "--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path)])
    assert result.exit_code == 2 and "missing.npz not found" in result.output
    result = CliRunner().invoke(main, ["bench", "cl", "--tasks", "11", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "needs at least 11 classes" in result.output


def test_bench_cl_on_a_user_npz(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4, 4)).astype(np.float32)
    y = rng.integers(0, 4, size=120)
    path = _write_npz(tmp_path / "mine.npz", x_train=x[:90], y_train=y[:90], x_test=x[90:], y_test=y[90:])
    out = tmp_path / "out"
    _invoke(["bench", "cl", "--data", str(path), "--stream", "permuted", "--scenario", "domain", "--tasks", "2",
             "--iters", "5", "--seeds", "1", "--optimizers", "adam,gated-adam", "--quick", "--out", str(out)])
    assert json.loads((out / "results.json").read_text())["config"]["data"] == str(path)


def test_bench_train_quick(tmp_path):
    output = _invoke(["bench", "train", "--quick", "--iters", "30", "--optimizers", "sgd,adam,lto", "--out", str(tmp_path)])
    assert "| `lto` |" in output
    payload = json.loads((tmp_path / "results.json").read_text())
    assert set(payload["summary"]) == {"sgd", "adam", "lto"}
    for key in ("test_accuracy", "test_loss", "train_loss", "seconds", "losses", "curve"):
        assert key in payload["records"][0]
    assert payload["records"][0]["curve"]["steps"][-1] == 30
    assert (tmp_path / "curves.png").exists() and (tmp_path / "results.md").exists()


def test_bench_speed_quick(tmp_path):
    output = _invoke(["bench", "speed", "--quick", "--sizes", "2e3", "--repeats", "2", "--threads", "1", "--no-memory", "--iteration", "mlp", "--out", str(tmp_path)])
    assert "lto-onnx / adam = " in output and "(target <= 3)" in output and "lto-torch / adam = " in output
    assert "onnxruntime intra-op threads: 1;" in output  # --threads reaches LTO's session too
    payload = json.loads((tmp_path / "results.json").read_text())
    assert {r["optimizer"] for r in payload["records"]} == {"lto-onnx", "lto-torch", "adam", "adam-foreach", "sgd"}
    for record in payload["records"]:
        for key in ("median_ms", "mean_ms", "min_ms", "max_ms", "ratio_to_reference", "params_per_second", "extra_memory_mib", "state_memory_mib"):
            assert key in record
        assert len(record["times_s"]) == 2 and record["size"] == 2000
    assert next(r for r in payload["records"] if r["optimizer"] == "adam")["ratio_to_reference"] == 1.0
    # --iteration mlp: a whole training iteration of the 784-400-400-10 MLP per optimizer
    iterations = {r["optimizer"]: r for r in payload["iteration"]}
    assert set(iterations) == {"lto-onnx", "lto-torch", "adam", "adam-foreach", "sgd"}
    assert iterations["adam"]["ratio_to_reference"] == 1.0 and all(r["median_ms"] > 0 for r in iterations.values())
    assert "Whole training iteration" in (tmp_path / "results.md").read_text()


def test_bench_speed_after_a_boundary_times_the_consolidating_step_and_compares_means(tmp_path):
    """--after-boundary: the timed steps follow task_boundary(), so they include the rare
    consolidating and refreshing steps, which a median would hide: ratios are of mean times."""
    output = _invoke(["bench", "speed", "--sizes", "2e3", "--repeats", "12", "--threads", "1", "--no-memory",
                      "--optimizers", "adam,lto-onnx", "--after-boundary", "--out", str(tmp_path)])
    assert "| mean ms |" in output
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["config"]["after_boundary"] is True
    rows = {r["optimizer"]: r for r in payload["records"]}
    assert rows["lto-onnx"]["ratio_to_reference"] == pytest.approx(rows["lto-onnx"]["mean_ms"] / rows["adam"]["mean_ms"])
    assert len(rows["lto-onnx"]["times_s"]) == 12


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="peak memory is read from Linux's /proc")
def test_bench_speed_measures_memory_in_a_fresh_process(tmp_path):
    _invoke(["bench", "speed", "--sizes", "2e3", "--repeats", "1", "--threads", "1", "--optimizers", "adam,lto-onnx", "--out", str(tmp_path)])
    records = {r["optimizer"]: r for r in json.loads((tmp_path / "results.json").read_text())["records"]}
    assert records["adam"]["state_memory_mib"] == pytest.approx(2 * 2000 * 4 / 2**20)  # exp_avg, exp_avg_sq
    # m, v, importance, anchor per element; 3 coefficients per token of the 4 one-window tensors
    assert records["lto-onnx"]["state_memory_mib"] == pytest.approx((4 * 2000 + 4 * 16 * 3) * 4 / 2**20)
    assert all(isinstance(r["extra_memory_mib"], float) for r in records.values())
