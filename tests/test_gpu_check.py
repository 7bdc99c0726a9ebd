"""scripts/gpu_check.py on the CPU: the no-GPU message, its arguments, and its parity and timing
functions on CPU tensors (the GPU checks themselves need a GPU)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import pytest
import torch
from click.testing import CliRunner

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

needs_no_gpu = pytest.mark.skipif(gpu_check.no_gpu_reason() is None, reason="a usable GPU is here: the script runs its checks")


#: These models are tiny: one torch thread (see conftest.one_torch_thread).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@needs_no_gpu
def test_without_a_gpu_it_says_so_and_exits_2_or_0_when_allowed(tmp_path):
    result = CliRunner().invoke(gpu_check.main, ["--out", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.startswith("GPU check not run: ")
    assert gpu_check.no_gpu_reason() in result.output
    allowed = CliRunner().invoke(gpu_check.main, ["--allow-no-gpu", "--out", str(tmp_path)])
    assert allowed.exit_code == 0 and "GPU check not run" in allowed.output
    assert not (tmp_path / "report.json").exists()


def test_the_no_gpu_reason_names_what_is_missing_and_the_fix():
    reason = gpu_check.no_gpu_reason()
    if reason is None:
        pytest.skip("torch sees a GPU and onnxruntime has CUDA")
    if not torch.cuda.is_available():
        assert "torch.cuda.is_available() is False" in reason
    else:
        assert "pip uninstall -y onnxruntime && pip install onnxruntime-gpu" in reason


def test_bad_arguments_are_refused_with_the_option_named(tmp_path):
    result = CliRunner().invoke(gpu_check.main, ["--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--device" in result.output and "not a CUDA device" in result.output
    result = CliRunner().invoke(gpu_check.main, ["--sizes", "1e7,lots", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--sizes" in result.output and "comma-separated" in result.output
    result = CliRunner().invoke(gpu_check.main, ["--knowledge-size", "huge", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "large" in result.output


def test_the_backends_agree_on_cpu_tensors():
    assert gpu_check.session_providers("cpu") == ["CPUExecutionProvider"]
    assert gpu_check.backend_parity("cpu", steps=24, size=5000) <= gpu_check.PARITY_TOLERANCE


def test_step_times_on_cpu_tensors():
    times = gpu_check.step_times(20_000, "cpu", repeats=2)
    assert times["lto_ms"] > 0 and times["adam_fused_ms"] > 0
    assert times["ratio"] == pytest.approx(times["lto_ms"] / times["adam_fused_ms"])


def test_host_copies_are_counted_on_a_cuda_device_only():
    with pytest.raises(ValueError, match="host copies are counted on a CUDA device, not 'cpu'"):
        gpu_check.host_copies(1000, "cpu")


def test_the_host_copy_criterion():
    copies = {
        "per_step": {"HtoD": {"count": 2, "bytes": 400}, "DtoH": {"count": 1, "bytes": 4}, "DtoD": {"count": 0, "bytes": 0}},
        "largest_host_copy_bytes": 400,
        "parameter_bytes": 4 * 10**6,
        "smallest_tensor_bytes": 4 * 10**5,
    }
    assert gpu_check.host_copies_pass(copies)
    copied_a_gradient = dict(copies, largest_host_copy_bytes=4 * 10**5)
    assert not gpu_check.host_copies_pass(copied_a_gradient)
    too_much = dict(copies, per_step={**copies["per_step"], "DtoH": {"count": 9, "bytes": 10**5}})
    assert not gpu_check.host_copies_pass(too_much)
