"""The lto command line: export -> validate, inspect, demo."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import torch
from click.testing import CliRunner

from lto_export.cli import main


def test_export_validates_and_is_reproducible_and_free_of_build_paths(tmp_path):
    import onnx

    import lto_export

    runner = CliRunner()
    first, second = tmp_path / "a" / "x.onnx", tmp_path / "b" / "x.onnx"
    for out in (first, second):
        result = runner.invoke(main, ["export", "--out", str(out)])
        assert result.exit_code == 0, result.output
    assert first.read_bytes() == second.read_bytes()
    assert str(Path(lto_export.__file__).parent.parent).encode() not in first.read_bytes()
    model = onnx.load(str(first))
    assert not any(node.metadata_props for node in model.graph.node)
    assert {p.key for p in model.metadata_props} >= {"lto.format", "lto.meta_train", "lto.checkpoint_sha256"}
    result = runner.invoke(main, ["validate", str(first), "--steps", "20"])
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output


def test_validate_fails_against_the_wrong_checkpoint(random_head_files, zero_head_files):
    result = CliRunner().invoke(main, ["validate", str(random_head_files[1]), "--checkpoint", str(zero_head_files[0]), "--steps", "10"])
    assert result.exit_code == 1
    assert "FAIL" in result.output


def test_validate_without_checkpoint_asks_for_the_one_the_file_was_made_from(random_head_files):
    result = CliRunner().invoke(main, ["validate", str(random_head_files[1]), "--steps", "10"])
    assert result.exit_code == 2
    assert "--checkpoint" in result.output and "not the packaged default" in result.output
    result = CliRunner().invoke(main, ["validate", str(random_head_files[1]), "--checkpoint", str(random_head_files[0]), "--steps", "10"])
    assert result.exit_code == 0, result.output


def test_inspect_reports_metadata_io_and_providers():
    result = CliRunner().invoke(main, ["inspect"])
    assert result.exit_code == 0, result.output
    for text in ("lto.format: 2", "lto.meta_train", "input grad", "output refreshed_coefficients", "CPUExecutionProvider", "KiB"):
        assert text in result.output
    assert "meta-trained" in result.output


def test_inspect_refuses_a_bad_file(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_text("nope")
    result = CliRunner().invoke(main, ["inspect", str(bad)])
    assert result.exit_code == 2
    assert "bad.onnx" in result.output


def test_export_gate_init_as_default_removes_its_scratch_checkpoint(tmp_path, monkeypatch):
    import lto_export.onnx_export as onnx_export

    from lto_core.checkpoint import load_checkpoint

    installed = []

    def install_elsewhere(checkpoint):
        """The real install_default would overwrite the packaged default; exporting is tested above."""
        graph, meta_train = load_checkpoint(checkpoint)
        installed.append((Path(checkpoint), meta_train, graph.network.out.bias.detach().clone()))
        return Path(shutil.copy(checkpoint, tmp_path))

    monkeypatch.setattr(onnx_export, "install_default", install_elsewhere)
    result = CliRunner().invoke(main, ["export", "--gate-init", "0", "--as-default"])
    assert result.exit_code == 0, result.output
    assert len(installed) == 1
    checkpoint, meta_train, bias = installed[0]
    assert meta_train["gate_init"] == 0.0 and not bias.any()  # gate 0: the zero head, Adam
    assert not checkpoint.parent.exists()


def test_export_pull_init_writes_a_hand_set_file_and_needs_gate_init(tmp_path):
    from lto_runtime.optimizer_file import read_optimizer_file

    result = CliRunner().invoke(main, ["export", "--gate-init", "0", "--pull-init", "1", "--out", str(tmp_path / "pull.onnx")])
    assert result.exit_code == 0, result.output
    assert read_optimizer_file(tmp_path / "pull.onnx")[1].meta_train["pull_init"] == 1.0
    alone = CliRunner().invoke(main, ["export", "--pull-init", "1", "--out", str(tmp_path / "x.onnx")])
    assert alone.exit_code == 2 and "--pull-init sets a fresh network" in alone.output and not (tmp_path / "x.onnx").exists()


def test_demo_prints_acc_and_bwt_for_both():
    before = torch.get_num_threads()
    try:
        result = CliRunner().invoke(main, ["demo", "--tasks", "2", "--quick"])
    finally:
        torch.set_num_threads(before)  # the demo sets its --threads (default 1) for the process
    assert result.exit_code == 0, result.output
    assert "2 task-incremental tasks, 50 steps each" in result.output
    lines = {line.split()[0]: line.split() for line in result.output.splitlines() if line.startswith(("Adam", "LTO"))}
    assert set(lines) == {"Adam", "LTO"}
    assert all(0.0 <= float(v[1]) <= 1.0 for v in lines.values())


def test_every_verb_has_help():
    runner = CliRunner()
    for verb in main.commands:
        result = runner.invoke(main, [verb, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_importing_the_cli_does_not_import_torch():
    """``lto --help`` and ``lto inspect`` need neither torch nor the exporter: the verbs that do import them."""
    code = "import sys, lto_export.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
