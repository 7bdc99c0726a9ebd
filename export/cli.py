"""The ``lto`` command line: demo, export, inspect, validate (and the verbs of later modules)."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click

from lto_export.bench_cli import THREADS_HELP, bench, display_path, set_torch_threads


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lto")
def main() -> None:
    """lto: a learned optimizer for continual learning."""


@main.command()
@click.option("--tasks", default=5, show_default=True, help="Tasks in the split-digits stream.")
@click.option("--iters", type=click.IntRange(min=1), default=None, help="Training steps per task. [default: 300; --quick: 50]")
@click.option("--lr", default=1e-3, show_default=True, help="Learning rate for both optimizers.")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True, help=THREADS_HELP)
@click.option("--quick", is_flag=True, help="Fewer steps per task, for a smoke test.")
def demo(tasks: int, iters: int | None, lr: float, seed: int, threads: int, quick: bool) -> None:
    """Train an MLP through a continual split-digits stream with Adam and with LTO; print ACC/BWT."""
    from lto_export.demo import run_demo
    from lto_runtime.optimizer_file import default_model_path, read_optimizer_file

    iters = iters or (50 if quick else 300)
    set_torch_threads(threads)
    _, spec = read_optimizer_file(default_model_path())
    click.echo(f"split digits (scikit-learn), {tasks} task-incremental tasks, {iters} steps each, lr={lr}, MLP, seed {seed}")
    click.echo(f"LTO optimizer: packaged default, {spec.provenance}")
    click.echo(f"{'optimizer':<10} {'ACC':>7} {'BWT':>8} {'FWT':>7} {'seconds':>8}")
    for run in run_demo(tasks, iters, lr, seed, threads):
        r = run.result
        click.echo(f"{run.name:<10} {r.acc:7.3f} {r.bwt:+8.3f} {r.fwt:+7.3f} {r.seconds:8.1f}")
    click.echo("ACC: mean accuracy over all tasks at the end; BWT < 0 means forgetting (GEM metrics).")


@main.command("export")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="Checkpoint .safetensors (default: the packaged one).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Where to write the .onnx file.")
@click.option("--as-default", is_flag=True, help="Make this the packaged default: copy the checkpoint beside lto_core and write lto_runtime/models/default.onnx.")
@click.option("--gate-init", type=float, default=None, help="Instead of a checkpoint, a fresh network set to importance-gated Adam of this strength (0: plain Adam).")
@click.option("--pull-init", type=float, default=0.0, show_default=True, help="With --gate-init: the fresh network's pull toward the anchor (EWC-like; 0: none).")
def export_cmd(checkpoint: str | None, out: str | None, as_default: bool, gate_init: float | None, pull_init: float) -> None:
    """Export a checkpoint's step graph to one self-contained ONNX optimizer file."""
    from lto_core.checkpoint import DEFAULT_CHECKPOINT
    from lto_export.onnx_export import export_onnx, initial_checkpoint, install_default

    if as_default == (out is not None):
        raise click.UsageError("give exactly one of --out FILE or --as-default")
    if gate_init is not None and checkpoint is not None:
        raise click.UsageError("give --checkpoint or --gate-init, not both")
    if pull_init and gate_init is None:
        raise click.UsageError("--pull-init sets a fresh network: give it with --gate-init (0 for the pull alone)")
    if as_default and checkpoint is None and gate_init is None:
        raise click.UsageError("--as-default needs --checkpoint or --gate-init (the packaged default is already installed)")
    # With --out the fresh checkpoint is kept beside the file; with --as-default install_default
    # copies it beside lto_core, so it only needs a scratch folder that goes away afterwards.
    with tempfile.TemporaryDirectory(prefix="lto-init-") as scratch:
        if gate_init is not None:
            checkpoint = initial_checkpoint(gate_init, Path(out).with_suffix(".safetensors") if out else Path(scratch) / "init.safetensors", pull_init)
        path = install_default(checkpoint) if as_default else export_onnx(out, checkpoint or DEFAULT_CHECKPOINT)
    click.echo(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False), required=False)
def inspect(file: str | None) -> None:
    """Print an optimizer file's metadata, inputs/outputs, size, and the onnxruntime install (see `lto doctor`).

    FILE defaults to the packaged default optimizer.
    """
    from lto_runtime.optimizer_file import default_model_path, read_optimizer_file

    path = Path(file) if file else default_model_path()
    model, spec = _load_or_exit(path, read_optimizer_file)
    click.echo(f"file: {display_path(path)} ({path.stat().st_size / 1024:.1f} KiB)")
    click.echo(f"optimizer: {spec.provenance}")
    for prop in model.metadata_props:
        click.echo(f"  {prop.key}: {prop.value}")
    click.echo(f"opset: {max(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx'))}")
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for v in values:
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
            click.echo(f"  {kind} {v.name}: float32 {dims}")
    for line in _runtime_report(path)[0]:
        click.echo(line)


def _runtime_report(path: Path | None) -> tuple[list[str], bool]:
    """Lines on the onnxruntime install (distribution, providers, whether CUDA really loads), and
    whether CUDA loads."""
    import onnxruntime as ort

    from lto_runtime import cuda_status, onnxruntime_distributions

    dists = onnxruntime_distributions()
    lines = [
        f"onnxruntime {ort.__version__} from distribution: {', '.join(dists) or 'unknown'}",
        f"available providers: {', '.join(ort.get_available_providers())}",
    ]
    if len(dists) > 1:
        lines.append(
            f"CONFLICT: {' and '.join(dists)} are all installed; they share the onnxruntime/ folder and overwrite each other. "
            "Fix: pip uninstall -y " + " ".join(dists) + " && pip install onnxruntime-gpu (or onnxruntime for CPU)"
        )
    loads, reason = cuda_status(path)
    lines.append(f"CUDA loads: {'yes' if loads else 'no - ' + reason}")
    lines.append(f"providers='auto' runs on: {'CUDAExecutionProvider' if loads else 'CPUExecutionProvider'}")
    return lines, loads


@main.command()
def doctor() -> None:
    """Check the onnxruntime install: distribution, providers, whether CUDA really loads, torch's GPU.

    Exits with status 1 when both onnxruntime and onnxruntime-gpu are installed.
    """
    import torch

    from lto_runtime import onnxruntime_distributions

    lines, cuda_loads = _runtime_report(None)
    for line in lines:
        click.echo(line)
    click.echo(f"torch {torch.__version__}: CUDA {'available' if torch.cuda.is_available() else 'not available'}")
    gpu_ready = cuda_loads and torch.cuda.is_available()
    click.echo(f"zero-copy GPU steps (torch CUDA tensors, providers='auto'): {'yes' if gpu_ready else 'no'}")
    if not gpu_ready:
        click.echo("for a GPU: pip uninstall -y onnxruntime && pip install onnxruntime-gpu (needs CUDA and cuDNN the wheel was built for)")
    if len(onnxruntime_distributions()) > 1:
        sys.exit(1)


def _load_or_exit(path, loader):
    from lto_runtime.optimizer_file import OptimizerFileError

    try:
        return loader(path)
    except (OptimizerFileError, FileNotFoundError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="Checkpoint the file was exported from (default: the packaged one, for files made from it).")
@click.option("--steps", default=60, show_default=True, help="Length of the training trajectory to compare along.")
def validate(file: str, checkpoint: str | None, steps: int) -> None:
    """Run FILE and the PyTorch step on the same inputs; fail if they differ by more than 1e-5.

    Updates and moments are compared absolutely; values above 1 (importance) relative to their size.
    """
    from lto_core.checkpoint import DEFAULT_CHECKPOINT, checkpoint_sha256
    from lto_export.validate import TOLERANCE, validate_file
    from lto_runtime.optimizer_file import read_optimizer_file

    if checkpoint is None:
        # Compared with a checkpoint it was not made from, any file but the packaged one would FAIL
        # by differences that say nothing about the file: ask for its own checkpoint instead.
        made_from = _load_or_exit(file, read_optimizer_file)[1].checkpoint_sha256
        if made_from != checkpoint_sha256(DEFAULT_CHECKPOINT):
            raise click.UsageError(
                f"{file} was exported from a checkpoint with sha256 {made_from[:16]}..., not the packaged default; "
                "pass --checkpoint with the checkpoint `lto export --checkpoint` was given"
            )
    report = _load_or_exit(file, lambda f: validate_file(f, checkpoint or DEFAULT_CHECKPOINT, steps))
    click.echo("difference = max |onnx - torch| / max(1, |torch|) over updates and state")
    click.echo(f"random windows:        {report.random_difference:.3e}")
    click.echo(f"trajectory ({report.trajectory_steps} steps): {report.trajectory_difference:.3e}")
    click.echo(f"checkpoint sha256 matches file metadata: {report.checkpoint_matches}")
    click.echo(f"{'PASS' if report.passed else 'FAIL'} (tolerance {TOLERANCE:g})")
    if not report.passed:
        sys.exit(1)


main.add_command(bench)


def _meta_train_config(config_file: str | None):
    """The ``MetaTrainConfig`` of ``--config`` (a JSON file of overrides), or the defaults."""
    from lto_core.meta_train import MetaTrainConfig

    return MetaTrainConfig.from_dict(json.loads(Path(config_file).read_text())) if config_file else MetaTrainConfig()


@main.command("meta-train")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory (checkpoints, progress.json).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True), default=None, help="JSON overriding MetaTrainConfig fields.")
@click.option("--minutes", type=float, default=None, help="Stop before an iteration that would end past this many minutes (resume later with --resume).")
@click.option("--seed", default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--threads", default=1, show_default=True, help="torch threads (small inner models run best on one).")
def meta_train_cmd(out: str, config_file: str | None, minutes: float | None, seed: int, resume: bool, threads: int) -> None:
    """Meta-train the update network on continual streams; keeps the best checkpoint by validation.

    The result is OUT/best.safetensors (+ .json); ship it with
    `lto export --checkpoint OUT/best.safetensors --as-default`.
    """
    import torch
    from tqdm import tqdm

    from lto_core.meta_train import meta_train

    torch.set_num_threads(threads)
    config = _meta_train_config(config_file)
    command = "lto meta-train " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["meta-train"] else "lto meta-train"
    bar = tqdm(total=config.iterations, desc="meta-train", unit="population", dynamic_ncols=True)

    def report(progress, meta_loss: float) -> None:
        bar.n = progress.iteration
        last_val = next((h for h in reversed(progress.history) if "val_acc" in h), None)
        shown = {"meta_loss": f"{meta_loss:.3f}"}
        if last_val:
            shown.update(val_acc=f"{last_val['val_acc']:.3f}", val_bwt=f"{last_val['val_bwt']:+.3f}")
        shown.update(adam_acc=f"{progress.baseline['acc']:.3f}")
        bar.set_postfix(shown)

    progress = meta_train(out, config, seed=seed, minutes=minutes, resume=resume, command=command, on_iteration=report)
    bar.close()
    minutes = progress.seconds / 60
    click.echo(f"iterations {progress.iteration}/{config.iterations} ({progress.problems} problems) in {minutes:.1f} min")
    click.echo(f"validation (held-out problems): Adam ACC {progress.baseline['acc']:.3f} BWT {progress.baseline['bwt']:+.3f}")
    if progress.best_iteration > 0:
        best = next(h for h in progress.history if h["iteration"] == progress.best_iteration)
        click.echo(f"best: iteration {progress.best_iteration}, ACC {best['val_acc']:.3f} BWT {best['val_bwt']:+.3f} -> {Path(out) / 'best.safetensors'}")


@main.command("gate-sweep")
@click.option("--strengths", default="0,1,2,4,8", show_default=True,
              help="Comma-separated gate strengths (0: plain Adam); STRENGTH:PULL adds EWC's pull toward the anchor (0:1: the pull alone).")
@click.option("--checkpoint", "checkpoints", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="Also validate this network (a .safetensors checkpoint, e.g. a meta-training run's best); repeatable.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True), default=None, help="JSON overriding MetaTrainConfig fields (its validation_family is used).")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds of the validation problems, as in lto meta-train; "
              "with several, the spread of one network's ACC over validation draws (validation noise) is shown, and the spread "
              "of its difference from the first strength's on the same draws (the noise of a comparison).")
def gate_sweep_cmd(strengths: str, checkpoints: tuple[str, ...], config_file: str | None, seeds: str) -> None:
    """Validate importance-gated Adam at several strengths on lto meta-train's validation problems.

    A guide for meta-training's start (`gate_init`, `pull_init`) and for hand-set files (`lto
    export --gate-init S --pull-init P`); with `--checkpoint`, also a meta-trained network against them, on draws of
    validation problems its run never saw (other `--seeds` than the run's). Check a choice on
    unseen streams with `lto bench cl`.
    """
    import numpy as np
    import torch

    from lto_core.checkpoint import load_checkpoint
    from lto_core.evaluation import gate_sweep, validate

    values = _settings(strengths)
    if not values:
        raise click.BadParameter("give at least one strength: the first is what every row is compared with", param_hint="--strengths")
    draws = _numbers(seeds, int, "--seeds", "0,1,2")
    torch.set_num_threads(1)
    config = _meta_train_config(config_file)
    networks = [load_checkpoint(path)[0].eval() for path in checkpoints]
    runs = []
    for seed in draws:
        groups = config.validation_groups(seed)
        scores = {_setting_label(*v): score for v, score in gate_sweep(values, config.network, groups).items()}
        scores.update({path: validate(graph, groups) for path, graph in zip(checkpoints, networks)})
        runs.append(scores)
    count = config.validation_problems * config.validation_population
    first = _setting_label(*values[0])
    width = max(9, *(len(label) for label in runs[0]))
    click.echo(
        f"{'gate_init':>{width}}  {'ACC':>6}  {'std':>6}  {'BWT':>7}  {f'ACC - {first}':>9}  {'std':>6}"
        f"   ({count} validation problems per seed, seeds {seeds})"
    )
    mean = {}
    for label in runs[0]:
        accs = [run[label]["acc"] for run in runs]
        mean[label] = float(np.mean(accs))
        bwt = float(np.mean([run[label]["bwt"] for run in runs]))
        # Paired: both networks on the same draws, so what the draws share cancels.
        diffs = [run[label]["acc"] - run[first]["acc"] for run in runs]
        click.echo(
            f"{label:>{width}}  {mean[label]:.4f}  {float(np.std(accs)):.4f}  {bwt:+.4f}  "
            f"{float(np.mean(diffs)):>+9.4f}  {float(np.std(diffs)):.4f}"
        )
    best = max((_setting_label(*v) for v in values), key=mean.get)
    click.echo(f"best: gate_init {best} (ACC {mean[best]:.4f})")


def _settings(text: str) -> list[tuple[float, float]]:
    """``--strengths`` as ``(strength, pull)`` pairs (:func:`lto_core.evaluation.parse_settings`), or a usage error."""
    from lto_core.evaluation import parse_settings

    try:
        return parse_settings(text)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--strengths") from None


def _setting_label(strength: float, pull: float) -> str:
    """``2`` for a gate alone, ``0:1`` with a pull: as given to ``--strengths``."""
    return f"{strength:g}:{pull:g}" if pull else f"{strength:g}"


def _numbers(text: str, kind: type, option: str, example: str) -> list:
    """A comma-separated option as numbers, or a usage error naming the option."""
    try:
        return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers such as {example}", param_hint=option) from None


if __name__ == "__main__":
    main()
