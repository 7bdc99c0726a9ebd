"""Export the step graph of a checkpoint to one self-contained ONNX optimizer file."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import onnx
import torch

from lto_core.checkpoint import DEFAULT_CHECKPOINT, checkpoint_sha256, load_checkpoint, save_checkpoint
from lto_core.step import StepGraph
from lto_runtime import __version__
from lto_runtime.format import CTX_NAMES, FORMAT, INPUT_NAMES, OUTPUT_NAMES, SCALAR_NAMES, STATE_NAMES, TOKEN_STATE_NAMES
from lto_runtime.optimizer_file import default_model_path, read_optimizer_file

#: Opset of exported files.
OPSET = 18


def example_inputs(graph: StepGraph, windows: int = 3, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random but well-formed step inputs for ``windows`` windows, in :data:`INPUT_NAMES` order
    (export tracing and validation).

    Gradients and parameters are Gaussian, the mask cuts the last window short, the moments and
    importance are positive, the coefficients random, and scalars are an Adam-like setting at step
    7 after one task boundary; even windows consolidate a boundary, odd ones (counted from the
    last) refresh their coefficients.
    """
    w, c = graph.config.window, graph.config.chunk
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(windows, w, c)
    mask[-1, w // 2 :] = 0.0
    grad, param = (torch.randn(windows, w, c, generator=gen) * mask for _ in range(2))
    slots = {name: torch.randn(windows, w, c, generator=gen) * mask for name in STATE_NAMES}
    slots["exp_avg_sq"] = slots["exp_avg_sq"].abs() * 1e-2
    slots["log_importance"] = slots["log_importance"].abs()
    coefficients = torch.rand(windows, w, len(TOKEN_STATE_NAMES), generator=gen) * mask[..., :1]
    row = {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "step": 7.0,
           "steps_since_boundary": 3.0, "boundaries": 1.0, "active": 1.0}
    scalars = torch.tensor([[row[n] for n in SCALAR_NAMES]] * windows)
    ctx = torch.rand(windows, len(CTX_NAMES), generator=gen)
    boundary_windows = torch.arange(0, windows, 2, dtype=torch.float32)
    refresh_windows = torch.arange(windows - 1, -1, -2, dtype=torch.float32).flip(0)
    return (grad, param, mask, *slots.values(), coefficients, scalars, ctx, boundary_windows, refresh_windows)


def export_onnx(out: str | Path, checkpoint: str | Path = DEFAULT_CHECKPOINT) -> Path:
    """Export ``checkpoint``'s step graph to ``out`` and return its path.

    The file is one self-contained ONNX model (dynamo exporter, opset 18, dynamic window count
    ``B``) carrying the ``lto.*`` metadata; it is re-read with the runtime's validator before
    this returns.
    """
    graph, meta_train = load_checkpoint(checkpoint)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("windows", min=1)
    dynamic = {name: {0: batch} for name in INPUT_NAMES}
    dynamic["boundary_windows"] = {0: torch.export.Dim("boundary_windows", min=0)}
    dynamic["refresh_windows"] = {0: torch.export.Dim("refresh_windows", min=0)}
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it lists every torchvision op it skips
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            example_inputs(graph),
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic,
            opset_version=OPSET,
            external_data=False,
            verbose=False,
        )
    exporter_log.setLevel(level)
    model = program.model_proto
    _drop_debug_records(model.graph)
    metadata = {
        "lto.format": str(FORMAT),
        "lto.chunk": str(graph.config.chunk),
        "lto.window": str(graph.config.window),
        "lto.refresh_every": str(graph.config.refresh_every),
        "lto.state": json.dumps(list(STATE_NAMES)),
        "lto.token_state": json.dumps(list(TOKEN_STATE_NAMES)),
        "lto.scalars": json.dumps(list(SCALAR_NAMES)),
        "lto.ctx": json.dumps(list(CTX_NAMES)),
        "lto.version": __version__,
        "lto.checkpoint_sha256": checkpoint_sha256(checkpoint),
        "lto.meta_train": json.dumps(meta_train, sort_keys=True),
        "lto.network": json.dumps(graph.config.to_dict(), sort_keys=True),
    }
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save_model(model, str(out), save_as_external_data=False)
    read_optimizer_file(out)
    return out


def _drop_debug_records(graph: onnx.GraphProto) -> None:
    """Remove the exporter's per-node debug records (Python stack traces with this machine's
    absolute paths, FX node names, module scopes) and the graph's export signature.

    They are most of the file's bytes and make the file depend on where it was built; the
    computation is unchanged.
    """
    del graph.metadata_props[:]
    for node in graph.node:
        del node.metadata_props[:]
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _drop_debug_records(attribute.g)


def install_default(checkpoint: str | Path) -> Path:
    """Make ``checkpoint`` the packaged default: copy it (weights and JSON) to
    :data:`~lto_core.checkpoint.DEFAULT_CHECKPOINT` and export it to the runtime's ``default.onnx``.
    Returns the ONNX path."""
    graph, meta_train = load_checkpoint(checkpoint)
    weights = save_checkpoint(graph, DEFAULT_CHECKPOINT, meta_train)
    return export_onnx(default_model_path(), weights)


def initial_checkpoint(gate_init: float, path: str | Path | None = None, pull_init: float = 0.0) -> Path:
    """Write the checkpoint of a network that has not been meta-trained and return its path.

    ``gate_init = pull_init = 0`` is the zero-head network (exactly Adam); otherwise
    importance-gated Adam, ``adam_dir * 2 / (1 + (1 + Omega)^gate_init)``, plus EWC's pull toward
    the anchor of strength ``pull_init`` (:meth:`TokenNetwork.init_importance_gate`).
    ``path`` defaults to a file in a new temporary folder.
    """
    # Seeded on a fork of the CPU generator: the same network every time, the caller's stream untouched.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(0)
        graph = StepGraph()
    if gate_init or pull_init:
        graph.network.init_importance_gate(gate_init, pull_init)
        pull = f", pull_init={pull_init:g}" if pull_init else ""
        note = f"importance-gated Adam, gate_init={gate_init:g}{pull}: exactly Adam until a task boundary"
    else:
        note = "zero output head: computes Adam exactly"
    if path is None:
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="lto-init-")) / "init.safetensors"
    return save_checkpoint(graph, path, {"meta_trained": False, "note": note, "gate_init": gate_init, "pull_init": pull_init})
