"""Run the PyTorch step graph behind the runtime's ``run(inputs, outputs)`` interface.

This is the ``backend="torch"`` execution strategy: the same :class:`~lto_runtime.StepEngine`
(layout, state, chunking) as the ONNX backend, with the step computed by :class:`StepGraph`.
"""

from __future__ import annotations

import numpy as np
import torch

from lto_core.step import StepGraph
from lto_runtime.format import INPUT_NAMES


class TorchStepFunction:
    """Computes the step with ``graph`` in PyTorch, on NumPy buffers shared without copies."""

    def __init__(self, graph: StepGraph) -> None:
        self.graph = graph.eval()

    def run(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Read ``inputs`` and write ``update`` and ``new_state`` into ``outputs`` in place."""
        with torch.no_grad():
            update, new_state = self.graph(*(torch.from_numpy(inputs[n]) for n in INPUT_NAMES))
            torch.from_numpy(outputs["update"]).copy_(update)
            torch.from_numpy(outputs["new_state"]).copy_(new_state)
