"""Continual learning without task boundaries: ``LTO(..., boundaries="auto")`` finds them itself.

scikit-learn's digits are cut into tasks of two classes each and a small MLP learns them one after
the other, but the training loop never says where one task ends: no ``task_boundary()`` call. With
``boundaries="auto"`` LTO watches the gradients and marks a task boundary itself where they shift
(their recent size, against what Adam's second moment expects, stays several times its level
since the last boundary for 10 steps); until then it is Adam.
The script trains with Adam, with LTO in task-free mode, and with LTO told where tasks end (for
reference), prints where LTO found task changes, and ACC and BWT for each.

    python examples/task_free.py            # 5 tasks, 300 steps each
    python examples/task_free.py --quick    # 3 tasks, 120 steps each (what CI runs)
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn

from lto_adapters.torch import LTO
from lto_core.continual import accuracy, masked_logits
from lto_core.data import load_digits
from lto_core.metrics import average_accuracy, backward_transfer
from lto_core.models import make_model
from lto_core.streams import SCENARIOS, Stream, make_stream


def run(name: str, stream: Stream, steps: int, lr: float, batch_size: int, seed: int) -> tuple[np.ndarray, list[int]]:
    """Train through ``stream``; return the accuracy matrix ``R`` and the steps where LTO found a
    task boundary itself."""
    model = make_model("mlp", stream.input_shape, stream.num_outputs, seed=seed)
    if name == "Adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    elif name == "LTO, told":
        optimizer = LTO(model.parameters(), lr=lr)
    else:
        # --8<-- [start:optimizer]
        optimizer = LTO(model.parameters(), lr=lr, boundaries="auto")
        # --8<-- [end:optimizer]
    batches = np.random.default_rng(seed)
    tasks = stream.tasks
    R = np.zeros((len(tasks), len(tasks)))
    first = next(model.parameters())
    found, seen, taken = [], 0, 0
    # --8<-- [start:loop]
    for i, task in enumerate(tasks):
        for _ in range(steps):
            index = batches.integers(0, len(task.x_train), size=batch_size)
            x, y = torch.from_numpy(task.x_train[index]), torch.from_numpy(task.y_train[index])
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(masked_logits(model(x), task.classes), y)
            loss.backward()
            optimizer.step()  # no task_boundary() anywhere in the loop
            taken += 1
            if name == "LTO, auto":
                # Each parameter's state counts the task boundaries consolidated so far.
                boundaries = optimizer.state[first]["boundaries"]
                if boundaries > seen:  # a task change found on this step
                    found.append(taken)
                    seen = boundaries
        R[i] = [accuracy(model, t) for t in tasks]
        if name == "LTO, told":
            optimizer.task_boundary()
    # --8<-- [end:loop]
    return R, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 tasks of 120 steps (for CI)")
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--steps", type=int, default=300, help="training steps per task")
    parser.add_argument("--scenario", choices=SCENARIOS, default="task")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tasks, steps = (3, 120) if args.quick else (args.tasks, args.steps)

    stream = make_stream(load_digits(args.seed), "split", args.scenario, tasks, seed=args.seed)
    print(f"{stream.name}, {args.scenario}-incremental, {tasks} tasks, {steps} steps per task, lr {args.lr}; no boundaries given")
    print(f"tasks change after steps {[steps * (i + 1) for i in range(tasks - 1)]}")
    results = {}
    for name in ("Adam", "LTO, auto", "LTO, told"):
        R, found = run(name, stream, steps, args.lr, args.batch_size, args.seed)
        results[name] = R
        if name == "LTO, auto":
            print(f"LTO found task changes at steps {found}")
    print(f"\n{'optimizer':<12}{'ACC':>7}{'BWT':>8}")
    for name, R in results.items():
        print(f"{name:<12}{average_accuracy(R):7.3f}{backward_transfer(R):+8.3f}")


if __name__ == "__main__":
    main()
