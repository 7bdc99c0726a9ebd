"""A population of same-shaped continual-learning problems, trained together.

Problems that share a shape (data source, stream kind, scenario, architecture and sizes, number and
length of tasks, batch size, whether the optimizer is told where tasks end and how long tasks blend;
see :meth:`lto_core.families.Family.sample_population`) but have their
own seeds (stream, initial weights, batches) and learning rates are stacked: each parameter is one
tensor ``[P, *shape]``, the model's forward runs once for all ``P`` problems
(``torch.func.vmap`` of ``functional_call``), and the optimizer steps each copy as its own tensor
(:class:`lto_core.unroll.UnrolledLTO` with ``copies=P``). The problems stay independent: problem
``p``'s parameters, gradients and accuracies are exactly those it would have alone; only the
Python and dispatch overhead of a step, which dominates for the small models meta-training uses,
is paid once for all of them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from lto_core.families import ProblemSpec, build_problem, shape_key
from lto_core.streams import previous_task_probability


def soft_error(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``mean(1 - softmax(logits)_y)``: the error rate of a prediction sampled from the softmax.

    Bounded in ``[0, 1]`` like the accuracy that ACC averages, so a forgotten task costs at most
    its lost accuracy; cross-entropy grows without bound as an old task's logits drift.
    """
    return 1.0 - logits.softmax(dim=-1).gather(1, y[:, None]).mean()


#: Query losses by config name (``MetaTrainConfig.query_loss``).
QUERY_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "ce": nn.functional.cross_entropy,
    "error": soft_error,
}


class Population:
    """``P`` problems of one shape: stacked initial parameters, batches, losses and accuracies.

    Args:
        specs: the problems; all must have the same :func:`~lto_core.families.shape_key`.

    Raises:
        ValueError: no specs, or specs of different shapes.
    """

    def __init__(self, specs: Sequence[ProblemSpec]) -> None:
        if not specs:
            raise ValueError("a population needs at least one problem spec")
        keys = {shape_key(s) for s in specs}
        if len(keys) != 1:
            raise ValueError(f"a population's problems must share one shape; got {len(keys)} shapes: {sorted(map(str, keys))}")
        self.specs = list(specs)
        built = [build_problem(s) for s in specs]
        self.streams = [stream for stream, _ in built]
        self.model = built[0][1]
        self.names = [n for n, _ in self.model.named_parameters()]
        self.initial = [torch.stack([dict(m.named_parameters())[n].detach() for _, m in built]) for n in self.names]
        # Additive logit masks [tasks, P, K]: 0 on the task's classes, -1e9 elsewhere (task-incremental).
        self._masks = torch.stack([self._task_mask(t) for t in range(self.tasks)])
        # Each task's training sets of all problems end to end, so a batch is one gather, not P.
        self._train = [self._concatenated(t) for t in range(self.tasks)]
        self._forward = torch.func.vmap(self._one_forward)

    @property
    def size(self) -> int:
        """``P``, the number of problems."""
        return len(self.specs)

    @property
    def tasks(self) -> int:
        """Tasks per stream."""
        return self.specs[0].tasks

    @property
    def steps_per_task(self) -> int:
        """Training steps per task."""
        return self.specs[0].steps_per_task

    @property
    def boundaries(self) -> str:
        """How the problems' optimizer learns where tasks end: ``"manual"`` (told) or ``"auto"`` (never told)."""
        return self.specs[0].boundaries

    @property
    def blend_steps(self) -> int:
        """Steps over which each task blends into the next (0: tasks switch at once)."""
        return self.specs[0].blend_steps

    @property
    def lrs(self) -> list[float]:
        """Each problem's learning rate."""
        return [s.lr for s in self.specs]

    def _task_mask(self, task: int) -> torch.Tensor:
        outputs = self.streams[0].num_outputs
        mask = torch.zeros(self.size, outputs)
        for p, stream in enumerate(self.streams):
            classes = stream.tasks[task].classes
            if classes is not None:
                mask[p] = -1e9
                mask[p, list(classes)] = 0.0
        return mask

    def _one_forward(self, params: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.model, dict(zip(self.names, params)), (x,))

    def _concatenated(self, task: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``task``'s training inputs and labels of all problems end to end, with each problem's
        offset and example count."""
        parts = [stream.tasks[task] for stream in self.streams]
        counts = np.array([len(t.x_train) for t in parts])
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        return np.concatenate([t.x_train for t in parts]), np.concatenate([t.y_train for t in parts]), offsets, counts

    def batch(self, task: int, rngs: Sequence[np.random.Generator], size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A training batch of ``size`` examples of ``task`` per problem, each drawn with its own
        generator: ``x [P, size, ...]``, ``y [P, size]``."""
        x, y, offsets, counts = self._train[task]
        index = np.concatenate([offset + rng.integers(0, count, size) for offset, count, rng in zip(offsets, counts, rngs)])
        return torch.from_numpy(x[index].reshape(self.size, size, *x.shape[1:])), torch.from_numpy(y[index].reshape(self.size, size))

    def training_batch(self, task: int, step: int, rngs: Sequence[np.random.Generator],
                       size: int) -> tuple[torch.Tensor, torch.Tensor, int | torch.Tensor]:
        """The training batch at ``step`` (counted from 0) of ``task``: ``x [P, size, ...]``,
        ``y [P, size]`` and the task each example comes from.

        Outside a blend (the first task, a stream that switches at once, the steps after a gradual
        stream's blend) this is :meth:`batch` and the examples' task is ``task``. During a blend,
        each example is drawn as in :meth:`batch` and then, with probability
        :func:`~lto_core.streams.previous_task_probability` ``(step, blend_steps)``, replaced by
        an example of the previous task, all from the problem's own generator; the examples'
        tasks come back as a ``[P, size]`` tensor.
        """
        share = previous_task_probability(step, self.blend_steps) if task else 0.0
        if not share:
            return (*self.batch(task, rngs, size), task)
        x, y, offsets, counts = self._train[task]
        x_previous, y_previous, previous_offsets, previous_counts = self._train[task - 1]
        index, previous, from_previous = [], [], []
        for p, rng in enumerate(rngs):
            index.append(offsets[p] + rng.integers(0, counts[p], size))
            from_previous.append(rng.random(size) < share)
            previous.append(previous_offsets[p] + rng.integers(0, previous_counts[p], size))
        index, previous, from_previous = np.concatenate(index), np.concatenate(previous), np.concatenate(from_previous)
        rows = from_previous.reshape(-1, *[1] * (x.ndim - 1))
        xb = np.where(rows, x_previous[previous], x[index]).reshape(self.size, size, *x.shape[1:])
        yb = np.where(from_previous, y_previous[previous], y[index]).reshape(self.size, size)
        source = np.where(from_previous, task - 1, task).reshape(self.size, size)
        return torch.from_numpy(xb), torch.from_numpy(yb), torch.from_numpy(source)

    def _example_masks(self, task: int | torch.Tensor) -> torch.Tensor:
        """Additive logit masks of a batch: ``[P, 1, K]`` for one task, ``[P, N, K]`` for each example's own."""
        if isinstance(task, torch.Tensor):
            return self._masks[task, torch.arange(self.size)[:, None]]
        return self._masks[task][:, None, :]

    def loss(self, params: Sequence[torch.Tensor], task: int | torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             kind: str = "ce") -> torch.Tensor:
        """Mean over problems of each problem's ``QUERY_LOSSES[kind]`` on its batch.

        ``task`` is the task of every example, or each example's (``[P, N]``, from
        :meth:`training_batch`); each example is scored under its own task's output mask.
        Every problem's batch has the same size, so the loss over all ``P * N`` examples is that mean.
        """
        # vmap has no batching rule for CPU flash attention (the transformer) and would loop over the
        # problems; attention written as plain matrix products batches like everything else.
        with sdpa_kernel(SDPBackend.MATH):
            logits = self._forward(tuple(params), x)
        logits = logits + self._example_masks(task)
        return QUERY_LOSSES[kind](logits.flatten(0, 1), y.flatten())

    def grads(self, params: Sequence[torch.Tensor], task: int | torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Each problem's gradient of its own mean cross-entropy (constants for the meta-gradient):
        the gradient of ``P`` times :meth:`loss`, the sum of the problems' losses."""
        with torch.enable_grad():
            leaves = [p.detach().requires_grad_() for p in params]
            total = self.loss(leaves, task, x, y) * self.size
            return list(torch.autograd.grad(total, leaves))

    @torch.no_grad()
    def accuracies(self, params: Sequence[torch.Tensor], task: int) -> np.ndarray:
        """Test accuracy of each problem on ``task``, ``[P]`` (test sets differ in size, so one problem at a time)."""
        out = np.zeros(self.size)
        for p, stream in enumerate(self.streams):
            t = stream.tasks[task]
            logits = self._one_forward(tuple(q[p] for q in params), torch.from_numpy(t.x_test)) + self._masks[task][p]
            out[p] = float((logits.argmax(-1).numpy() == t.y_test).mean())
        return out
