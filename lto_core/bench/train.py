"""``lto bench train``: plain single-task training, optimizers side by side.

One task holding every class of the dataset (no stream, no boundary). Within a seed every method
starts from the same weights and sees the same batches. Each run records the per-step training
loss, test accuracy and test loss every ``eval_every`` steps, the final figures and the wall time.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lto_core.bench.common import (
    Method,
    Progress,
    boundaries_found,
    format_mean_std,
    markdown_table,
    rounded,
    run_benchmark,
)
from lto_core.bench.plots import plot_train
from lto_core.continual import accuracy, run_stream
from lto_core.data import Dataset, load_dataset
from lto_core.models import ARCHITECTURES, make_model
from lto_core.streams import Stream, Task

#: Scalars summarized over seeds, in table order.
METRICS = ("test_accuracy", "test_loss", "train_loss", "seconds")


@dataclass(frozen=True)
class TrainConfig:
    """What to run: data, model, training steps, seeds, batch size, evaluation interval (steps),
    and whether LTO runs in task-free mode (``boundaries="auto"``), where it could mark task
    boundaries on a stream that has none."""

    data: str = "digits"
    arch: str = "mlp"
    iters: int = 1000
    seeds: int = 3
    batch_size: int = 32
    eval_every: int = 50
    no_boundaries: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown arch {self.arch!r}; choose one of {ARCHITECTURES}")
        for name in ("iters", "seeds", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def single_task_stream(data: Dataset) -> Stream:
    """``data`` as a one-task stream over all its classes (plain training)."""
    task = Task(data.x_train, data.y_train, data.x_test, data.y_test, None)
    return Stream(data.name, "class", (task,), data.num_classes, data.input_shape)


@torch.no_grad()
def test_loss(model: nn.Module, task: Task) -> float:
    """Mean cross-entropy of ``model`` on the test examples of ``task``."""
    was_training = model.training
    model.eval()
    loss = nn.functional.cross_entropy(model(torch.from_numpy(task.x_test)), torch.from_numpy(task.y_test))
    model.train(was_training)
    return float(loss)


def run_train_once(config: TrainConfig, method: Method, seed: int, stream: Stream, progress: Progress | None = None) -> dict[str, Any]:
    """Train one fresh model on the single task of ``stream`` with ``method``; the run's record.

    ``train_loss`` is the mean training loss over the last ``min(eval_every, iters)`` steps;
    ``boundaries_found`` counts the task boundaries the optimizer marked itself (LTO with
    ``boundaries="auto"``; 0 for every other optimizer), all of them false on one task.
    """
    model = make_model(config.arch, stream.input_shape, stream.num_outputs, seed=seed)
    optimizer = method.make_optimizer(list(model.parameters()))
    task = stream.tasks[0]
    steps, accuracies, losses = [0], [accuracy(model, task)], [test_loss(model, task)]

    def on_step(taken: int, trained: nn.Module) -> None:
        if progress is not None:
            progress(1)
        if taken % config.eval_every == 0 or taken == config.iters:
            steps.append(taken)
            accuracies.append(accuracy(trained, task))
            losses.append(test_loss(trained, task))

    result = run_stream(model, optimizer, stream, config.iters, batch_size=config.batch_size, seed=seed, on_step=on_step)
    return {
        "test_accuracy": accuracies[-1],
        "test_loss": losses[-1],
        "train_loss": float(np.mean(result.losses[-min(config.eval_every, config.iters) :])),
        "seconds": result.seconds,
        "boundaries_found": boundaries_found(optimizer, model),
        "losses": rounded(result.losses),
        "curve": {"steps": steps, "test_accuracy": rounded(accuracies), "test_loss": rounded(losses)},
    }


def train_table(summary: dict[str, dict[str, dict[str, float]]], found: bool = False) -> str:
    """The markdown table: one row per optimizer, mean ± std over seeds; with ``found``, also the
    task boundaries each optimizer marked itself."""
    rows = [
        [
            f"`{name}`",
            format_mean_std(stats["test_accuracy"]),
            format_mean_std(stats["test_loss"]),
            format_mean_std(stats["train_loss"]),
            format_mean_std(stats["seconds"], digits=1),
            *([format_mean_std(stats["boundaries_found"], digits=1)] if found else []),
        ]
        for name, stats in summary.items()
    ]
    header = ["optimizer", "test accuracy", "test loss", "train loss (last steps)", "train seconds"]
    return markdown_table(header + (["boundaries found"] if found else []), rows)


def run_train(
    config: TrainConfig,
    methods: dict[str, Method],
    out: str | Path,
    resume: bool = False,
    progress: Progress | None = None,
    notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; write ``results.json``, ``results.md`` and ``curves.png`` into ``out``
    (see :func:`~lto_core.bench.common.run_benchmark`)."""

    def prepare(seed: int) -> Stream:
        return single_task_stream(load_dataset(config.data, seed))

    def run_one(name: str, method: Method, seed: int, stream: Stream) -> dict[str, Any]:
        return run_train_once(config, method, seed, stream, progress)

    heading = (
        f"`lto bench train`: {config.data}, all classes in one task, {config.arch}, {config.iters} steps of "
        f"batch {config.batch_size}, {config.seeds} seed(s); mean ± std over seeds"
        + ("; LTO in task-free mode (boundaries='auto')" if config.no_boundaries else "")
    )
    return run_benchmark(
        "train",
        asdict(config),
        methods,
        out,
        seeds=config.seeds,
        steps_per_run=config.iters,
        prepare=prepare,
        run_one=run_one,
        metrics=(*METRICS, "boundaries_found"),
        table=functools.partial(train_table, found=config.no_boundaries),
        heading=heading,
        plot=plot_train,
        resume=resume,
        progress=progress,
        notes=notes,
    )
