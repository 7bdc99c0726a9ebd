"""``lto bench speed``: the time and memory of one optimizer step, optimizers side by side.

For each size ``n`` the parameters are four float32 tensors summing to ``n`` elements (see
:func:`speed_shapes`), with fixed random gradients. In one process, with the same torch thread
count, each optimizer is built on those same tensors, stepped once untimed (lazy state, first
session run) and then timed over ``repeats`` steps (``time.perf_counter``); the report gives the
median, the min-max spread, the ratio of medians to the reference (``torch.optim.Adam`` with
default settings; of means, and with a mean column, after a task boundary: ``after_boundary``)
and parameters per second ``n / median``.

Peak extra memory is measured in a fresh process per optimizer and size, because torch and
onnxruntime allocate outside Python's allocator (``tracemalloc`` would see nothing) and freed
memory a process keeps would hide a later optimizer's peak. On Linux, the child builds the
tensors, steps a throwaway optimizer of the same kind on an 8-element tensor (so one-time
library and thread-pool initialization is not charged to the step), returns freed heap pages to
the kernel (glibc ``malloc_trim``), resets the kernel's peak-RSS mark (``5`` into
``/proc/self/clear_refs``), reads ``VmRSS``, builds the optimizer, takes ``memory_steps`` steps,
and reads ``VmHWM``:

    ``extra = VmHWM - VmRSS_before - state``,

``state`` the bytes of the tensors in the optimizer's ``state_dict()["state"]``. So ``extra`` is
what stepping costs beyond the optimizer state (session setup, buffers, temporaries), at page
granularity.
"""

from __future__ import annotations

import gc
import multiprocessing
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from lto_core.bench.common import environment, markdown_table, release_free_memory, rounded, status_kib, write_json

#: ``make(params) -> optimizer``. Must pickle (a module-level function or a ``functools.partial``
#: of one) so the memory probe can rebuild it in a fresh process.
OptimizerFactory = Callable[[list[torch.Tensor]], torch.optim.Optimizer]

_MIB = 1024.0 * 1024.0


@dataclass(frozen=True)
class SpeedConfig:
    """Sizes (total parameter counts), torch threads (``None``: torch's default), timed steps per
    size (``None``: :func:`default_repeats`), whether to measure memory, steps taken while
    measuring it, and whether the timed steps follow a task boundary."""

    sizes: tuple[int, ...] = (100_000, 1_000_000, 10_000_000)
    threads: int | None = None
    repeats: int | None = None
    memory: bool = True
    memory_steps: int = 2
    #: Also time whole training iterations of the :data:`ITERATION_MLP` model (``"mlp"``), or not (``None``).
    iteration: str | None = None
    #: Call ``task_boundary()`` (optimizers that have one) before the timed steps, so they include
    #: the boundary's consolidation and the network's refreshes; ratios are then of means.
    after_boundary: bool = False

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < 4:
            raise ValueError(f"sizes must be at least 4 parameters each, got {self.sizes}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.repeats is not None and self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.memory_steps < 1:
            raise ValueError(f"memory_steps must be >= 1, got {self.memory_steps}")
        if self.iteration not in (None, "mlp"):
            raise ValueError(f"iteration must be None or 'mlp', got {self.iteration!r}")


def default_repeats(size: int) -> int:
    """Timed steps for ``size`` parameters: ``clip(2e7 / size, 3, 20)`` (about 2e7 elements stepped)."""
    return max(3, min(20, int(2e7 // size)))


def speed_shapes(size: int) -> list[tuple[int, ...]]:
    """Four tensors summing to ``size`` elements: matrices of 40%, 30% and 20% of it (rows of 1000
    where possible) and a vector with the rest, like a model's weights and biases."""
    shapes: list[tuple[int, ...]] = []
    for fraction in (0.4, 0.3, 0.2):
        numel = max(1, int(size * fraction))
        cols = 1000 if numel >= 1000 else numel
        shapes.append((numel // cols, cols))
    shapes.append((size - sum(r * c for r, c in shapes),))
    return shapes


def make_parameters(shapes: Sequence[tuple[int, ...]], seed: int = 0) -> list[torch.Tensor]:
    """Float32 leaf tensors of ``shapes`` with fixed random values and gradients (``1e-3`` scale)."""
    generator = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=generator).requires_grad_()
        p.grad = torch.randn(shape, generator=generator) * 1e-3
        params.append(p)
    return params


#: Untimed steps after a first, untimed task boundary (``after_boundary``): enough for one refresh
#: of LTO's network, so one-time work (``torch.compile`` of the gated step) is not timed.
WARM_STEPS_AFTER_BOUNDARY = 12


def warm_up(methods: dict[str, OptimizerFactory], shapes: Sequence[tuple[int, ...]], steps: int = 3) -> None:
    """A few untimed steps of every method on parameters of ``shapes`` (its own, so the timed ones
    are not moved) before any is timed: the process's allocator adapts to the first large blocks
    freed (glibc raises its thresholds), and the method timed first would otherwise run on a colder
    allocator than the rest (at 1e6 parameters, Adam took 3.1 ms timed first and 2.0 ms timed after LTO)."""
    for make in methods.values():
        optimizer = make(make_parameters(shapes))
        for _ in range(steps):
            optimizer.step()
        del optimizer
        gc.collect()


def time_steps(optimizer: torch.optim.Optimizer, repeats: int, after_boundary: bool = False) -> list[float]:
    """Seconds of each of ``repeats`` calls to ``optimizer.step()``, after one untimed step.

    With ``after_boundary`` (optimizers with ``task_boundary()``), the untimed part also crosses
    one task boundary and :data:`WARM_STEPS_AFTER_BOUNDARY` steps, and a second boundary comes just
    before the timed steps, so the first timed step consolidates and the network refreshes every
    ``refresh_every`` steps among them, as in continual training.
    """
    optimizer.step()
    if after_boundary and hasattr(optimizer, "task_boundary"):
        optimizer.task_boundary()
        for _ in range(WARM_STEPS_AFTER_BOUNDARY):
            optimizer.step()
        optimizer.task_boundary()
    return call_seconds(optimizer.step, repeats)


def call_seconds(call: Callable[[], Any], repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls to ``call()`` (``time.perf_counter``)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


#: Layer widths of the model whose whole training iteration ``--iteration mlp`` times (MNIST-sized).
ITERATION_MLP: tuple[int, ...] = (784, 400, 400, 10)
#: Batch size of that iteration.
ITERATION_BATCH = 128


def time_iterations(make: OptimizerFactory, repeats: int, seed: int = 0) -> list[float]:
    """Seconds of each of ``repeats`` whole training iterations (zero_grad, forward, cross-entropy,
    backward, step) of a :data:`ITERATION_MLP` ReLU MLP on one random batch of :data:`ITERATION_BATCH`,
    after one untimed iteration; the model and batch are fixed by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    layers: list[torch.nn.Module] = []
    for fan_in, fan_out in zip(ITERATION_MLP[:-1], ITERATION_MLP[1:]):
        linear = torch.nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(fan_out, fan_in, generator=generator) / fan_in**0.5)
            linear.bias.zero_()
        layers += [linear, torch.nn.ReLU()]
    model = torch.nn.Sequential(*layers[:-1])
    x = torch.randn(ITERATION_BATCH, ITERATION_MLP[0], generator=generator)
    y = torch.randint(0, ITERATION_MLP[-1], (ITERATION_BATCH,), generator=generator)
    optimizer = make(list(model.parameters()))

    def iteration() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    iteration()
    return call_seconds(iteration, repeats)


def iteration_table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of whole-iteration timings: one row per optimizer."""
    cells = [
        [f"`{r['optimizer']}`", f"{r['median_ms']:.2f}", f"{r['min_ms']:.2f}–{r['max_ms']:.2f}", f"{r['ratio_to_reference']:.2f}"]
        for r in rows
    ]
    return markdown_table(["optimizer", "median ms", "min–max ms", "x reference"], cells)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the tensors in ``optimizer.state_dict()["state"]`` (the optimizer's state)."""
    total = 0
    for entry in optimizer.state_dict()["state"].values():
        total += sum(v.numel() * v.element_size() for v in entry.values() if torch.is_tensor(v) and v.dim() > 0)
    return total


def _memory_probe(connection, make: OptimizerFactory, shapes: list[tuple[int, ...]], threads: int | None, steps: int) -> None:
    """Child-process side of :func:`measure_memory`; sends ``(extra_bytes, state_bytes)`` or an error."""
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        params = make_parameters(shapes)
        # One-time process costs (libraries' lazy initialization, thread pools, onnxruntime's
        # environment, the kernels backend='torch' compiles once per process) are paid by a
        # throwaway optimizer on small tensors, not charged to the step: a part of a window and
        # whole windows, the two paths of the step.
        warmup = make(make_parameters([(8,), (1 << 14,)]))
        for _ in range(steps):
            warmup.step()
        del warmup
        gc.collect()
        release_free_memory()
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        before = status_kib("VmRSS")
        optimizer = make(params)
        for _ in range(steps):
            optimizer.step()
        peak = status_kib("VmHWM")
        state = state_bytes(optimizer)
        connection.send(("ok", (peak - before) * 1024 - state, state))
    except Exception as err:  # reported to the parent, which records why memory is missing
        connection.send(("error", f"{type(err).__name__}: {err}", 0))
    finally:
        connection.close()


def measure_memory(make: OptimizerFactory, shapes: list[tuple[int, ...]], threads: int | None, steps: int) -> tuple[int, int]:
    """Peak extra bytes of building and stepping the optimizer, and its state bytes, measured in a
    fresh process (see the module docstring).

    Raises:
        RuntimeError: the probe failed (e.g. no ``/proc``: not Linux); the message says why.
    """
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_memory_probe, args=(send, make, shapes, threads, steps))
    process.start()
    send.close()
    try:
        status, value, state = receive.recv()
    except EOFError:
        status, value, state = "error", "the probe process died before reporting", 0
    process.join()
    if status != "ok":
        raise RuntimeError(f"memory probe failed: {value}")
    return int(value), int(state)


def speed_table(rows: list[dict[str, Any]], means: bool = False) -> str:
    """The markdown table: one row per size and optimizer (with ``means``, a mean column too)."""
    cells = []
    for r in rows:
        memory = "n/a" if r["extra_memory_mib"] is None else f"{r['extra_memory_mib']:.1f}"
        state = "n/a" if r["state_memory_mib"] is None else f"{r['state_memory_mib']:.1f}"
        cells.append(
            [
                f"{r['size']:.0e}".replace("e+0", "e"),
                f"`{r['optimizer']}`",
                f"{r['median_ms']:.2f}",
                *([f"{r['mean_ms']:.2f}"] if means else []),
                f"{r['min_ms']:.2f}–{r['max_ms']:.2f}",
                f"{r['ratio_to_reference']:.2f}",
                f"{r['params_per_second']:.3g}",
                memory,
                state,
            ]
        )
    header = ["size", "optimizer", "median ms", *(["mean ms"] if means else []), "min–max ms", "x reference", "params/s", "extra MiB", "state MiB"]
    return markdown_table(header, cells)


def run_speed(
    config: SpeedConfig,
    methods: dict[str, OptimizerFactory],
    out: str | Path,
    reference: str = "adam",
    progress: Callable[[str], None] | None = None,
    notes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Time and measure every method at every size; write ``results.json`` and ``results.md``.

    ``reference`` names the method whose median the ratios divide by (whose mean, with
    ``config.after_boundary``: the rare boundary and refresh steps are then the point, and a
    median would hide them). ``progress(label)`` is told when each measurement starts. Returns the payload plus ``"table"`` (markdown).
    """
    if reference not in methods:
        raise ValueError(f"reference optimizer {reference!r} is not among {list(methods)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    rows: list[dict[str, Any]] = []
    memory_errors: list[str] = []
    for size in config.sizes:
        shapes = speed_shapes(size)
        repeats = config.repeats or (max(30, default_repeats(size)) if config.after_boundary else default_repeats(size))
        params = make_parameters(shapes)
        warm_up(methods, shapes)
        # What the ratios compare: each method's median step, or its mean after a boundary.
        compared = {}
        for name, make in methods.items():
            if progress is not None:
                progress(f"{name} @ {size:.0e}")
            optimizer = make(params)
            times = time_steps(optimizer, repeats, config.after_boundary)
            del optimizer
            gc.collect()
            median, mean = statistics.median(times), statistics.mean(times)
            compared[name] = mean if config.after_boundary else median
            row = {
                "size": size,
                "optimizer": name,
                "shapes": shapes,
                "repeats": repeats,
                "times_s": rounded(times, 7),
                "median_ms": 1e3 * median,
                "mean_ms": 1e3 * mean,
                "min_ms": 1e3 * min(times),
                "max_ms": 1e3 * max(times),
                "params_per_second": size / median,
                "extra_memory_mib": None,
                "state_memory_mib": None,
            }
            if config.memory and not memory_errors:
                try:
                    extra, state = measure_memory(make, shapes, config.threads, config.memory_steps)
                    row["extra_memory_mib"], row["state_memory_mib"] = extra / _MIB, state / _MIB
                except RuntimeError as err:
                    memory_errors.append(str(err))
            rows.append(row)
        del params
        for row in rows[-len(methods) :]:
            row["ratio_to_reference"] = compared[row["optimizer"]] / compared[reference]
    table = speed_table(rows, means=config.after_boundary)
    iterations: list[dict[str, Any]] = []
    if config.iteration == "mlp":
        repeats = config.repeats or 20
        for name, make in methods.items():
            if progress is not None:
                progress(f"{name} @ iteration")
            times = time_iterations(make, repeats)
            iterations.append({"optimizer": name, "repeats": repeats, "times_s": rounded(times, 7), "median_ms": 1e3 * statistics.median(times),
                               "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times)})
        for row in iterations:
            row["ratio_to_reference"] = row["median_ms"] / next(r["median_ms"] for r in iterations if r["optimizer"] == reference)
        table += (
            f"\nWhole training iteration (zero_grad, forward, backward, step) of a {'-'.join(map(str, ITERATION_MLP))} MLP, "
            f"batch {ITERATION_BATCH}:\n\n" + iteration_table(iterations)
        )
    payload = {
        "config": {"benchmark": "speed", **asdict(config), "reference": reference, "notes": notes or {}},
        "environment": environment(),
        "memory_method": "fresh process per measurement: VmHWM after the steps - VmRSS before building the optimizer - state bytes",
        "records": rows,
        "iteration": iterations,
    }
    if memory_errors:
        payload["memory_skipped"] = memory_errors[0]
    write_json(out / "results.json", payload)
    heading = (
        f"`lto bench speed`: one optimizer step, torch threads {torch.get_num_threads()}; "
        + (f"the timed steps follow a task boundary; median, mean and min–max over repeats; x reference = mean / mean of `{reference}`"
           if config.after_boundary else f"median and min–max over repeats; x reference = median / median of `{reference}`")
    )
    (out / "results.md").write_text(heading + "\n\n" + table)
    return {**payload, "table": table}
