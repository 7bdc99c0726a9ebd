"""Check an optimizer file against the PyTorch step of its checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lto_core.checkpoint import DEFAULT_CHECKPOINT, checkpoint_sha256, load_checkpoint
from lto_core.continual import task_loss
from lto_core.data import load_digits
from lto_core.executor import TorchStepFunction
from lto_core.models import make_model
from lto_core.streams import make_stream
from lto_runtime._torch_engine import step_tensors
from lto_runtime.engine import StepEngine
from lto_runtime.format import INPUT_NAMES, OUTPUT_NAMES
from lto_runtime.session import OptimizerSession
from lto_runtime.state import hyper_row
from lto_export.onnx_export import example_inputs

#: Largest :func:`output_difference` between the file and the PyTorch step that passes.
TOLERANCE = 1e-5


def output_difference(expected: np.ndarray, got: np.ndarray) -> float:
    """``max |got - expected| / max(1, |expected|)``: absolute where values are at most 1 (updates,
    moments), relative where they are larger (importance grows with the number of tasks, and
    float32 can only hold it to ~1e-7 of its size)."""
    if expected.size == 0:
        return 0.0
    return float((np.abs(got - expected) / np.maximum(1.0, np.abs(expected))).max())


class ComparingStepFunction:
    """Runs ``candidate`` (its outputs are used) and ``reference`` on the same inputs, and keeps
    the largest :func:`output_difference` between their outputs."""

    def __init__(self, reference, candidate) -> None:
        self.reference, self.candidate = reference, candidate
        #: The candidate's layout (see :class:`~lto_runtime.StepFunction`).
        self.window, self.chunk, self.refresh_every = candidate.window, candidate.chunk, candidate.refresh_every
        self.max_difference = 0.0
        self.calls = 0

    def run(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Compute with both; write the candidate's outputs."""
        expected = {k: np.empty_like(v) for k, v in outputs.items()}
        self.reference.run(inputs, expected)
        self.candidate.run(inputs, outputs)
        self.calls += 1
        diff = max((output_difference(expected[k], outputs[k]) for k in outputs), default=0.0)
        self.max_difference = max(self.max_difference, diff)


@dataclass
class ValidationReport:
    """Largest differences on random windows and along a training trajectory."""

    random_difference: float
    trajectory_difference: float
    trajectory_steps: int
    checkpoint_matches: bool

    @property
    def passed(self) -> bool:
        """Both differences within :data:`TOLERANCE` and the file was made from the checkpoint."""
        return self.checkpoint_matches and max(self.random_difference, self.trajectory_difference) <= TOLERANCE


def _random_windows(compare: ComparingStepFunction, graph, trials: int = 5) -> None:
    for seed in range(trials):
        feeds = {name: x.numpy() for name, x in zip(INPUT_NAMES, example_inputs(graph, windows=1 + 2 * seed, seed=seed))}
        outputs = graph(*(torch.from_numpy(feeds[n]) for n in INPUT_NAMES))
        compare.run(feeds, {name: np.empty(tuple(x.shape), np.float32) for name, x in zip(OUTPUT_NAMES, outputs)})


def _trajectory(compare: ComparingStepFunction, steps: int) -> None:
    """Train a small MLP on a split-digits stream with the file driving, comparing every call."""
    stream = make_stream(load_digits(), "split", "task", 2, seed=0)
    model = make_model("mlp", stream.input_shape, stream.num_outputs, seed=0)
    params = list(model.parameters())
    engine = StepEngine(compare, [tuple(p.shape) for p in params])
    hyper = np.tile(hyper_row(3e-3, (0.9, 0.999), 1e-8, 0.0), (len(params), 1))

    rng = np.random.default_rng(0)
    for i in range(steps):
        task = stream.tasks[0 if i < steps // 2 else 1]
        if i == steps // 2:
            engine.task_boundary()
        model.zero_grad()
        task_loss(model, task, rng.integers(0, len(task.x_train), 32)).backward()
        step_tensors(engine, [p.grad for p in params], params, hyper)


def validate_file(path: str | Path, checkpoint: str | Path = DEFAULT_CHECKPOINT, steps: int = 60) -> ValidationReport:
    """Compare the file at ``path`` with ``checkpoint``'s PyTorch step on random windows and on a
    ``steps``-step training trajectory with a task boundary half-way."""
    session = OptimizerSession(path)
    graph, _ = load_checkpoint(checkpoint)
    reference = TorchStepFunction(graph, compile=False)
    random_cmp = ComparingStepFunction(reference, session)
    with torch.no_grad():
        _random_windows(random_cmp, graph)
    traj_cmp = ComparingStepFunction(reference, session)
    _trajectory(traj_cmp, steps)
    return ValidationReport(
        random_cmp.max_difference,
        traj_cmp.max_difference,
        steps,
        session.spec.checkpoint_sha256 == checkpoint_sha256(checkpoint),
    )
