"""scripts/protection_headroom.py with ``--baselines``: a baseline trains the very problem the
hand-set rows train (so its ``adam`` is the ``0:0`` row's Adam), its penalty acts, and ``score``
compares it with Adam or compares the rows with it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "protection_headroom.py"
spec = importlib.util.spec_from_file_location("protection_headroom", SCRIPT)
headroom = importlib.util.module_from_spec(spec)
spec.loader.exec_module(headroom)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Two-problem populations of a two-task split-digits MLP stream, 30 steps per task.
TINY = {"family": {"data": ["digits"], "streams": ["split"], "scenarios": ["task"], "archs": ["mlp"], "tasks": [2, 2],
                   "steps_per_task": [30, 30], "widths": [32], "depths": [1, 1]}}


def _headroom(monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["protection_headroom.py", *argv])
    headroom.main()


def test_baselines_train_the_same_problems_and_are_scored_against_adam(tmp_path, monkeypatch, capsys):
    config, out = tmp_path / "config.json", tmp_path / "h.json"
    config.write_text(json.dumps(TINY))
    _headroom(monkeypatch, "run", "--config", str(config), "--populations", "1", "--size", "2", "--settings", "0:0,0:1",
              "--baselines", "adam,online-ewc:1e6", "--out", str(out))
    doc = json.loads(out.read_text())
    assert doc["baselines"] == ["adam", "online-ewc:1e+06"]
    acc, bwt = doc["records"][0]["acc"], doc["records"][0]["bwt"]
    assert len(acc) == len(bwt) == 4 and all(len(row) == 2 for row in acc)
    # The baseline path's Adam is run_population's Adam on each problem (same data, weights, batches, rate).
    assert acc[2] == pytest.approx(acc[0], abs=1e-12) and bwt[2] == pytest.approx(bwt[0], abs=1e-12)
    # The penalty acts: Adam forgets the first task, a strong online EWC holds it where it ended.
    assert min(bwt[0]) < -0.03 and max(abs(b) for b in bwt[3]) < 0.01

    _headroom(monkeypatch, "score", str(out))
    text = capsys.readouterr().out
    assert "online-ewc:1e+06" in text.split("best single row")[0]
    assert "paired difference from Adam per kind" in text

    _headroom(monkeypatch, "score", str(out), "--against", "online-ewc:1e+06")
    rows = capsys.readouterr().out.splitlines()
    assert rows[4].startswith("  online-ewc:1e+06: ") and "vs online-ewc:1e+06 +0.0000 +- 0.0000" in rows[4]


def test_baselines_are_named_with_their_lambda_and_bad_names_are_refused():
    assert headroom._baselines("adam, online-ewc,ewc:10") == ["adam", f"online-ewc:{headroom.EWC_LAMBDA:g}", "ewc:10"]
    for bad in ("sgd", "adam:1", "ewc:x", "online-ewc:-1"):
        with pytest.raises(SystemExit, match="--baselines"):
            headroom._baselines(bad)


def test_default_lambda_is_lto_bench_cls():
    from lto_export.bench_cli import cl

    assert headroom.EWC_LAMBDA == next(p.default for p in cl.params if p.name == "ewc_lambda")


def test_a_checkpoint_row_trains_the_problems_as_the_hand_set_rows_do(tmp_path, monkeypatch, capsys):
    """A saved network of the hand-set gate reproduces that gate's row exactly: the same problems,
    the same path; a missing checkpoint stops the run before anything trains or is written."""
    from lto_core.checkpoint import save_checkpoint
    from lto_core.evaluation import hand_set_graph
    from lto_core.meta_train import MetaTrainConfig

    config, out = tmp_path / "config.json", tmp_path / "h.json"
    config.write_text(json.dumps(TINY))
    saved = save_checkpoint(hand_set_graph(MetaTrainConfig().network, 8.0), tmp_path / "gate8", {"meta_trained": False})
    _headroom(monkeypatch, "run", "--config", str(config), "--populations", "1", "--size", "2", "--settings", "0:0,8:0",
              "--checkpoint", str(saved), "--baselines", "adam", "--out", str(out))
    doc = json.loads(out.read_text())
    assert doc["checkpoints"] == [str(saved)] and doc["baselines"] == ["adam"]
    acc = doc["records"][0]["acc"]
    assert len(acc) == 4 and acc[2] == acc[1] and acc[2] != acc[0]

    _headroom(monkeypatch, "score", str(out), "--against", str(saved))
    text = capsys.readouterr().out
    rows = text.split("ACC and BWT per row", 1)[1].splitlines()[1:5]  # the run's own lines come before
    assert [row.split(":")[0].strip() for row in rows] == ["beta 0 rho 0", "beta 8 rho 0", str(saved), "adam"]
    assert f"vs {saved} +0.0000 +- 0.0000" in rows[1] and f"vs {saved} +0.0000 +- 0.0000" in rows[2]

    with pytest.raises(SystemExit, match=r"--checkpoint .*missing.*not found"):
        _headroom(monkeypatch, "run", "--config", str(config), "--populations", "1", "--size", "2",
                  "--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "never.json"))
    assert not (tmp_path / "never.json").exists()
