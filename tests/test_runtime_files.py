"""The runtime refuses bad optimizer files with an error naming the file and the reason."""

from __future__ import annotations

from collections import Counter

import onnx
import pytest

from lto_core.checkpoint import DEFAULT_CHECKPOINT, checkpoint_sha256
from lto_runtime import OptimizerFileError, OptimizerSession, default_model_path, read_optimizer_file


@pytest.fixture
def default_model():
    return onnx.load(str(default_model_path()))


def _save(model, path):
    onnx.save_model(model, str(path))
    return path


def _set_meta(model, key, value):
    for prop in model.metadata_props:
        if prop.key == key:
            if value is None:
                model.metadata_props.remove(prop)
            else:
                prop.value = value
            return model
    raise KeyError(key)


def test_default_file_loads_on_cpu():
    session = OptimizerSession()
    assert session.providers == ["CPUExecutionProvider"]
    assert session.spec.window * session.spec.chunk > 0


def test_default_file_records_how_it_was_made():
    """The packaged network is the hand-set start, importance-gated Adam of strength 2 (not yet
    meta-trained for the token-level step), and its ``lto.meta_train`` record says so."""
    _, spec = read_optimizer_file(default_model_path())
    assert not spec.meta_trained
    assert spec.meta_train["gate_init"] == 2.0
    assert spec.provenance.startswith("NOT meta-trained (importance-gated Adam, gate_init=2")
    assert spec.checkpoint_sha256 == checkpoint_sha256(DEFAULT_CHECKPOINT)


def _operator_counts(model: onnx.ModelProto) -> Counter:
    """How many nodes of each operator the graph holds, its branches' subgraphs included."""
    counts: Counter = Counter()

    def walk(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            counts[node.op_type] += 1
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    walk(attribute.g)

    walk(model.graph)
    return counts


def test_default_file_has_the_graph_this_code_exports(default_model, random_head_files):
    """The packaged file's operators are those a fresh export by this code gives (the fixture's
    network differs only in weights): a change to the step that adds operators to the ONNX graph
    (a loop-fusion hint meant for compiled torch, say) shows here."""
    fresh = onnx.load(str(random_head_files[1]))
    assert _operator_counts(fresh) == _operator_counts(default_model)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nowhere.onnx"):
        read_optimizer_file("/nowhere.onnx")


def test_not_onnx(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00\x01 definitely not protobuf" * 10)
    with pytest.raises(OptimizerFileError, match=r"junk\.onnx.*not a readable ONNX model"):
        read_optimizer_file(path)


def test_missing_format(default_model, tmp_path):
    path = _save(_set_meta(default_model, "lto.format", None), tmp_path / "nofmt.onnx")
    with pytest.raises(OptimizerFileError, match=r"nofmt\.onnx.*missing lto\.format"):
        read_optimizer_file(path)


def test_unknown_format(default_model, tmp_path):
    path = _save(_set_meta(default_model, "lto.format", "99"), tmp_path / "fmt99.onnx")
    with pytest.raises(OptimizerFileError, match=r"fmt99\.onnx.*unknown lto\.format '99'"):
        read_optimizer_file(path)


def test_external_data(default_model, tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save_model(default_model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.data", size_threshold=0)
    with pytest.raises(OptimizerFileError, match=r"ext\.onnx.*external data"):
        read_optimizer_file(path)


def test_checker_failure(default_model, tmp_path):
    default_model.graph.node[0].input[0] = "no_such_tensor"
    path = _save(default_model, tmp_path / "broken.onnx")
    with pytest.raises(OptimizerFileError, match=r"broken\.onnx.*onnx\.checker failed"):
        read_optimizer_file(path)


def test_shape_metadata_mismatch(default_model, tmp_path):
    path = _save(_set_meta(default_model, "lto.window", "7"), tmp_path / "shape.onnx")
    with pytest.raises(OptimizerFileError, match=r"shape\.onnx.*grad has shape .* metadata implies"):
        read_optimizer_file(path)


def test_scalar_names_mismatch(default_model, tmp_path):
    path = _save(_set_meta(default_model, "lto.scalars", '["lr"]'), tmp_path / "scalars.onnx")
    with pytest.raises(OptimizerFileError, match=r"scalars\.onnx.*lto\.scalars"):
        read_optimizer_file(path)
