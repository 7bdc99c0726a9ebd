"""Run the PyTorch step graph behind the runtime's ``run(inputs, outputs)`` interface.

This is the ``backend="torch"`` execution strategy: the same :class:`~lto_runtime.StepEngine`
(layout, state, chunking) as the ONNX backend, with the step computed by :class:`StepGraph` on
whatever the buffers are: torch tensors on the parameters' device (the adapter's fast path) or
NumPy arrays, shared without copies.
"""

from __future__ import annotations

import functools
import logging
import shutil
from typing import Any, Callable

import numpy as np
import torch

from lto_core.step import StepGraph, adam_element_step, protected_element_step
from lto_runtime.format import INPUT_NAMES, OUTPUT_NAMES

#: Logger ``"lto_core"``; says once, at INFO, when backend="torch" must run eagerly.
logger = logging.getLogger("lto_core")


def can_compile() -> bool:
    """Whether ``torch.compile`` can build CPU kernels here: inductor needs a C++ compiler."""
    return any(shutil.which(cc) for cc in ("g++", "c++", "clang++"))


@functools.cache
def compiled_element_steps() -> tuple[Callable, Callable]:
    """:func:`~lto_core.step.adam_element_step` and :func:`~lto_core.step.protected_element_step`
    through ``torch.compile``: each becomes one fused loop over the elements.

    Compiled once per process (they hold no weights, so every step graph shares them); shapes are
    dynamic, so chunks of any size reuse the kernels.
    """
    return tuple(torch.compile(f, dynamic=True, fullgraph=True) for f in (adam_element_step, protected_element_step))


class TorchStepFunction:
    """Computes the step with ``graph`` in PyTorch.

    Args:
        graph: the step graph.
        compile: run the per-element part through ``torch.compile`` (:func:`compiled_element_steps`,
            the fast path; the network and consolidation, which touch few windows, stay eager);
            ``None`` compiles where a C++ compiler exists and otherwise runs eagerly, saying so
            once at INFO on the ``lto_core`` logger. Both compute the same function.
    """

    def __init__(self, graph: StepGraph, compile: bool | None = None) -> None:
        self.graph = graph.eval()
        self.window, self.chunk = graph.config.window, graph.config.chunk
        self.refresh_every = graph.config.refresh_every
        if compile is None:
            compile = can_compile()
            if not compile:
                logger.info("lto: no C++ compiler found, so backend='torch' runs the step eagerly (slower; same numbers)")
        self.compiled = bool(compile)
        #: What runs the step, as ``OptimizerSession.providers`` says for onnxruntime.
        self.providers: list[str] = ["PyTorch, torch.compile" if compile else "PyTorch, eager"]
        if compile:
            self.graph.element_steps = compiled_element_steps()

    def run(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        """Read ``inputs`` and write every output into ``outputs`` in place (tensors or NumPy arrays)."""
        with torch.no_grad():
            results = self.graph(*(_as_tensor(inputs[n]) for n in INPUT_NAMES))
            for name, value in zip(OUTPUT_NAMES, results):
                _as_tensor(outputs[name]).copy_(value)


def _as_tensor(array: Any) -> torch.Tensor:
    """A tensor sharing ``array``'s memory (a NumPy array or a tensor already)."""
    return torch.from_numpy(array) if isinstance(array, np.ndarray) else array
