"""Record the gradient statistic of ``boundaries="auto"`` on streams and replay the shift detector on it.

``record`` trains a model with ``torch.optim.Adam`` through a stream without telling anyone where
tasks end, and saves, per step and per parameter tensor, the statistic the detector reads: the mean
of ``(g / (sqrt(v_hat) + eps))^2`` against Adam's second moment before the step
(:func:`lto_runtime.state.normalized_energy`). It does so for every combination of data source,
stream kind, model and seed asked for, plus single-task runs of the same length (plain training,
where any mark is a false one).

``score`` feeds the recordings, step by step, to :class:`lto_runtime.state.StepCounters` (the
detector every front end uses) and counts the task changes found within 100 steps and the marks
elsewhere. Recordings follow Adam's trajectory: after a mark, LTO would protect and the gradients
would differ, so this measures what the detector sees up to its first mark in each task, which is
how its constants were chosen. Use data other than what you evaluate on (the constants were set on
digits and synthetic data, never MNIST-family data).

    python scripts/shift_detection.py record --out shift-recordings
    python scripts/shift_detection.py score shift-recordings
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from lto_core.continual import run_stream
from lto_core.data import load_dataset
from lto_core.models import make_model
from lto_core.streams import make_stream
from lto_runtime.state import StepCounters, hyper_row, normalized_energy

#: (stream kind, scenario) of the recorded streams.
KINDS = {"split": "task", "permuted": "domain", "rotated": "domain"}
#: Steps after a true change within which a mark counts as finding it.
FOUND_WITHIN = 100


class RecordingAdam(torch.optim.Adam):
    """``torch.optim.Adam`` that records, before each step, every tensor's mean normalized energy."""

    def __init__(self, params) -> None:
        super().__init__(params, lr=1e-3)
        self.rows: list[list[float]] = []

    @torch.no_grad()
    def step(self, closure=None):
        row = []
        for group in self.param_groups:
            beta2, eps = group["betas"][1], group["eps"]
            for p in group["params"]:
                state = self.state.get(p)
                if not state:  # first step: no second moment yet (a boundary anyway)
                    row.append(0.0)
                    continue
                correction = 1.0 - beta2 ** float(state["step"])
                row.append(float(normalized_energy(p.grad.double(), state["exp_avg_sq"].double(), correction, eps).mean()))
        self.rows.append(row)
        return super().step(closure)


def record(out: Path, data: list[str], archs: list[str], seeds: list[int], tasks: int, steps: int) -> None:
    """One ``.npy`` per stream (``[tasks * steps, tensors]``), named ``data-kind-arch-seed``;
    kind ``stationary`` is one task of ``tasks * steps`` steps."""
    out.mkdir(parents=True, exist_ok=True)
    for name, arch, seed in itertools.product(data, archs, seeds):
        for kind, scenario in [*KINDS.items(), ("stationary", "task")]:
            path = out / f"{name}-{kind}-{arch}-{seed}.npy"
            if path.exists():
                continue
            count, length = (1, tasks * steps) if kind == "stationary" else (tasks, steps)
            torch.manual_seed(seed)
            stream = make_stream(load_dataset(name, seed), "split" if kind == "stationary" else kind, scenario, count, seed=seed)
            model = make_model(arch, stream.input_shape, stream.num_outputs, seed=seed)
            optimizer = RecordingAdam(list(model.parameters()))
            run_stream(model, optimizer, stream, length, seed=seed, boundaries=False)
            np.save(path, np.array(optimizer.rows))
            print(f"recorded {path.name}", flush=True)


def replay(rows: np.ndarray) -> list[int]:
    """Steps at which :class:`StepCounters` marks a task boundary itself (the first step aside)."""
    counters = StepCounters(rows.shape[1], refresh_every=10, boundaries="auto")
    active = np.ones(rows.shape[1], dtype=bool)
    hyper = np.tile(hyper_row(1e-3, (0.9, 0.999), 1e-8, 0.0), (rows.shape[1], 1))
    marks = []
    for step, energies in enumerate(rows):
        _, boundary, _ = counters.advance(active, hyper, energies)
        if step and boundary.any():
            marks.append(step)
    return marks


def score(directory: Path, steps: int) -> None:
    """Per recording, the changes found and the false marks; then totals per kind of stream."""
    totals: dict[str, list[int]] = {}
    for path in sorted(directory.glob("*.npy")):
        rows = np.load(path)
        marks = replay(rows)
        kind = path.stem.split("-")[1]
        changes = [] if kind == "stationary" else list(range(steps, len(rows), steps))
        found = sum(any(c <= m < c + FOUND_WITHIN for m in marks) for c in changes)
        false = sum(not any(c <= m < c + FOUND_WITHIN for c in changes) for m in marks)
        key = "-".join(path.stem.split("-")[1:3])
        total = totals.setdefault(key, [0, 0, 0, 0])
        total[0] += found
        total[1] += len(changes)
        total[2] += false
        total[3] += len(rows)
        print(f"{path.stem:40s} found {found}/{len(changes)}  false marks {false}  at {marks}")
    print()
    for key, (found, changes, false, length) in sorted(totals.items()):
        print(f"{key:24s} changes found {found}/{changes}  false marks {false} in {length} steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record", help="train with Adam and save the statistic per step and tensor")
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("--data", default="digits,hypercube,teacher")
    rec.add_argument("--archs", default="mlp,cnn,transformer")
    rec.add_argument("--seeds", default="0,1")
    rec.add_argument("--tasks", type=int, default=5)
    rec.add_argument("--steps", type=int, default=500, help="steps per task")
    sc = commands.add_parser("score", help="replay the detector on recordings")
    sc.add_argument("directory", type=Path)
    sc.add_argument("--steps", type=int, default=500, help="steps per task the recordings were made with")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "record":
        split = lambda text: [v for v in text.split(",") if v]  # noqa: E731
        record(args.out, split(args.data), split(args.archs), [int(s) for s in split(args.seeds)], args.tasks, args.steps)
    else:
        score(args.directory, args.steps)


if __name__ == "__main__":
    main()
