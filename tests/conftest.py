"""Shared fixtures: environment for onnxruntime and Keras, and optimizer files made for tests."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("KERAS_BACKEND", "torch")
if "KERAS_HOME" not in os.environ:
    # Keras writes keras.json into its home when imported: a throwaway one keeps ~/.keras untouched.
    # Set before any test module imports Keras, removed when the run ends.
    _keras_home = tempfile.mkdtemp(prefix="lto-keras-home-")
    os.environ["KERAS_HOME"] = _keras_home
    atexit.register(shutil.rmtree, _keras_home, ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def one_torch_thread():
    """One torch thread: the models are tiny, and on a busy 2-core machine a second OpenMP
    thread makes every element-wise op wait for a core. Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _export_pair(directory, graph, name: str, meta: dict):
    from lto_core.checkpoint import save_checkpoint
    from lto_export.onnx_export import export_onnx

    checkpoint = save_checkpoint(graph, directory / name, meta)
    return checkpoint, export_onnx(directory / f"{name}.onnx", checkpoint)


@pytest.fixture(scope="session")
def zero_head_files(tmp_path_factory):
    """(checkpoint, onnx) of a zero-head network: the step is exactly Adam."""
    from lto_core.step import StepGraph

    torch.manual_seed(0)
    return _export_pair(tmp_path_factory.mktemp("zero"), StepGraph(), "zero", {"meta_trained": False})


@pytest.fixture(scope="session")
def random_head_files(tmp_path_factory):
    """(checkpoint, onnx) of a network whose head is random, so every part of the graph matters."""
    from lto_core.step import StepGraph

    torch.manual_seed(1)
    graph = StepGraph()
    with torch.no_grad():
        graph.network.out.weight.normal_(0.0, 0.5)
        graph.network.out.bias.normal_(0.0, 0.5)
    return _export_pair(tmp_path_factory.mktemp("random"), graph, "random", {"meta_trained": False, "note": "test"})
