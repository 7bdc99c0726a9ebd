"""Training a model through a stream, task after task, and recording the accuracy matrix."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from lto_core.metrics import average_accuracy, backward_transfer, forward_transfer
from lto_core.streams import Stream, Task, previous_task_probability


def masked_logits(logits: torch.Tensor, classes: tuple[int, ...] | None) -> torch.Tensor:
    """Task-incremental masking: logits outside the task's ``classes`` set to a large negative."""
    if classes is None:
        return logits
    keep = torch.full((logits.shape[-1],), -1e9, dtype=logits.dtype, device=logits.device)
    keep[list(classes)] = 0.0
    return logits + keep


def task_loss(model: nn.Module, task: Task, index: np.ndarray) -> torch.Tensor:
    """Cross-entropy of ``model`` on the training examples ``index`` of ``task``."""
    x = torch.from_numpy(task.x_train[index])
    y = torch.from_numpy(task.y_train[index])
    return nn.functional.cross_entropy(masked_logits(model(x), task.classes), y)


def mixed_task_loss(model: nn.Module, tasks: Sequence[Task], source: np.ndarray, index: np.ndarray) -> torch.Tensor:
    """Mean cross-entropy of a batch drawn from several tasks: example ``k`` is training example
    ``index[k]`` of ``tasks[source[k]]``, scored under its own task's output mask."""
    sources = [int(t) for t in np.unique(source)]
    shape = tasks[sources[0]].x_train.shape[1:]
    x = np.empty((len(index), *shape), dtype=tasks[sources[0]].x_train.dtype)
    y = np.empty(len(index), dtype=np.int64)
    for t in sources:
        rows = source == t
        x[rows] = tasks[t].x_train[index[rows]]
        y[rows] = tasks[t].y_train[index[rows]]
    logits = model(torch.from_numpy(x))
    masked = torch.empty_like(logits)
    for t in sources:
        rows = torch.from_numpy(source == t)
        masked[rows] = masked_logits(logits[rows], tasks[t].classes)
    return nn.functional.cross_entropy(masked, torch.from_numpy(y))


@torch.no_grad()
def accuracy(model: nn.Module, task: Task) -> float:
    """Test accuracy of ``model`` on ``task`` (with the task's output mask, if any)."""
    was_training = model.training
    model.eval()
    logits = masked_logits(model(torch.from_numpy(task.x_test)), task.classes)
    model.train(was_training)
    return float((logits.argmax(dim=-1).numpy() == task.y_test).mean())


@dataclass
class StreamResult:
    """Accuracy matrix ``R``, init accuracies ``b``, per-step training losses and wall time."""

    R: np.ndarray
    b: np.ndarray
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def acc(self) -> float:
        """Average accuracy after the last task (GEM's ACC)."""
        return average_accuracy(self.R)

    @property
    def bwt(self) -> float:
        """Backward transfer (GEM's BWT); negative is forgetting."""
        return backward_transfer(self.R)

    @property
    def fwt(self) -> float:
        """Forward transfer (GEM's FWT)."""
        return forward_transfer(self.R, self.b)


def run_stream(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    stream: Stream,
    iters: int,
    batch_size: int = 32,
    seed: int = 0,
    penalty: Callable[[nn.Module], torch.Tensor] | None = None,
    on_task_end: Callable[[nn.Module, Task], None] | None = None,
    on_step: Callable[[int, nn.Module], None] | None = None,
    on_backward: Callable[[nn.Module], None] | None = None,
    boundaries: bool = True,
    blend: int = 0,
) -> StreamResult:
    """Train ``model`` for ``iters`` steps on each task in turn and fill the accuracy matrix.

    With ``boundaries`` (the default), after each task but the last ``optimizer.task_boundary()``
    is called when the optimizer has one, and ``on_task_end(model, task)`` when given (EWC computes
    its Fisher there). With ``boundaries=False`` neither is ever called: nothing tells the method
    where a task ends. Either way ``R`` is measured at the end of every task: evaluation is the
    benchmark's, not the method's.

    ``blend = N > 0`` makes the stream gradual: during the first ``N`` steps of every task after
    the first, each example of the batch comes from the previous task with probability ``1 - j/N``
    at step ``j = 0 .. N-1`` and from the current task otherwise, each scored under its own task's
    output mask (:func:`mixed_task_loss`). ``blend = 0`` switches tasks at once.

    ``penalty`` adds a regularizer to every training loss; ``on_backward(model)``, when given, is
    called after every backward pass, before the optimizer step (a regularizer reading the
    gradients). Batches come from ``seed`` alone, so every optimizer run with the same seed sees the
    same data in the same order.

    ``on_step(steps, model)``, when given, is called after every optimizer step with the number
    of steps taken so far in the stream (evaluation curves); its time is left out of ``seconds``.

    Raises:
        ValueError: ``blend`` is negative or not smaller than ``iters``.
    """
    if blend < 0 or (blend and blend >= iters):
        raise ValueError(f"blend must be >= 0 and smaller than iters ({iters}), got {blend}: a blend into a task must end before the task does")
    rng = np.random.default_rng(seed)
    tasks = stream.tasks
    b = np.array([accuracy(model, t) for t in tasks])
    R = np.zeros((len(tasks), len(tasks)))
    losses: list[float] = []
    callback_seconds = 0.0
    start = time.perf_counter()
    for i, task in enumerate(tasks):
        for j in range(iters):
            index = rng.integers(0, len(task.x_train), size=batch_size)
            optimizer.zero_grad()
            if i > 0 and j < blend:
                source, index = _blended_batch(rng, tasks, i, index, previous_task_probability(j, blend))
                loss = mixed_task_loss(model, tasks, source, index)
            else:
                loss = task_loss(model, task, index)
            if penalty is not None:
                loss = loss + penalty(model)
            loss.backward()
            if on_backward is not None:
                on_backward(model)
            optimizer.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                called = time.perf_counter()
                on_step(len(losses), model)
                callback_seconds += time.perf_counter() - called
        R[i] = [accuracy(model, t) for t in tasks]
        if boundaries and i < len(tasks) - 1:
            if on_task_end is not None:
                on_task_end(model, task)
            if hasattr(optimizer, "task_boundary"):
                optimizer.task_boundary()
    return StreamResult(R, b, losses, time.perf_counter() - start - callback_seconds)


def _blended_batch(
    rng: np.random.Generator, tasks: Sequence[Task], i: int, index: np.ndarray, previous_share: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(source, index)`` of a batch of task ``i`` blended with task ``i - 1``: each example is
    replaced, with probability ``previous_share``, by a random training example of task ``i - 1``."""
    from_previous = rng.random(len(index)) < previous_share
    previous_index = rng.integers(0, len(tasks[i - 1].x_train), size=len(index))
    source = np.where(from_previous, i - 1, i)
    return source, np.where(from_previous, previous_index, index)
