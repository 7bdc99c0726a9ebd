"""The runtime binds the caller's buffers in place (zero copy), on one device, and picks providers.

The CPU path runs here for real; the CUDA test needs onnxruntime-gpu, a GPU and torch with CUDA,
and is skipped otherwise.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import digits_batches, digits_mlp, flat_params, outputs_like, train
from lto_adapters.numpy import LTO as NumpyLTO
from lto_adapters.torch import LTO as TorchLTO
from lto_core.checkpoint import load_checkpoint
from lto_export.cli import main
from lto_export.onnx_export import example_inputs
from lto_runtime import STATE_NAMES, OptimizerSession, StepEngine, cuda_status, hyper_row, resolve_providers
from lto_runtime._torch_engine import TorchBuffers
from lto_runtime.format import INPUT_NAMES, OUTPUT_NAMES


@pytest.fixture(scope="module")
def session_and_inputs(random_head_files):
    """A session over a file whose network really acts, and well-formed inputs for 3 windows."""
    checkpoint, onnx_path = random_head_files
    graph, _ = load_checkpoint(checkpoint)
    inputs = dict(zip(INPUT_NAMES, (np.ascontiguousarray(x.numpy()) for x in example_inputs(graph, 3, seed=0))))
    return OptimizerSession(onnx_path), inputs


def _reference(session: OptimizerSession, inputs: dict) -> dict[str, np.ndarray]:
    """onnxruntime's ordinary copying ``run``, as the reference for the bound path."""
    return dict(zip(OUTPUT_NAMES, session.session.run(None, {k: v.copy() for k, v in inputs.items()})))


_outputs_like = outputs_like


def test_outputs_are_written_into_the_callers_arrays(session_and_inputs):
    session, inputs = session_and_inputs
    outputs = _outputs_like(inputs)
    addresses = {k: v.ctypes.data for k, v in outputs.items()}
    session.run(inputs, outputs)
    expected = _reference(session, inputs)
    for key in outputs:
        assert outputs[key].ctypes.data == addresses[key]
        np.testing.assert_array_equal(outputs[key], expected[key])


def test_inputs_are_read_from_the_callers_memory_at_run_time(session_and_inputs):
    """Mutating the very array between two runs changes the result: the binding reads that memory."""
    session, inputs = session_and_inputs
    grad = inputs["grad"].copy()
    feeds = {**inputs, "grad": grad}
    first = _outputs_like(inputs)
    session.run(feeds, first)
    grad *= -3.0
    second = _outputs_like(inputs)
    session.run(feeds, second)
    np.testing.assert_array_equal(second["update"], _reference(session, feeds)["update"])
    assert not np.allclose(first["update"], second["update"])


def test_views_bind_their_own_address_and_neighbours_stay_untouched(session_and_inputs):
    """Inputs and outputs that are views into larger buffers: the run reads and writes exactly the
    view's memory, so no copy of the view was made on either side."""
    session, inputs = session_and_inputs
    big_grad = np.random.default_rng(0).normal(size=(5, *inputs["grad"].shape[1:])).astype(np.float32)
    big_grad[1:4] = inputs["grad"]
    big_update = np.full((5, *inputs["grad"].shape[1:]), 7.0, np.float32)
    outputs = {**outputs_like(inputs), "update": big_update[1:4]}
    session.run({**inputs, "grad": big_grad[1:4]}, outputs)
    np.testing.assert_array_equal(big_update[1:4], _reference(session, inputs)["update"])
    assert (big_update[0] == 7.0).all() and (big_update[4] == 7.0).all()


def test_torch_cpu_tensors_bind_without_copies(session_and_inputs):
    session, inputs = session_and_inputs
    tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
    outputs = {k: torch.from_numpy(v) for k, v in outputs_like(inputs).items()}
    pointer = outputs["update"].data_ptr()
    session.run(tensors, outputs)
    assert outputs["update"].data_ptr() == pointer
    np.testing.assert_array_equal(outputs["update"].numpy(), _reference(session, inputs)["update"])


@pytest.mark.parametrize(
    "name,bad,match",
    [
        ("grad", lambda a: a.astype(np.float64), r"'grad' is float64"),
        ("param", np.asfortranarray, r"'param' is float32, contiguous=False"),
        ("mask", lambda a: a.tolist(), r"'mask' is a list"),
    ],
)
def test_unbindable_buffers_are_refused_and_nothing_is_written(session_and_inputs, name, bad, match):
    session, inputs = session_and_inputs
    feeds = {**inputs, name: bad(inputs[name])}
    outputs = _outputs_like(inputs)
    with pytest.raises((TypeError, ValueError), match=match):
        session.run(feeds, outputs)
    assert np.isnan(outputs["update"]).all()


def test_a_buffer_on_another_device_is_refused(session_and_inputs):
    session, inputs = session_and_inputs
    with pytest.raises(ValueError, match=r"'grad' lives on DLPack device \(1, 0\), but this run binds cuda:0"):
        session.run(inputs, _outputs_like(inputs), device_type="cuda")
    with pytest.raises(ValueError, match=r"device_type must be one of"):
        session.run(inputs, _outputs_like(inputs), device_type="tpu")


def test_device_resident_engine_matches_the_host_engine(random_head_files):
    """The device-resident code path (torch buffers bound by data_ptr) run on the CPU device gives
    bit-identical updates, state and counters; on a GPU only the device string differs."""
    _, onnx_path = random_head_files
    session = OptimizerSession(onnx_path)
    shapes = [(40, 30), (30,), (3, 3, 8, 8), ()]
    host = StepEngine(session, shapes, max_batch_windows=2)
    resident = StepEngine(session.on_device("cpu"), shapes, max_batch_windows=2, buffers=TorchBuffers("cpu"))
    rng = np.random.default_rng(0)
    params = [rng.normal(size=s).astype(np.float32) for s in shapes]
    tensors = [torch.from_numpy(p.copy()) for p in params]
    hyper = np.tile(hyper_row(1e-2, (0.9, 0.999), 1e-8, 0.0), (len(shapes), 1))

    def add_to(targets):
        def apply(i, start, stop, update):
            targets[i].reshape(-1)[start:stop] += update
        return apply

    for step in range(6):
        grads = [rng.normal(size=s).astype(np.float32) for s in shapes]
        if step == 2:
            host.task_boundary(), resident.task_boundary()
        assert host.step(grads, params, hyper, add_to(params)) == []
        assert resident.step([torch.from_numpy(g) for g in grads], tensors, hyper, add_to(tensors)) == []
    assert isinstance(resident._state[0]["exp_avg"], torch.Tensor)
    assert np.abs(host.tensor_state(0)["coefficients"]).max() > 0  # the network ran after the boundary
    for i in range(len(shapes)):
        np.testing.assert_array_equal(tensors[i].numpy(), params[i])
        a, b = host.tensor_state(i), resident.tensor_state(i)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    ones = {n: np.ones(30, np.float32) for n in STATE_NAMES}
    resident.set_tensor_state(1, host.tensor_state(0) | ones | {"coefficients": np.zeros((16, 3), np.float32)})
    assert (resident.tensor_state(1)["exp_avg"] == 1.0).all()
    nan = [torch.from_numpy(g) for g in grads]
    nan[2][0, 0, 0, 0] = float("nan")
    before = [t.clone() for t in tensors]
    assert resident.step(nan, tensors, hyper, add_to(tensors)) == [2]
    assert all(torch.equal(a, b) for a, b in zip(before, tensors))


def test_resolve_providers():
    assert resolve_providers(None) == ["CPUExecutionProvider"]
    assert resolve_providers("auto")[-1] == "CPUExecutionProvider"
    with pytest.raises(ValueError, match="providers must be None, 'auto' or a list"):
        resolve_providers("cuda")
    with pytest.raises(ValueError, match="empty list"):
        resolve_providers([])
    with pytest.raises(ValueError, match=r"\['NoSuchExecutionProvider'\] are not available"):
        resolve_providers(["NoSuchExecutionProvider"])


def test_every_adapter_takes_auto_and_logs_the_provider_once(caplog):
    from lto_adapters.keras import LTO as KerasLTO

    expected = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda_status()[0] else ["CPUExecutionProvider"]
    makers = {
        "torch": lambda: TorchLTO(torch.nn.Linear(3, 2).parameters(), providers="auto"),
        "numpy": lambda: NumpyLTO({"w": np.zeros(3, np.float32)}, providers="auto"),
        "keras": lambda: KerasLTO(providers="auto"),
    }
    for name, make in makers.items():
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="lto_runtime"):
            opt = make()
        assert opt.runtime.providers == expected, name
        runs_on = [r for r in caplog.records if "runs on" in r.getMessage()]
        assert len(runs_on) == 1 and expected[0] in runs_on[0].getMessage(), name


def test_cuda_session_cannot_be_asked_for_without_cuda(session_and_inputs):
    session, _ = session_and_inputs
    if cuda_status()[0]:
        pytest.skip("CUDA loads here")
    with pytest.raises(ValueError, match="need a session on CUDA"):
        session.on_device("cuda", 0)


def test_doctor_reports_distribution_providers_and_cuda():
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    for text in ("from distribution: onnxruntime", "available providers:", "CPUExecutionProvider", "CUDA loads:", "providers='auto' runs on:"):
        assert text in result.output


@pytest.mark.skipif(not (torch.cuda.is_available() and cuda_status()[0]), reason="needs onnxruntime-gpu, a GPU and torch with CUDA")
def test_cuda_tensors_step_on_the_device_and_match_the_cpu():
    cpu_model, gpu_model = digits_mlp(), digits_mlp().cuda()
    cpu_opt = TorchLTO(cpu_model.parameters(), lr=3e-3)
    gpu_opt = TorchLTO(gpu_model.parameters(), lr=3e-3, providers="auto")
    assert gpu_opt.runtime.providers[0] == "CUDAExecutionProvider"
    assert isinstance(gpu_opt.engine.buffers, TorchBuffers)
    assert all(slot.device.type == "cuda" for state in gpu_opt.engine._state for slot in state.values())
    train(cpu_model, cpu_opt, 20)
    for x, y in digits_batches(20):
        gpu_opt.zero_grad()
        torch.nn.functional.cross_entropy(gpu_model(x.cuda()), y.cuda()).backward()
        gpu_opt.step()
    torch.testing.assert_close(flat_params(gpu_model).cpu(), flat_params(cpu_model), atol=1e-4, rtol=1e-4)
