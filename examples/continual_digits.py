"""Continual learning on split digits: call ``task_boundary()`` between tasks, compare with Adam.

scikit-learn's digits are cut into tasks of two classes each. A small MLP learns them one after the
other, never seeing an earlier task's data again, once with Adam and once with LTO (same initial
weights, same batches). After each task the script tests on every task, which fills the accuracy
matrix ``R[i][j]`` (accuracy on task j after training task i), and reports ACC, BWT and FWT.

    python examples/continual_digits.py            # 5 tasks, 300 steps each
    python examples/continual_digits.py --quick    # 5 tasks, 30 steps each (what CI runs)
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from lto_adapters.torch import LTO
from lto_core.continual import accuracy, masked_logits
from lto_core.data import load_digits
from lto_core.metrics import average_accuracy, backward_transfer, forward_transfer
from lto_core.models import make_model
from lto_core.streams import SCENARIOS, Stream, make_stream


def run(name: str, stream: Stream, steps: int, lr: float, batch_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train through ``stream``; return the accuracy matrix ``R`` and the accuracies at init ``b``."""
    model = make_model("mlp", stream.input_shape, stream.num_outputs, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr) if name == "Adam" else LTO(model.parameters(), lr=lr)
    batches = np.random.default_rng(seed)
    tasks = stream.tasks
    b = np.array([accuracy(model, task) for task in tasks])
    R = np.zeros((len(tasks), len(tasks)))
    # --8<-- [start:loop]
    for i, task in enumerate(tasks):
        for _ in range(steps):
            index = batches.integers(0, len(task.x_train), size=batch_size)
            x, y = torch.from_numpy(task.x_train[index]), torch.from_numpy(task.y_train[index])
            optimizer.zero_grad()
            # Task-incremental: only this task's output units compete (task.classes is None otherwise).
            loss = nn.functional.cross_entropy(masked_logits(model(x), task.classes), y)
            loss.backward()
            optimizer.step()
        R[i] = [accuracy(model, t) for t in tasks]
        if isinstance(optimizer, LTO):
            optimizer.task_boundary()  # this task is over: consolidate what it needed
    # --8<-- [end:loop]
    return R, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 steps per task instead of --steps (for CI)")
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300, help="training steps per task")
    parser.add_argument("--scenario", choices=SCENARIOS, default="class")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    steps = 30 if args.quick else args.steps

    stream = make_stream(load_digits(args.seed), "split", args.scenario, args.tasks, seed=args.seed)
    print(f"{stream.name}, {args.scenario}-incremental, {args.tasks} tasks, {steps} steps per task, lr {args.lr}")
    results = {}
    for name in ("Adam", "LTO"):
        R, b = run(name, stream, steps, args.lr, args.batch_size, args.seed)
        results[name] = (R, b)
        print(f"\n{name}: accuracy matrix R[i][j] (row i: after training task i; column j: tested on task j)")
        for i, row in enumerate(R):
            print(f"  after task {i}: " + " ".join(f"{a:.3f}" for a in row))
    print(f"\n{'optimizer':<10}{'ACC':>7}{'BWT':>8}{'FWT':>8}")
    for name, (R, b) in results.items():
        print(f"{name:<10}{average_accuracy(R):7.3f}{backward_transfer(R):+8.3f}{forward_transfer(R, b):+8.3f}")


if __name__ == "__main__":
    main()
