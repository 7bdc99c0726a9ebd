"""``lto bench plot``: ACC and BWT of several ``lto bench cl`` runs in one figure, and the paths
``lto bench`` prints and records (relative to the working directory, never the machine's)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import pytest
from click.testing import CliRunner

from lto_export.cli import main


def test_bench_plot_draws_runs_that_name_the_packaged_file_relatively(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from lto_runtime import default_model_path

    # From the folder that holds the installed packages, the file is named relative to it.
    monkeypatch.chdir(default_model_path().parents[2])
    args = ["bench", "cl", "--tasks", "2", "--iters", "4", "--seeds", "1", "--optimizers", "adam,lto"]
    result = CliRunner().invoke(main, [*args, "--eval-every", "2", "--out", str(tmp_path / "split")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    expected = os.path.join("lto_runtime", "models", "default.onnx")
    assert result.output.startswith(f"LTO optimizer: {expected}, NOT meta-trained")
    notes = json.loads((tmp_path / "split" / "results.json").read_text())["config"]["notes"]
    assert notes["lto_file"] == expected

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["bench", "plot", "split", "split/results.json", "--out", "summary.png"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "wrote summary.png"
    assert (tmp_path / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_plot_refuses_what_is_not_a_finished_cl_run(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps({"config": {"benchmark": "train"}, "records": []}))
    result = CliRunner().invoke(main, ["bench", "plot", str(tmp_path), "--out", str(tmp_path / "s.png")])
    assert result.exit_code != 0
    assert "is not the results.json of a finished `lto bench cl` run" in result.output
    assert not (tmp_path / "s.png").exists()
