"""A differentiable LTO for meta-training: the step graph applied to a list of torch tensors.

Same token layout (:class:`lto_runtime.TokenLayout`) and the same :class:`StepGraph` as the
runtime, but kept in autograd so that a meta-loss can be backpropagated through the updates into
the network's weights. Gradients enter as constants (first-order: no backpropagation through
the gradient computation itself), a standard simplification for learned optimizers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from lto_core.step import StepGraph
from lto_runtime.format import HYPER_NAMES, INPUT_NAMES, OUTPUT_NAMES, STATE_NAMES, TOKEN_STATE_NAMES
from lto_runtime.layout import TokenLayout
from lto_runtime.state import StepCounters, hyper_row, normalized_energy


class WindowPacker:
    """Packs ``copies`` stacked copies of tensors of fixed shapes into ``[B, W, C]`` windows and back, differentiably.

    Each tensor arrives as ``[copies, *shape]``; copy ``p`` of tensor ``i`` is laid out as its own
    tensor (its own windows), tensor by tensor and copy by copy within a tensor. Padding every copy
    to whole windows in one ``pad`` keeps packing one operation per tensor, whatever ``copies``.
    """

    def __init__(self, shapes: Sequence[tuple[int, ...]], window: int, chunk: int, copies: int = 1) -> None:
        self.shapes = [tuple(s) for s in shapes]
        self.copies = copies
        self.layout = TokenLayout(tuple(s for s in self.shapes for _ in range(copies)), window, chunk)
        single = TokenLayout(tuple(self.shapes), window, chunk)
        self._padded = [int(n) * single.window_elements for n in single.window_counts]
        self._numels = list(single.numels)
        self.ctx = torch.from_numpy(self.layout.context())
        self.mask = self.pack([torch.ones(copies, *s) for s in self.shapes])
        self.window_counts = torch.from_numpy(self.layout.window_counts)

    def pack(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Flatten each copy, zero-pad it to whole windows and concatenate: ``-> [B, W, C]``."""
        flat = [
            torch.nn.functional.pad(t.reshape(self.copies, -1), (0, size - n)).reshape(-1)
            for t, size, n in zip(tensors, self._padded, self._numels)
        ]
        return torch.cat(flat).reshape(-1, self.layout.window, self.layout.chunk)

    def unpack(self, windows: torch.Tensor) -> list[torch.Tensor]:
        """Inverse of :meth:`pack` (padding dropped): ``[copies, *shape]`` per tensor."""
        pieces = windows.reshape(-1).split([self.copies * size for size in self._padded])
        return [
            p.reshape(self.copies, size)[:, :n].reshape(self.copies, *s)
            for p, size, n, s in zip(pieces, self._padded, self._numels, self.shapes)
        ]


class UnrolledLTO:
    """LTO over stacked tensors, all stepped together, with state kept as torch tensors.

    Every tensor is ``[copies, *shape]``: ``copies`` independent problems of one shape (a
    population, see :class:`lto_core.population.Population`), each copy stepped as its own tensor
    with its own learning rate, exactly as if it were stepped alone.

    Args:
        graph: the step function (its network may require grad).
        shapes: the parameter shapes of one copy.
        lr: the learning rate, one for all copies or one per copy.
        betas: Adam's decay rates of the first and second moment.
        eps: Adam's denominator term.
        weight_decay: L2 weight decay, added to the gradient.
        copies: the number of stacked copies.
        boundaries: ``"manual"`` (boundaries only where :meth:`task_boundary` marks them) or
            ``"auto"`` (each copy also detects its own task shifts, as the runtime does).
    """

    def __init__(self, graph: StepGraph, shapes: Sequence[tuple[int, ...]], lr: float | Sequence[float],
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 copies: int = 1, boundaries: str = "manual") -> None:
        self.graph = graph
        config = graph.config
        self.packer = WindowPacker(shapes, config.window, config.chunk, copies)
        windows = self.packer.layout.total_windows
        self.state = {name: torch.zeros(windows, config.window, config.chunk) for name in STATE_NAMES}
        self.state["coefficients"] = torch.zeros(windows, config.window, len(TOKEN_STATE_NAMES))
        rates = [float(lr)] * copies if np.isscalar(lr) else [float(r) for r in lr]
        if len(rates) != copies:
            raise ValueError(f"lr has {len(rates)} entries for {copies} copies; give one per copy or a single float")
        rows = np.stack([hyper_row(r, betas, eps, weight_decay) for r in rates])
        self.hyper = np.tile(rows, (len(self.packer.shapes), 1))
        tensors = len(self.packer.layout.shapes)
        # Copy p of every tensor is one problem: shifts are judged per copy (tensors are laid out copy-minor).
        self.counters = StepCounters(tensors, config.refresh_every, boundaries, groups=np.arange(tensors) % copies)
        self._owner = self.packer.layout.window_tensor()

    def task_boundary(self) -> None:
        """The next step consolidates importance and re-anchors."""
        self.counters.task_boundary()

    def step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Return ``params + update``; gradients are treated as constants.

        As the runtime's engine does, windows that consolidate a boundary or refresh their
        coefficients get them first, so the update already uses them.
        """
        active = np.ones(len(self.packer.layout.shapes), dtype=bool)
        grad = self.packer.pack([g.detach() for g in grads])
        energies = self._normalized_energies(grad) if self.counters.auto else None
        scalars, boundary, refresh = self.counters.advance(active, self.hyper, energies)
        none = torch.zeros(0)
        inputs = {
            "grad": grad,
            "param": self.packer.pack(params),
            "mask": self.packer.mask,
            "scalars": torch.from_numpy(scalars[self._owner]),
            "ctx": self.packer.ctx,
            "boundary_windows": none,
            "refresh_windows": none,
        }
        for listed, flags, slots in (
            ("boundary_windows", boundary, (("log_importance", "consolidated_log_importance"), ("anchor", "consolidated_anchor"))),
            ("refresh_windows", refresh, (("coefficients", "refreshed_coefficients"),)),
        ):
            windows = torch.from_numpy(np.flatnonzero(flags[self._owner]).astype(np.float32))
            if len(windows):
                outputs = self._run({**inputs, listed: windows})
                for name, output in slots:
                    self.state[name] = self.state[name].index_put((windows.long(),), outputs[output])
        outputs = self._run(inputs)
        self.state["exp_avg"], self.state["exp_avg_sq"] = outputs["new_exp_avg"], outputs["new_exp_avg_sq"]
        return [p + u for p, u in zip(params, self.packer.unpack(outputs["update"]))]

    def _normalized_energies(self, grad: torch.Tensor) -> np.ndarray:
        """Per tensor copy, the mean over its elements of :func:`~lto_runtime.state.normalized_energy`
        against the second moment before this step, as the runtime's engine computes it (padding
        adds zero); 0 before a copy's first step."""
        steps = self.counters.step[self._owner]
        correction = np.where(steps > 0, 1.0 - self.hyper[self._owner, HYPER_NAMES.index("beta2")] ** steps, 1.0)
        eps = self.hyper[self._owner, HYPER_NAMES.index("eps")]
        per_window = normalized_energy(
            grad.double(), self.state["exp_avg_sq"].detach().double(),
            torch.from_numpy(correction).view(-1, 1, 1), torch.from_numpy(eps).view(-1, 1, 1),
        ).sum((1, 2))
        tensors = len(self.packer.layout.shapes)
        totals = np.bincount(self._owner, weights=per_window.numpy(), minlength=tensors)
        return np.where(self.counters.step > 0, totals / np.asarray(self.packer.layout.numels), 0.0)

    def _run(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The step graph on ``inputs`` and the current state, outputs by name."""
        feeds = {**inputs, **self.state}
        return dict(zip(OUTPUT_NAMES, self.graph(*(feeds[n] for n in INPUT_NAMES))))

    def detach_(self) -> None:
        """Cut the autograd history (end of a truncation)."""
        self.state = {name: value.detach() for name, value in self.state.items()}
