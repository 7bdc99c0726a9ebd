"""``lto bench cl|train|speed|knowledge``: the benchmark verbs of the ``lto`` command.

This layer turns option strings into optimizer factories (it may import the adapters; the
runners in :mod:`lto_core.bench` may not) and drives a tqdm progress bar.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

import click

if TYPE_CHECKING:
    import torch

#: Optimizer names ``lto bench cl`` accepts, in the order the help lists them.
CL_OPTIMIZERS = ("sgd", "adam", "ewc", "online-ewc", "si", "gated-adam", "upgd", "lto", "lto-torch")
#: ``lto bench cl --no-boundaries``: the methods that only act at a task boundary, so are not run
#: without one (``online-ewc`` runs its task-free variant, :class:`lto_core.baselines.TaskFreeOnlineEWC`).
NEEDS_BOUNDARIES = ("ewc", "si", "gated-adam")
#: ``lto bench cl``'s default ``--optimizers``.
CL_DEFAULT_OPTIMIZERS = "sgd,adam,ewc,gated-adam,lto"
#: ``lto bench cl --no-boundaries``'s default ``--optimizers``.
CL_TASK_FREE_OPTIMIZERS = "sgd,adam,online-ewc,upgd,lto"
#: ``lto bench cl --grid``: per method, the setting varied and its small grid (the default is one
#: of the values). LTO has none: it runs untuned.
CL_GRIDS: dict[str, tuple[str, tuple[float, ...]]] = {
    "sgd": ("sgd_lr", (0.01, 0.03, 0.1)),
    "adam": ("lr", (3e-4, 1e-3, 3e-3)),
    "ewc": ("ewc_lambda", (1.0, 10.0, 100.0, 1000.0, 10000.0)),
    "online-ewc": ("ewc_lambda", (1.0, 10.0, 100.0, 1000.0, 10000.0)),
    "si": ("si_c", (0.01, 0.1, 1.0, 10.0)),
    "gated-adam": ("gate_c", (0.5, 1.0, 2.0, 4.0, 8.0)),
    "upgd": ("upgd_lr", (0.01, 0.03, 0.1)),
}
#: ``lto bench train``: one task has no boundary, so EWC and gated Adam would equal Adam.
TRAIN_OPTIMIZERS = ("sgd", "adam", "lto", "lto-torch")
#: ``lto bench speed``: the step implementations timed side by side; ``adam`` is the reference.
SPEED_OPTIMIZERS = ("lto-onnx", "lto-torch", "adam", "adam-foreach", "sgd")
#: ``lto bench knowledge``: a language model learning facts task after task.
KNOWLEDGE_OPTIMIZERS = ("adam", "adamw", "ewc", "si", "lto", "lto-torch")
#: ``lto bench knowledge --size``: the names of ``lto_core.models.GPT_SIZES`` (kept here so that
#: ``lto --help`` does not import torch; a test checks they agree).
KNOWLEDGE_SIZES = ("tiny", "small", "medium", "large")
#: Help of ``--threads`` on ``lto demo``, ``lto bench cl`` and ``lto bench train``.
THREADS_HELP = (
    "Threads for torch (torch.set_num_threads) and for LTO's onnxruntime session; 0: each library's default, "
    "one per core. Default 1: these models are small, so more threads gain little, and pools of a thread "
    "per core fight each other and any other busy process for the cores."
)


def display_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it lies under it, else as given.

    Printed output and ``results.json`` then name files the way the user sees them, not by the
    absolute path of the machine they ran on.
    """
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def set_torch_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)``, unless ``threads`` is 0 (torch's default: one per core)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def build_optimizer(
    name: str,
    params: Iterable[torch.Tensor],
    lr: float = 1e-3,
    sgd_lr: float = 0.03,
    momentum: float = 0.0,
    gate_c: float = 1.0,
    onnx_path: str | None = None,
    threads: int = 0,
    providers: str | None = None,
    upgd_lr: float = 0.03,
    boundaries: str | None = None,
) -> torch.optim.Optimizer:
    """The optimizer called ``name`` over ``params``.

    ``sgd`` uses ``sgd_lr`` and ``momentum``, ``upgd`` (:class:`lto_core.baselines.UPGD`, its other
    settings at their defaults) ``upgd_lr``; every other method uses ``lr``: ``adam``, ``ewc``, ``online-ewc`` and
    ``si`` (their penalties come separately) are ``torch.optim.Adam``, ``adamw`` ``torch.optim.AdamW``, ``adam-foreach`` is
    ``Adam(foreach=True)``, ``gated-adam`` is :class:`lto_core.baselines.GatedAdam` with
    ``gate=gate_c``; ``lto``/``lto-onnx`` is ``LTO`` on onnxruntime (``onnx_path`` or the packaged
    default file, with ``threads`` onnxruntime threads and onnxruntime ``providers``), ``lto-torch`` ``LTO(backend="torch")``;
    ``boundaries``, when given (``"auto"`` for a stream without task boundaries), is passed to ``LTO``. Module-level, so a
    ``functools.partial`` of it pickles into the speed benchmark's memory probe.
    """
    import torch

    if name == "sgd":
        return torch.optim.SGD(params, lr=sgd_lr, momentum=momentum)
    if name in ("adam", "ewc", "online-ewc", "si"):
        return torch.optim.Adam(params, lr=lr)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if name == "adam-foreach":
        return torch.optim.Adam(params, lr=lr, foreach=True)
    if name == "gated-adam":
        from lto_core.baselines import GatedAdam

        return GatedAdam(params, lr=lr, gate=gate_c)
    if name == "upgd":
        from lto_core.baselines import UPGD

        return UPGD(params, lr=upgd_lr)
    from lto_adapters.torch import LTO

    task_free = {} if boundaries is None else {"boundaries": boundaries}
    if name in ("lto", "lto-onnx"):
        return LTO(params, lr=lr, onnx_path=onnx_path, threads=threads, providers=providers, **task_free)
    if name == "lto-torch":
        return LTO(params, lr=lr, backend="torch", **task_free)
    raise ValueError(f"unknown optimizer {name!r}")


def _parse_names(value: str, allowed: tuple[str, ...], option: str) -> list[str]:
    """``"sgd, adam"`` -> ``["sgd", "adam"]``; unknown or repeated names are a usage error."""
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise click.BadParameter(f"unknown optimizer(s) {unknown or value!r}; choose from {', '.join(allowed)}", param_hint=option)
    if len(set(names)) != len(names):
        raise click.BadParameter(f"{value!r} names an optimizer twice", param_hint=option)
    return names


def _methods(
    names: list[str], lr: float, sgd_lr: float, momentum: float, ewc_lambda: float, gate_c: float, onnx_path: str | None, threads: int,
    si_c: float = 1.0, si_xi: float = 1e-3, providers: str | None = None, online_ewc_gamma: float = 1.0,
    upgd_lr: float = 0.03, online_ewc_period: int = 100, no_boundaries: bool = False, batch_size: int = 32,
):
    """``{name: Method}`` with the hyper-parameters each one really uses, for the records.

    With ``no_boundaries``, ``online-ewc`` is :class:`lto_core.baselines.TaskFreeOnlineEWC`
    (consolidating every ``online_ewc_period`` steps of ``batch_size`` examples) and LTO is built with ``boundaries="auto"``.
    """
    from lto_core.baselines import EWC, SI, UPGD, OnlineEWC, TaskFreeOnlineEWC
    from lto_core.bench import Method

    methods = {}
    for name in names:
        make = functools.partial(
            build_optimizer, name, lr=lr, sgd_lr=sgd_lr, momentum=momentum, gate_c=gate_c, onnx_path=onnx_path, threads=threads,
            providers=providers, upgd_lr=upgd_lr, boundaries="auto" if no_boundaries and name.startswith("lto") else None,
        )
        settings: dict[str, Any] = {"lr": sgd_lr, "momentum": momentum} if name == "sgd" else {"lr": lr}
        regularizer = None
        if name == "ewc":
            settings.update(base="torch.optim.Adam", ewc_lambda=ewc_lambda)
            regularizer = functools.partial(EWC, ewc_lambda)
        elif name == "online-ewc" and no_boundaries:
            settings.update(base="torch.optim.Adam", variant="task-free", ewc_lambda=ewc_lambda, online_ewc_gamma=online_ewc_gamma,
                            online_ewc_period=online_ewc_period)
            regularizer = functools.partial(TaskFreeOnlineEWC, ewc_lambda, online_ewc_gamma, online_ewc_period, batch_size)
        elif name == "online-ewc":
            settings.update(base="torch.optim.Adam", ewc_lambda=ewc_lambda, online_ewc_gamma=online_ewc_gamma)
            regularizer = functools.partial(OnlineEWC, ewc_lambda, online_ewc_gamma)
        elif name == "upgd":
            defaults = inspect.signature(UPGD).parameters
            settings = {"lr": upgd_lr, **{k: defaults[k].default for k in ("beta_utility", "sigma", "weight_decay", "seed")}}
        elif name == "si":
            settings.update(base="torch.optim.Adam", si_c=si_c, si_xi=si_xi)
            regularizer = functools.partial(SI, si_c, si_xi)
        elif name == "adamw":
            settings["weight_decay"] = 0.01  # torch.optim.AdamW's default
        elif name == "gated-adam":
            settings["gate_c"] = gate_c
        elif name.startswith("lto"):
            settings["backend"] = "torch" if name == "lto-torch" else "onnx"
            settings["file"] = "packaged default" if name == "lto-torch" or onnx_path is None else str(onnx_path)
            if no_boundaries:
                settings["boundaries"] = "auto"
        methods[name] = Method(make, regularizer, settings)
    return methods


def _lto_notes(names: Iterable[str], onnx_path: str | None) -> dict[str, Any]:
    """Where the LTO optimizer came from (its file and ``lto.meta_train`` metadata)."""
    if not any(n.startswith("lto") for n in names):
        return {}
    from lto_runtime.optimizer_file import default_model_path, read_optimizer_file

    path = Path(onnx_path) if onnx_path else default_model_path()
    try:
        _, spec = read_optimizer_file(path)
    except Exception as err:  # the runtime's own error names the file and the reason
        raise click.ClickException(str(err)) from None
    # A meta-trained file's provenance is its whole training record; the run names it in one line.
    provenance = "meta-trained (lto inspect FILE prints its record)" if spec.meta_trained else spec.provenance
    return {"lto_file": display_path(path), "lto_meta_train": spec.meta_train, "lto_provenance": provenance}


def _check_data(data: str, stream: str | None = None, scenario: str = "task", tasks: int = 1) -> None:
    """Fail before any training when the data (or the stream over it) cannot be built."""
    from lto_core.data import load_dataset
    from lto_core.streams import make_stream

    try:
        dataset = load_dataset(data, 0)
        if stream is not None:
            make_stream(dataset, stream, scenario, tasks, seed=0)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as err:
        raise click.BadParameter(str(err), param_hint="--data") from None


def _report(payload: dict[str, Any], out: Path) -> None:
    click.echo("")
    click.echo(payload["table"], nl=False)
    click.echo(f"\nwrote {out / 'results.json'} and {out / 'results.md'}")
    if "plots" in payload:
        click.echo("plots: " + ", ".join(payload["plots"]))
    else:
        click.echo(payload["plots_skipped"])


def _run_reported(run: Callable, config: Any, methods: dict, notes: dict[str, Any], total: int, label: str, out: str, resume: bool) -> None:
    """``cl`` and ``train``: name the LTO file, run under a progress bar of ``total`` steps, report."""
    if notes:
        click.echo(f"LTO optimizer: {notes['lto_file']}, {notes['lto_provenance']}")
    from tqdm import tqdm

    bar = tqdm(total=total, desc=label, unit="step", dynamic_ncols=True, mininterval=0.5)
    try:
        payload = run(config, methods, out, resume=resume, progress=bar.update, notes=notes)
    finally:
        bar.close()
    _report(payload, Path(out))


def _shared_options(default_optimizers: str, allowed: tuple[str, ...], task_free_optimizers: str | None = None):
    """Options ``cl`` and ``train`` share; with ``task_free_optimizers``, ``--optimizers`` defaults to
    ``None`` and the help names both defaults (the command picks one)."""
    if task_free_optimizers is None:
        optimizers = click.option("--optimizers", default=default_optimizers, show_default=True, help=f"Comma-separated, from: {', '.join(allowed)}.")
    else:
        optimizers = click.option("--optimizers", default=None, help=f"Comma-separated, from: {', '.join(allowed)}. "
                                  f"[default: {default_optimizers}; --no-boundaries: {task_free_optimizers}]")
    options = [
        click.option("--data", default="digits", show_default=True, help="digits | mnist1d | gaussians | PATH.npz (x_train, y_train, x_test, y_test)."),
        click.option("--arch", type=click.Choice(["mlp", "cnn", "transformer"]), default="mlp", show_default=True),
        optimizers,
        click.option("--seeds", type=click.IntRange(min=1), default=None, help="Seeds 0..N-1; each gives every optimizer the same init and batches. [default: 3; --quick: 2]"),
        click.option("--lr", type=click.FloatRange(min=0.0, min_open=True), default=1e-3, show_default=True, help="Learning rate of Adam, EWC, SI, gated Adam and LTO."),
        click.option("--sgd-lr", type=click.FloatRange(min=0.0, min_open=True), default=0.03, show_default=True, help="Learning rate of SGD."),
        click.option("--momentum", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0, show_default=True, help="SGD momentum."),
        click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True),
        click.option("--eval-every", type=click.IntRange(min=1), default=None, help="Steps between evaluations for the curves. [default: iters/10 (cl), iters/20 (train)]"),
        click.option("--onnx", "onnx_path", type=click.Path(exists=True, dir_okay=False), default=None, help="Optimizer file for `lto` (default: the packaged one)."),
        click.option("--resume", is_flag=True, help="Continue an interrupted run with the same settings in --out."),
        click.option("--quick", is_flag=True, help="Small run for a smoke test (fewer seeds and steps unless given)."),
        click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True, help=THREADS_HELP),
    ]

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


@click.group()
def bench() -> None:
    """Benchmarks: continual learning (cl), plain training (train), step speed (speed), a language model learning facts (knowledge)."""


@bench.command()
@click.option("--stream", type=click.Choice(["split", "permuted", "rotated", "remapped", "partial", "affine"]), default="split", show_default=True,
              help="How tasks differ: classes (split), input permutation (permuted), rotation (rotated), labels (remapped), a permuted share of the inputs (partial), per-feature gain and offset (affine).")
@click.option("--scenario", type=click.Choice(["task", "domain", "class"]), default="task", show_default=True, help="task-, domain- or class-incremental.")
@click.option("--tasks", type=click.IntRange(min=1), default=5, show_default=True, help="Tasks in the stream.")
@click.option("--iters", type=click.IntRange(min=1), default=None, help="Training steps per task. [default: 300; --quick: 60]")
@click.option("--ewc-lambda", type=click.FloatRange(min=0.0), default=100.0, show_default=True, help="EWC penalty strength lambda.")
@click.option("--online-ewc-gamma", type=click.FloatRange(0.0, 1.0), default=1.0, show_default=True, help="Online EWC: decay of earlier tasks' Fisher, or with --no-boundaries of earlier consolidations' (its lambda is --ewc-lambda).")
@click.option("--si-c", type=click.FloatRange(min=0.0), default=1.0, show_default=True, help="SI penalty strength c (Zenke et al. 2017, split MNIST).")
@click.option("--si-xi", type=click.FloatRange(min=0.0, min_open=True), default=1e-3, show_default=True, help="SI damping xi.")
@click.option("--gate-c", type=click.FloatRange(min=0.0), default=1.0, show_default=True, help="Gated Adam: step / (1 + c * importance).")
@click.option("--online-ewc-period", type=click.IntRange(min=1), default=100, show_default=True,
              help="Online EWC with --no-boundaries: steps between consolidations of its Fisher.")
@click.option("--upgd-lr", type=click.FloatRange(min=0.0, min_open=True), default=0.03, show_default=True, help="Learning rate of UPGD.")
@click.option("--grid", is_flag=True, help="Also run every baseline over its small grid of one setting and report its best-of-grid "
              "(an oracle chosen on these same runs) beside its default; LTO runs untuned.")
@click.option("--no-boundaries", is_flag=True, help="Tell no method where a task ends (a task-free stream): ewc, si and gated-adam need "
              "task boundaries and are not run, online-ewc consolidates every --online-ewc-period steps, LTO runs with "
              "boundaries='auto'. Accuracy is still measured at every task's end.")
@click.option("--gradual", type=click.IntRange(min=0), default=0, show_default=True, help="Steps over which each task blends into the "
              "next: at step j < N of a task, each example comes from the previous task with probability 1 - j/N. 0: tasks switch at once.")
@_shared_options(CL_DEFAULT_OPTIMIZERS, CL_OPTIMIZERS, task_free_optimizers=CL_TASK_FREE_OPTIMIZERS)
@click.option("--out", type=click.Path(file_okay=False), default="bench-results/cl", show_default=True, help="Directory for results.json, results.md and the plots.")
def cl(stream, scenario, tasks, iters, ewc_lambda, online_ewc_gamma, si_c, si_xi, gate_c, online_ewc_period, upgd_lr, grid, no_boundaries, gradual,
       data, arch, optimizers, seeds, lr, sgd_lr, momentum, batch_size, eval_every, onnx_path, resume, quick, threads, out) -> None:
    """Optimizers side by side on a continual-learning stream: ACC, BWT, FWT, curves, heatmaps.

    Within a seed every optimizer starts from the same weights and sees the same batches; the
    task boundary is signalled to every method that uses one, unless --no-boundaries.
    """
    from lto_core.bench import CLConfig, run_cl

    default = CL_TASK_FREE_OPTIMIZERS if no_boundaries else CL_DEFAULT_OPTIMIZERS
    names = _parse_names(optimizers or default, CL_OPTIMIZERS, "--optimizers")
    if no_boundaries:
        needing = [n for n in names if n in NEEDS_BOUNDARIES]
        if needing:
            raise click.BadParameter(
                f"{', '.join(needing)} {'needs' if len(needing) == 1 else 'need'} task boundaries, which --no-boundaries withholds; drop it, or drop --no-boundaries "
                "(online-ewc and upgd run without boundaries)", param_hint="--optimizers")
    iters = iters or (60 if quick else 300)
    if gradual >= iters:
        raise click.BadParameter(f"{gradual} steps of blending do not fit in a task of {iters} steps; use fewer than --iters", param_hint="--gradual")
    config = CLConfig(
        data=data,
        stream=stream,
        scenario=scenario,
        arch=arch,
        tasks=tasks,
        iters=iters,
        seeds=seeds or (2 if quick else 3),
        batch_size=batch_size,
        eval_every=eval_every or max(1, iters // 10),
        no_boundaries=no_boundaries,
        gradual=gradual,
    )
    _check_data(data, stream, scenario, tasks)
    notes = _lto_notes(names, onnx_path)
    set_torch_threads(threads)
    values = dict(lr=lr, sgd_lr=sgd_lr, momentum=momentum, ewc_lambda=ewc_lambda, gate_c=gate_c, onnx_path=onnx_path, threads=threads,
                  si_c=si_c, si_xi=si_xi, online_ewc_gamma=online_ewc_gamma, upgd_lr=upgd_lr, online_ewc_period=online_ewc_period,
                  no_boundaries=no_boundaries, batch_size=batch_size)
    methods = _methods(names, **values)
    if grid:
        methods.update(_grid_methods(names, values))
    not_run = {n: "needs task boundaries" for n in NEEDS_BOUNDARIES} if no_boundaries else {}
    run = functools.partial(run_cl, not_run=not_run)
    _run_reported(run, config, methods, notes, config.seeds * len(methods) * tasks * iters, "lto bench cl", out, resume)


def _grid_methods(names: list[str], values: dict[str, Any]) -> dict[str, Any]:
    """``{"NAME@SETTING=VALUE": Method}`` for every grid value of :data:`CL_GRIDS` other than the
    one ``values`` already runs as ``NAME``."""
    methods = {}
    for name in names:
        if name not in CL_GRIDS:
            continue
        setting, grid = CL_GRIDS[name]
        for value in grid:
            if value != values[setting]:
                methods[f"{name}@{setting}={value:g}"] = _methods([name], **{**values, setting: value})[name]
    return methods


@bench.command()
@click.option("--iters", type=click.IntRange(min=1), default=None, help="Training steps. [default: 1000; --quick: 100]")
@click.option("--no-boundaries", is_flag=True, help=(
    "Run LTO in task-free mode (boundaries='auto'): one task has no boundaries, so any it marks is false; "
    "the table gains the count."))
@_shared_options("sgd,adam,lto", TRAIN_OPTIMIZERS)
@click.option("--out", type=click.Path(file_okay=False), default="bench-results/train", show_default=True, help="Directory for results.json, results.md and curves.png.")
def train(iters, no_boundaries, data, arch, optimizers, seeds, lr, sgd_lr, momentum, batch_size, eval_every, onnx_path, resume, quick, threads, out) -> None:
    """Plain single-task training (all classes, one task): loss and accuracy curves and final figures."""
    from lto_core.bench import TrainConfig, run_train

    names = _parse_names(optimizers, TRAIN_OPTIMIZERS, "--optimizers")
    iters = iters or (100 if quick else 1000)
    config = TrainConfig(
        data=data,
        arch=arch,
        iters=iters,
        seeds=seeds or (2 if quick else 3),
        batch_size=batch_size,
        eval_every=eval_every or max(1, iters // 20),
        no_boundaries=no_boundaries,
    )
    _check_data(data)
    notes = _lto_notes(names, onnx_path)
    set_torch_threads(threads)
    methods = _methods(names, lr, sgd_lr, momentum, 0.0, 0.0, onnx_path, threads, no_boundaries=no_boundaries)
    _run_reported(run_train, config, methods, notes, config.seeds * len(names) * iters, "lto bench train", out, resume)


@bench.command()
@click.option("--size", type=click.Choice(KNOWLEDGE_SIZES), default=None, help=(
    "GPT size: tiny (2 layers, width 32, ~0.03M parameters), small (2 x 64, ~0.1M), medium (4 x 256, ~3.2M), "
    "large (8 x 1024, ~101M; for a GPU). [default: small; --quick: tiny]"))
@click.option("--tasks", type=click.IntRange(min=1), default=None, help="Tasks, each with new entities. [default: 5; --quick: 2]")
@click.option("--entities", type=click.IntRange(min=1), default=None, help="New entities per task. [default: 16; --quick: 8]")
@click.option("--relations", type=click.IntRange(1, 8), default=4, show_default=True, help="Facts per entity (distinct relations of 8).")
@click.option("--iters", type=click.IntRange(min=1), default=None, help="Training steps per task. [default: 300; --quick: 30]")
@click.option("--seeds", type=click.IntRange(min=1), default=None, help="Seeds 0..N-1; each gives its own facts, and every optimizer the same init and batches. [default: 2; --quick: 1]")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Sentences per step.")
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True), default=1e-3, show_default=True, help="Learning rate of every optimizer.")
@click.option("--ewc-lambda", type=click.FloatRange(min=0.0), default=100.0, show_default=True, help="EWC penalty strength lambda.")
@click.option("--si-c", type=click.FloatRange(min=0.0), default=1.0, show_default=True, help="SI penalty strength c.")
@click.option("--si-xi", type=click.FloatRange(min=0.0, min_open=True), default=1e-3, show_default=True, help="SI damping xi.")
@click.option("--optimizers", default="adam,adamw,ewc,si,lto", show_default=True, help=f"Comma-separated, from: {', '.join(KNOWLEDGE_OPTIMIZERS)}.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N: where the model, data and optimizer state live; on a GPU, LTO asks onnxruntime for CUDA (providers='auto').")
@click.option("--onnx", "onnx_path", type=click.Path(exists=True, dir_okay=False), default=None, help="Optimizer file for `lto` (default: the packaged one).")
@click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True, help=THREADS_HELP)
@click.option("--resume", is_flag=True, help="Continue an interrupted run with the same settings in --out.")
@click.option("--quick", is_flag=True, help="Small run for a smoke test (under a minute on 2 CPU cores).")
@click.option("--out", type=click.Path(file_okay=False), default="bench-results/knowledge", show_default=True, help="Directory for results.json, results.md, heatmaps.png and knowledge.png.")
def knowledge(size, tasks, entities, relations, iters, seeds, batch_size, lr, ewc_lambda, si_c, si_xi, optimizers, device, onnx_path, threads, resume, quick, out) -> None:
    """A GPT-style model learning synthetic facts task after task: recall (ACC, BWT, FWT), perplexity, time, memory.

    Facts (entity, relation, object) are invented offline from the seed and rendered as short
    sentences; each task brings new entities. After every task each fact is asked as
    "entity relation" and counts as recalled when every object token is the model's argmax.
    """
    import dataclasses

    import torch

    from lto_core.baselines import EWC
    from lto_core.bench.knowledge import KnowledgeConfig, run_knowledge, sentence_log_likelihood

    names = _parse_names(optimizers, KNOWLEDGE_OPTIMIZERS, "--optimizers")
    try:
        where = torch.device(device)
    except RuntimeError:
        raise click.BadParameter(f"{device!r} is not a device; use cpu, cuda or cuda:N", param_hint="--device") from None
    if where.type == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter(f"{device}: torch sees no CUDA GPU here; use --device cpu", param_hint="--device")
    if where.type not in ("cpu", "cuda"):
        raise click.BadParameter(f"{device!r}: only cpu and cuda are supported", param_hint="--device")
    config = KnowledgeConfig(
        tasks=tasks or (2 if quick else 5),
        entities=entities or (8 if quick else 16),
        relations=relations,
        size=size or ("tiny" if quick else "small"),
        iters=iters or (30 if quick else 300),
        seeds=seeds or (1 if quick else 2),
        batch_size=batch_size,
        device=str(where),
    )
    notes = _lto_notes(names, onnx_path)
    set_torch_threads(threads)
    providers = "auto" if where.type == "cuda" else None
    methods = _methods(names, lr, 0.0, 0.0, ewc_lambda, 0.0, onnx_path, threads, si_c, si_xi, providers)
    if "ewc" in methods:  # the Fisher of a language model: per-sentence log-likelihoods
        methods["ewc"] = dataclasses.replace(
            methods["ewc"], make_regularizer=functools.partial(EWC, ewc_lambda, log_likelihood=sentence_log_likelihood)
        )
    total = config.seeds * len(names) * config.tasks * config.iters
    _run_reported(run_knowledge, config, methods, notes, total, "lto bench knowledge", out, resume)


def _parse_sizes(value: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(float(s)) for s in value.split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers such as 1e5,1e6", param_hint="--sizes") from None
    if not sizes or min(sizes) < 4:
        raise click.BadParameter(f"{value!r}: every size must be at least 4 parameters", param_hint="--sizes")
    return sizes


def _onnxruntime_threads(onnx_path: str | None, threads: int) -> str:
    """How many intra-op threads the LTO adapter's onnxruntime session was given."""
    import onnxruntime as ort
    import torch

    probe = build_optimizer("lto-onnx", [torch.zeros(4, requires_grad=True)], onnx_path=onnx_path, threads=threads)
    used = probe.runtime.session.get_session_options().intra_op_num_threads
    setting = "onnxruntime's default (one per physical core)" if used == 0 else str(used)
    return f"{setting}; onnxruntime {ort.__version__}"


@bench.command()
@click.option("--sizes", default=None, help="Comma-separated parameter counts. [default: 1e5,1e6,1e7; --quick: 1e4]")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch.set_num_threads and LTO's onnxruntime threads (default: each library's choice).")
@click.option("--repeats", type=click.IntRange(min=1), default=None, help="Timed steps per size. [default: clip(2e7/size, 3, 20); --quick: 3]")
@click.option("--optimizers", default=",".join(SPEED_OPTIMIZERS), show_default=True, help="Comma-separated; adam (the reference) is always included.")
@click.option("--memory/--no-memory", default=True, show_default=True, help="Measure peak extra memory (one fresh process per optimizer and size).")
@click.option("--onnx", "onnx_path", type=click.Path(exists=True, dir_okay=False), default=None, help="Optimizer file for lto-onnx (default: the packaged one).")
@click.option("--out", type=click.Path(file_okay=False), default="bench-results/speed", show_default=True, help="Directory for results.json and results.md.")
@click.option("--iteration", type=click.Choice(["mlp"]), default=None, help="Also time whole training iterations (forward, backward, step) of a 784-400-400-10 MLP at batch 128.")
@click.option("--after-boundary", is_flag=True, help=(
    "Call task_boundary() before the timed steps (at least 30 of them), so they include a consolidation and the "
    "network's refreshes (every 10 steps); ratios are then of mean times."))
@click.option("--quick", is_flag=True, help="Small run for a smoke test.")
def speed(sizes, threads, repeats, optimizers, memory, onnx_path, out, iteration, after_boundary, quick) -> None:
    """Time one optimizer step: LTO (onnx and torch backends), Adam (default and foreach), SGD.

    Same tensors, same process, same threads (with --threads). Prints median and min-max over repeats, the
    ratio to torch.optim.Adam, parameters per second and peak extra memory beyond the state.
    """
    import torch
    from tqdm import tqdm

    from lto_core.bench import SpeedConfig, run_speed

    names = _parse_names(optimizers, SPEED_OPTIMIZERS, "--optimizers")
    names = names if "adam" in names else ["adam", *names]
    config = SpeedConfig(
        sizes=_parse_sizes(sizes or ("1e4" if quick else "1e5,1e6,1e7")),
        threads=threads,
        repeats=repeats or (3 if quick else None),
        memory=memory,
        iteration=iteration,
        after_boundary=after_boundary,
    )
    if threads is not None:
        torch.set_num_threads(threads)
    notes = _lto_notes(names, onnx_path)
    click.echo(f"torch threads: {torch.get_num_threads()}")
    if "lto-onnx" in names:
        notes["onnxruntime_intra_op_threads"] = _onnxruntime_threads(onnx_path, threads or 0)
        click.echo(f"onnxruntime intra-op threads: {notes['onnxruntime_intra_op_threads']}")
    methods = {name: functools.partial(build_optimizer, name, onnx_path=onnx_path, threads=threads or 0) for name in names}
    bar = tqdm(total=len(config.sizes) * len(methods), desc="lto bench speed", unit="run", dynamic_ncols=True)

    def progress(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update(1)

    try:
        payload = run_speed(config, methods, out, reference="adam", progress=progress, notes=notes)
    finally:
        bar.close()
    click.echo("")
    click.echo(payload["table"], nl=False)
    # After a boundary the rare refresh steps are the point: compare means, as the table does.
    medians = {(r["size"], r["optimizer"]): r["mean_ms" if after_boundary else "median_ms"] for r in payload["records"]}
    # The design's targets (DESIGN.md, performance): each LTO backend's step against torch.optim.Adam's.
    targets = {"lto-onnx": "target <= 3", "lto-torch": "target <= 1.5"}
    for size in config.sizes:
        ratios = [
            f"{name} / adam = {medians[(size, name)] / medians[(size, 'adam')]:.2f} ({target})"
            for name, target in targets.items()
            if (size, name) in medians
        ]
        if ratios:
            click.echo(f"{size:.0e}: " + ", ".join(ratios))
    # After a boundary LTO's steps differ by design (consolidation, refreshes every 10 steps).
    unsteady = [] if after_boundary else [f"{r['optimizer']} @ {r['size']:.0e}" for r in payload["records"] if r["max_ms"] > 3 * r["min_ms"]]
    if unsteady:
        click.echo(
            f"warning: step times varied more than 3x between repeats for {', '.join(unsteady)}; the machine is "
            "busy or threads contend, so medians and ratios are unreliable: compare min times, or rerun with --threads 1"
        )
    if "memory_skipped" in payload:
        click.echo(f"memory not measured: {payload['memory_skipped']}")
    click.echo(f"wrote {Path(out) / 'results.json'} and {Path(out) / 'results.md'}")


@bench.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", type=click.Path(dir_okay=False), default="bench-results/summary.png", show_default=True, help="PNG file to write.")
def plot(runs, out) -> None:
    """ACC and BWT of several `lto bench cl` runs in one figure.

    RUNS are the --out directories of `lto bench cl` runs (or their results.json files); each
    becomes one group of bars, one bar per optimizer.
    """
    import json

    from lto_core.bench.common import plots_unavailable_message
    from lto_core.bench.plots import plot_summary

    missing = plots_unavailable_message()
    if missing is not None:
        raise click.ClickException(missing)
    payloads = []
    for run in runs:
        path = Path(run) / "results.json" if Path(run).is_dir() else Path(run)
        try:
            payload = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise click.BadParameter(f"{path}: {err}", param_hint="RUNS") from None
        if payload.get("config", {}).get("benchmark") != "cl" or "summary" not in payload:
            raise click.BadParameter(f"{path} is not the results.json of a finished `lto bench cl` run", param_hint="RUNS")
        payloads.append(payload)
    click.echo(f"wrote {plot_summary(payloads, Path(out))}")
