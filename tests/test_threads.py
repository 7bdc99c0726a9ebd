"""Threads: onnxruntime's pools default to one thread, and their threads stop spinning when a step
returns; the CLI's --threads sets torch's threads and LTO's session from one option."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import lto_export.bench_cli as bench_cli
from lto_export.cli import main
from lto_runtime import OptimizerSession


@pytest.fixture
def torch_threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_session_defaults_to_one_thread_and_stops_spinning_between_steps():
    options = OptimizerSession().session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.inter_op_num_threads == 1
    # Spinning between a step's operators, never after the step returns (torch's turn).
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"


def test_zero_threads_is_onnxruntimes_default():
    assert OptimizerSession(threads=0).session.get_session_options().intra_op_num_threads == 0


@pytest.mark.parametrize("threads", [1, 2])
def test_bench_threads_set_torch_and_the_lto_session(threads, tmp_path, monkeypatch, torch_threads_restored):
    sessions = []
    real_build = bench_cli.build_optimizer

    def build_and_record(name, params, **kwargs):
        optimizer = real_build(name, params, **kwargs)
        if name == "lto":
            sessions.append(optimizer.runtime.session.get_session_options().intra_op_num_threads)
        return optimizer

    monkeypatch.setattr(bench_cli, "build_optimizer", build_and_record)
    args = ["bench", "train", "--optimizers", "adam,lto", "--seeds", "1", "--iters", "4", "--threads", str(threads), "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "results.json").read_text())["environment"]["torch_threads"] == threads
    assert sessions == [threads]


def test_threads_must_be_a_count(tmp_path):
    result = CliRunner().invoke(main, ["bench", "cl", "--threads", "-1", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "--threads" in result.output
