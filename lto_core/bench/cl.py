"""``lto bench cl``: optimizers side by side on a continual-learning stream.

Within a seed every method trains a model with the same initial weights (``make_model(...,
seed=seed)``) on the same stream with the same batches (``run_stream(..., seed=seed)``); only the
optimizer (and, for EWC, its penalty) differs. Each run records the accuracy matrix ``R``, the
init accuracies ``b``, GEM's ACC, BWT and FWT (:mod:`lto_core.metrics`), the per-step training
loss, the accuracy on every task each ``eval_every`` steps, and the training wall time. With
``no_boundaries`` no method is told where a task ends; the accuracy matrix is still measured at
every task's end.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
from lto_core.bench.plots import plot_cl
from lto_core.continual import accuracy, run_stream
from lto_core.data import load_dataset
from lto_core.models import ARCHITECTURES, make_model
from lto_core.streams import SCENARIOS, STREAMS, Stream, make_stream

#: Scalars summarized over seeds, in table order.
METRICS = ("ACC", "BWT", "FWT", "seconds")


@dataclass(frozen=True)
class CLConfig:
    """What to run: data, stream, scenario, model, tasks, steps per task, seeds, batch size, how
    often (in steps) to evaluate every task for the accuracy-over-training curves, whether the methods
    are told where tasks end (``no_boundaries``: never) and over how many steps each task blends
    into the next (``gradual``; 0: at once; see :func:`~lto_core.continual.run_stream`'s ``blend``)."""

    data: str = "digits"
    stream: str = "split"
    scenario: str = "task"
    arch: str = "mlp"
    tasks: int = 5
    iters: int = 300
    seeds: int = 3
    batch_size: int = 32
    eval_every: int = 30
    no_boundaries: bool = False
    gradual: int = 0

    def __post_init__(self) -> None:
        for name, value, choices in (("stream", self.stream, STREAMS), ("scenario", self.scenario, SCENARIOS), ("arch", self.arch, ARCHITECTURES)):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose one of {choices}")
        for name in ("tasks", "iters", "seeds", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.gradual < self.iters:
            raise ValueError(f"gradual must be >= 0 and smaller than iters ({self.iters}), got {self.gradual}")


def run_cl_once(config: CLConfig, method: Method, seed: int, stream: Stream, progress: Progress | None = None) -> dict[str, Any]:
    """Train one fresh model through ``stream`` with ``method``; the record of that run.

    Keys: ``R`` (``T x T``, ``R[i][j]`` = test accuracy on task ``j`` after training task ``i``),
    ``b`` (accuracies at initialization), ``ACC = mean_j R[T][j]``,
    ``BWT = mean_{j<T} (R[T][j] - R[j][j])``, ``FWT = mean_{j>1} (R[j-1][j] - b_j)`` (GEM, 1-indexed),
    ``seconds`` (training wall time, end-of-task evaluations and EWC's Fisher included, the
    curve evaluations not), ``losses`` (every step's training loss, penalty included) and
    ``curve`` (``steps`` and the accuracy on every task at each of them, from step 0), and
    ``boundaries_found`` (the task boundaries the optimizer marked itself: LTO with
    ``boundaries="auto"``; 0 for every other method).
    """
    model = make_model(config.arch, stream.input_shape, stream.num_outputs, seed=seed)
    optimizer = method.make_optimizer(list(model.parameters()))
    regularizer = method.make_regularizer() if method.make_regularizer is not None else None
    on_task_end = getattr(regularizer, "on_task_end", None)
    on_backward = getattr(regularizer, "on_backward", None)
    steps: list[int] = []
    curve: list[list[float]] = []

    def on_step(taken: int, trained: nn.Module) -> None:
        if progress is not None:
            progress(1)
        if taken % config.eval_every == 0:
            steps.append(taken)
            curve.append([accuracy(trained, task) for task in stream.tasks])

    result = run_stream(
        model,
        optimizer,
        stream,
        config.iters,
        batch_size=config.batch_size,
        seed=seed,
        penalty=None if regularizer is None else regularizer.penalty,
        on_task_end=on_task_end,
        on_step=on_step,
        on_backward=on_backward,
        boundaries=not config.no_boundaries,
        blend=config.gradual,
    )
    return {
        "R": [rounded(row) for row in result.R],
        "b": rounded(result.b),
        "ACC": result.acc,
        "BWT": result.bwt,
        "FWT": result.fwt,
        "seconds": result.seconds,
        "boundaries_found": boundaries_found(optimizer, model),
        "losses": rounded(result.losses),
        "curve": {"steps": [0, *steps], "accuracy": [rounded(result.b), *(rounded(row) for row in curve)]},
    }


#: Separates a method from the setting of one of its grid runs: ``"ewc@ewc_lambda=1000"``.
GRID_MARK = "@"


def cl_table(summary: dict[str, dict[str, dict[str, float]]], found: bool = False) -> str:
    """The markdown table: one row per optimizer at its settings, mean ± std over seeds (with
    ``found``, also the task boundaries each marked itself); with grid runs (names holding
    :data:`GRID_MARK`), a second table of each method's best-of-grid."""
    defaults = {name: stats for name, stats in summary.items() if GRID_MARK not in name}
    rows = [
        [
            f"`{name}`",
            format_mean_std(stats["ACC"]),
            format_mean_std(stats["BWT"], signed=True),
            format_mean_std(stats["FWT"], signed=True),
            format_mean_std(stats["seconds"], digits=1),
            *([format_mean_std(stats["boundaries_found"], digits=1)] if found else []),
        ]
        for name, stats in defaults.items()
    ]
    header = ["optimizer", "ACC", "BWT", "FWT", "train seconds"] + (["boundaries found"] if found else [])
    table = markdown_table(header, rows)
    best = best_of_grid(summary)
    if not best:
        return table
    rows = [
        [f"`{name}`", f"`{choice}`", format_mean_std(summary[choice]["ACC"]), format_mean_std(summary[choice]["BWT"], signed=True), grid]
        for name, (choice, grid) in best.items()
    ]
    return (table + "\n\nBest of each method's grid by mean ACC (an oracle: chosen on these same runs, which a user does not have):\n\n"
            + markdown_table(["optimizer", "best setting", "ACC", "BWT", "grid (mean ACC)"], rows))


def best_of_grid(summary: dict[str, dict[str, dict[str, float]]]) -> dict[str, tuple[str, str]]:
    """For each method with grid runs: the run (its default or a grid run) with the highest mean ACC,
    and the grid as text, ``"setting=value: ACC, ..."`` with the default's setting shown as ``default``."""
    out = {}
    for name in (n for n in summary if GRID_MARK not in n):
        runs = [name, *(n for n in summary if n.startswith(name + GRID_MARK))]
        if len(runs) == 1:
            continue
        choice = max(runs, key=lambda n: summary[n]["ACC"]["mean"])
        grid = ", ".join(f"{n.split(GRID_MARK, 1)[1] if GRID_MARK in n else 'default'}: {summary[n]['ACC']['mean']:.3f}" for n in runs)
        out[name] = (choice, grid)
    return out


def not_run_text(not_run: dict[str, str]) -> str:
    """``{"ewc": "needs task boundaries", "si": "needs task boundaries"}`` ->
    ``"needs task boundaries: ewc, si (not run)"``, one sentence per reason; ``""`` for none."""
    reasons: dict[str, list[str]] = {}
    for name, why in not_run.items():
        reasons.setdefault(why, []).append(name)
    return "; ".join(f"{why}: {', '.join(names)} (not run)" for why, names in reasons.items())


def _defaults_only(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` without the grid runs (the plots show each method at its settings)."""
    return {
        **payload,
        "records": [r for r in payload["records"] if GRID_MARK not in r["optimizer"]],
        "summary": {n: s for n, s in payload["summary"].items() if GRID_MARK not in n},
    }


def _plot_defaults(payload: dict[str, Any], out: Path) -> list[Path]:
    return plot_cl(_defaults_only(payload), out)


def run_cl(
    config: CLConfig,
    methods: dict[str, Method],
    out: str | Path,
    resume: bool = False,
    progress: Progress | None = None,
    notes: dict[str, Any] | None = None,
    not_run: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the benchmark; write ``results.json``, ``results.md``, ``heatmaps.png``,
    ``task_accuracy.png`` and ``loss.png`` into ``out`` (see :func:`~lto_core.bench.common.run_benchmark`).

    ``not_run`` (``{method: why}``): methods left out of this run, recorded in the configuration
    and said under the table (``needs task boundaries: ewc, si (not run)``).
    """

    def prepare(seed: int) -> Stream:
        return make_stream(load_dataset(config.data, seed), config.stream, config.scenario, config.tasks, seed=seed)

    def run_one(name: str, method: Method, seed: int, stream: Stream) -> dict[str, Any]:
        return run_cl_once(config, method, seed, stream, progress)

    setting = ", no task boundaries" if config.no_boundaries else ""
    setting += f", each task blending into the next over {config.gradual} steps" if config.gradual else ""
    heading = (
        f"`lto bench cl`: {config.stream} {config.data}, {config.scenario}-incremental, {config.tasks} tasks x "
        f"{config.iters} steps{setting}, {config.arch}, {config.seeds} seed(s); mean ± std over seeds"
    )
    left_out = not_run_text(not_run or {})

    def table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
        return cl_table(summary, found=config.no_boundaries) + (f"\n{left_out}\n" if left_out else "")

    return run_benchmark(
        "cl",
        {**asdict(config), "not_run": dict(not_run or {})},
        methods,
        out,
        seeds=config.seeds,
        steps_per_run=config.tasks * config.iters,
        prepare=prepare,
        run_one=run_one,
        metrics=(*METRICS, "boundaries_found"),
        table=table,
        heading=heading,
        plot=_plot_defaults,
        resume=resume,
        progress=progress,
        notes=notes,
    )
