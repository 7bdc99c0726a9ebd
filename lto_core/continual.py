"""Training a model through a stream, task after task, and recording the accuracy matrix."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from lto_core.metrics import average_accuracy, backward_transfer, forward_transfer
from lto_core.streams import Stream, Task


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
) -> StreamResult:
    """Train ``model`` for ``iters`` steps on each task in turn and fill the accuracy matrix.

    After each task but the last, ``optimizer.task_boundary()`` is called when the optimizer has
    one, and ``on_task_end(model, task)`` when given (EWC computes its Fisher there); ``penalty``
    adds a regularizer to every training loss. Batches come from ``seed`` alone, so every
    optimizer run with the same seed sees the same data in the same order.

    ``on_step(steps, model)``, when given, is called after every optimizer step with the number
    of steps taken so far in the stream (evaluation curves); its time is left out of ``seconds``.
    """
    rng = np.random.default_rng(seed)
    tasks = stream.tasks
    b = np.array([accuracy(model, t) for t in tasks])
    R = np.zeros((len(tasks), len(tasks)))
    losses: list[float] = []
    callback_seconds = 0.0
    start = time.perf_counter()
    for i, task in enumerate(tasks):
        for _ in range(iters):
            index = rng.integers(0, len(task.x_train), size=batch_size)
            optimizer.zero_grad()
            loss = task_loss(model, task, index)
            if penalty is not None:
                loss = loss + penalty(model)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if on_step is not None:
                called = time.perf_counter()
                on_step(len(losses), model)
                callback_seconds += time.perf_counter() - called
        R[i] = [accuracy(model, t) for t in tasks]
        if i < len(tasks) - 1:
            if on_task_end is not None:
                on_task_end(model, task)
            if hasattr(optimizer, "task_boundary"):
                optimizer.task_boundary()
    return StreamResult(R, b, losses, time.perf_counter() - start - callback_seconds)
