"""What the benchmark runners share: the method description, summaries, tables and result files."""

from __future__ import annotations

import ctypes
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from lto_core.streams import Task

#: ``progress(steps)``: told how many training steps were just taken (drives a progress bar).
Progress = Callable[[int], None]


class Regularizer(Protocol):
    """A loss term with a task-boundary hook, as :class:`lto_core.baselines.EWC`.

    A regularizer may also have ``on_backward(model)``, called after every backward pass, before
    the optimizer step (:class:`lto_core.baselines.TaskFreeOnlineEWC` reads the gradients there);
    the runners call it when it is there.
    """

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """Added to every training loss."""
        ...

    def on_task_end(self, model: nn.Module, task: Task) -> None:
        """Called when ``task`` is finished, before the next one starts (never on a stream run
        without task boundaries)."""
        ...


@dataclass(frozen=True)
class Method:
    """One optimizer under test.

    Attributes:
        make_optimizer: builds the optimizer for a model's parameter list.
        make_regularizer: builds a fresh regularizer per run (EWC), or ``None``.
        settings: hyper-parameters, recorded in ``results.json`` as they were used.
    """

    make_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer]
    make_regularizer: Callable[[], Regularizer] | None = None
    settings: dict[str, Any] = field(default_factory=dict)


def boundaries_found(optimizer: torch.optim.Optimizer, model: nn.Module) -> int:
    """Task boundaries ``optimizer`` marked itself: LTO's count of consolidated boundaries with
    ``boundaries="auto"`` (with ``task_boundary()`` calls too, when a stream gives them), else 0."""
    if getattr(optimizer, "boundaries", None) != "auto":
        return 0
    return max((int(optimizer.state[p]["boundaries"]) for p in model.parameters() if p in optimizer.state), default=0)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof = 1``; 0 for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def summarize(records: Iterable[dict[str, Any]], keys: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{key: {"mean", "std", "n"}}`` of each scalar ``key`` over ``records`` (one per seed)."""
    records = list(records)
    out = {}
    for key in keys:
        mean, std = mean_std([r[key] for r in records])
        out[key] = {"mean": mean, "std": std, "n": len(records)}
    return out


def format_mean_std(stat: dict[str, float], digits: int = 3, signed: bool = False) -> str:
    """``"0.912 ± 0.004"`` (just the mean when there is one seed)."""
    spec = f"{'+' if signed else ''}.{digits}f"
    text = format(stat["mean"], spec)
    return text if stat["n"] < 2 else f"{text} ± {stat['std']:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table, numbers right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def environment() -> dict[str, Any]:
    """Versions and thread counts the numbers were measured with."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field} field")


def release_free_memory() -> None:
    """Hand freed heap pages back to the kernel (glibc ``malloc_trim``), so memory the step
    allocates shows up as RSS growth instead of silently reusing pages freed earlier."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement may under-count, never over-count
        pass


def rounded(values: Iterable[float], digits: int = 5) -> list[float]:
    """Floats rounded for a compact, readable ``results.json``."""
    return [round(float(v), digits) for v in values]


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically (an interrupted run never leaves a truncated file)."""
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(payload, indent=1))
    os.replace(partial, path)


def previous_records(path: Path, config: dict[str, Any], resume: bool) -> list[dict[str, Any]]:
    """Records of an interrupted run at ``path`` to continue from (``resume``), else none.

    Raises:
        ValueError: ``resume`` and ``path`` was written with a different configuration.
    """
    if not resume or not path.is_file():
        return []
    saved = json.loads(path.read_text())
    if saved.get("config") != json.loads(json.dumps(config)):
        raise ValueError(
            f"{path} was written with a different configuration; drop --resume to start over, or use another --out"
        )
    return saved.get("records", [])


def plots_unavailable_message() -> str | None:
    """``None`` when matplotlib imports, else the message telling the user how to get the plots."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed, so no plots were drawn; pip install 'lto[bench]' (or matplotlib) to get them"
    return None


def run_grid(
    methods: dict[str, Method],
    seeds: int,
    prepare: Callable[[int], Any],
    run_one: Callable[[str, Method, int, Any], dict[str, Any]],
    save: Callable[[list[dict[str, Any]], bool], None],
    done: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Run every method on every seed; one record per ``(optimizer, seed)``.

    ``prepare(seed)`` builds what all methods of a seed share (data, stream); ``run_one(name,
    method, seed, prepared)`` returns the record; ``save(records, complete)`` is called after each
    record so an interrupted run can be resumed; records already in ``done`` are kept, not re-run.
    """
    records = list(done)
    finished = {(r["optimizer"], r["seed"]) for r in records}
    for seed in range(seeds):
        todo = [name for name in methods if (name, seed) not in finished]
        if not todo:
            continue
        prepared = prepare(seed)
        for name in todo:
            records.append({"optimizer": name, "seed": seed, **run_one(name, methods[name], seed, prepared)})
            save(records, False)
    order = {name: i for i, name in enumerate(methods)}
    records.sort(key=lambda r: (order.get(r["optimizer"], len(order)), r["seed"]))
    save(records, True)
    return records


def run_benchmark(
    name: str,
    config: dict[str, Any],
    methods: dict[str, Method],
    out: str | Path,
    *,
    seeds: int,
    steps_per_run: int,
    prepare: Callable[[int], Any],
    run_one: Callable[[str, Method, int, Any], dict[str, Any]],
    metrics: Sequence[str],
    table: Callable[[dict[str, dict[str, dict[str, float]]]], str],
    heading: str,
    plot: Callable[[dict[str, Any], Path], list[Path]],
    resume: bool = False,
    progress: Progress | None = None,
    notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``methods`` x ``seeds`` and write ``results.json``, ``results.md`` and plots into ``out``.

    ``results.json`` holds the configuration (with each method's settings and ``notes``), the
    environment, one record per ``(optimizer, seed)`` and the ``summary`` of ``metrics`` over
    seeds. It is rewritten after every run; with ``resume`` a run of the same configuration
    continues where it stopped. Returns the final payload plus ``"table"`` (markdown) and
    ``"plots"`` (paths) or ``"plots_skipped"`` (why there are none).
    """
    if not methods:
        raise ValueError("no optimizers to benchmark; name at least one")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    full_config = {
        "benchmark": name,
        **config,
        "optimizers": {n: m.settings for n, m in methods.items()},
        "notes": notes or {},
    }
    done = previous_records(path, full_config, resume)
    if progress is not None and done:
        progress(len(done) * steps_per_run)

    def save(records: list[dict[str, Any]], complete: bool) -> None:
        write_json(path, {"config": full_config, "environment": environment(), "complete": complete, "records": records})

    records = run_grid(methods, seeds, prepare, run_one, save, done)
    summary = {n: summarize([r for r in records if r["optimizer"] == n], metrics) for n in methods}
    payload = {"config": full_config, "environment": environment(), "complete": True, "records": records, "summary": summary}
    markdown = table(summary)
    (out / "results.md").write_text(heading + "\n\n" + markdown)
    missing = plots_unavailable_message()
    if missing is None:
        payload["plots"] = [str(p) for p in plot(payload, out)]
    else:
        payload["plots_skipped"] = missing
    write_json(path, payload)
    return {**payload, "table": markdown}
