"""A differentiable LTO for meta-training: the step graph applied to a list of torch tensors.

Same token layout (:class:`lto_runtime.TokenLayout`) and the same :class:`StepGraph` as the
runtime, but kept in autograd so that a meta-loss can be backpropagated through the updates into
the network's weights. Gradients enter as constants (first-order: no backpropagation through
the gradient computation itself), a standard simplification for learned optimizers.
"""

from __future__ import annotations

from typing import Sequence

import torch

from lto_core.step import StepGraph
from lto_runtime.format import HYPER_NAMES, SCALAR_NAMES, STATE_NAMES
from lto_runtime.layout import TokenLayout


class WindowPacker:
    """Packs tensors of fixed shapes into ``[B, W, C]`` windows and back, differentiably."""

    def __init__(self, shapes: Sequence[tuple[int, ...]], window: int, chunk: int) -> None:
        self.layout = TokenLayout(tuple(tuple(s) for s in shapes), window, chunk)
        self._padded = [int(n) * self.layout.window_elements for n in self.layout.window_counts]
        self.ctx = torch.from_numpy(self.layout.context())
        self.mask = self.pack([torch.ones(s) for s in self.layout.shapes])
        self.window_counts = torch.from_numpy(self.layout.window_counts)

    def pack(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Flatten, zero-pad to whole windows and concatenate: ``-> [B, W, C]``."""
        flat = [torch.nn.functional.pad(t.reshape(-1), (0, size - t.numel())) for t, size in zip(tensors, self._padded)]
        return torch.cat(flat).reshape(-1, self.layout.window, self.layout.chunk)

    def unpack(self, windows: torch.Tensor) -> list[torch.Tensor]:
        """Inverse of :meth:`pack` (padding dropped)."""
        pieces = windows.reshape(-1).split(self._padded)
        return [p[:n].reshape(s) for p, n, s in zip(pieces, self.layout.numels, self.layout.shapes)]


class UnrolledLTO:
    """LTO over a list of tensors, all stepped together, with state kept as torch tensors.

    Args:
        graph: the step function (its network may require grad).
        shapes: the parameter shapes.
        lr, betas, eps, weight_decay: Adam's hyper-parameters.
    """

    def __init__(self, graph: StepGraph, shapes: Sequence[tuple[int, ...]], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        self.graph = graph
        self.packer = WindowPacker(shapes, graph.config.window, graph.config.chunk)
        windows = self.packer.layout.total_windows
        self.state = torch.zeros(len(STATE_NAMES), windows, graph.config.window, graph.config.chunk)
        self.hyper = dict(zip(HYPER_NAMES, (lr, betas[0], betas[1], eps, weight_decay)))
        self.steps = 0
        self.steps_since_boundary = 0
        self.boundary_pending = False

    def task_boundary(self) -> None:
        """The next step consolidates importance and re-anchors."""
        self.boundary_pending = True

    def _scalars(self, windows: int) -> torch.Tensor:
        row = {**self.hyper, "step": self.steps, "steps_since_boundary": self.steps_since_boundary,
               "boundary": float(self.boundary_pending), "active": 1.0}
        return torch.tensor([[float(row[n]) for n in SCALAR_NAMES]], dtype=torch.float32).expand(windows, -1)

    def step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Return ``params + update``; gradients are treated as constants."""
        self.steps += 1
        self.steps_since_boundary = 1 if self.boundary_pending else self.steps_since_boundary + 1
        grad = self.packer.pack([g.detach() for g in grads])
        param = self.packer.pack(params)
        update, self.state = self.graph(grad, param, self.packer.mask, self.state, self._scalars(len(grad)), self.packer.ctx)
        self.boundary_pending = False
        return [p + u for p, u in zip(params, self.packer.unpack(update))]

    def detach_(self) -> None:
        """Cut the autograd history (end of a truncation)."""
        self.state = self.state.detach()

