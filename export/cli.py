"""The ``lto`` command line: demo, export, inspect, validate (and the verbs of later modules)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lto")
def main() -> None:
    """lto: a learned optimizer for continual learning."""


@main.command()
@click.option("--tasks", default=5, show_default=True, help="Tasks in the split-digits stream.")
@click.option("--iters", default=300, show_default=True, help="Training steps per task.")
@click.option("--lr", default=1e-3, show_default=True, help="Learning rate for both optimizers.")
@click.option("--seed", default=0, show_default=True)
def demo(tasks: int, iters: int, lr: float, seed: int) -> None:
    """Train an MLP through a continual split-digits stream with Adam and with LTO; print ACC/BWT."""
    from lto_export.demo import run_demo
    from lto_runtime.model import read_optimizer_file, default_model_path

    _, spec = read_optimizer_file(default_model_path())
    click.echo(f"split digits (scikit-learn), {tasks} task-incremental tasks, {iters} steps each, lr={lr}, MLP, seed {seed}")
    click.echo(f"LTO optimizer: packaged default, {_provenance(spec.meta_train)}")
    click.echo(f"{'optimizer':<10} {'ACC':>7} {'BWT':>8} {'FWT':>7} {'seconds':>8}")
    for run in run_demo(tasks, iters, lr, seed):
        r = run.result
        click.echo(f"{run.name:<10} {r.acc:7.3f} {r.bwt:+8.3f} {r.fwt:+7.3f} {r.seconds:8.1f}")
    click.echo("ACC: mean accuracy over all tasks at the end; BWT < 0 means forgetting (GEM metrics).")


def _provenance(meta_train: dict) -> str:
    if not meta_train.get("meta_trained", False):
        return "NOT meta-trained: zero output head, computes exactly Adam"
    return "meta-trained: " + ", ".join(f"{k}={v}" for k, v in sorted(meta_train.items()) if k != "meta_trained")


@main.command("export")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="Checkpoint .safetensors (default: the packaged one).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Where to write the .onnx file.")
def export_cmd(checkpoint: str | None, out: str) -> None:
    """Export a checkpoint's step graph to one self-contained ONNX optimizer file."""
    from lto_core.checkpoint import DEFAULT_CHECKPOINT
    from lto_export.onnx_export import export_onnx

    path = export_onnx(out, checkpoint or DEFAULT_CHECKPOINT)
    click.echo(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False), required=False)
def inspect(file: str | None) -> None:
    """Print an optimizer file's metadata, inputs/outputs, size and the available providers.

    FILE defaults to the packaged default optimizer.
    """
    import onnxruntime as ort

    from lto_runtime.model import default_model_path, read_optimizer_file

    path = Path(file) if file else default_model_path()
    model, spec = _load_or_exit(path, read_optimizer_file)
    click.echo(f"file: {path} ({path.stat().st_size / 1024:.1f} KiB)")
    click.echo(f"optimizer: {_provenance(spec.meta_train)}")
    for prop in model.metadata_props:
        click.echo(f"  {prop.key}: {prop.value}")
    click.echo(f"opset: {max(o.version for o in model.opset_import if o.domain in ('', 'ai.onnx'))}")
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for v in values:
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
            click.echo(f"  {kind} {v.name}: float32 {dims}")
    click.echo(f"onnxruntime: {_ort_distribution()} {ort.__version__}; available providers: {', '.join(ort.get_available_providers())}")


def _ort_distribution() -> str:
    from importlib import metadata

    for dist in ("onnxruntime-gpu", "onnxruntime"):
        try:
            metadata.version(dist)
            return dist
        except metadata.PackageNotFoundError:
            continue
    return "onnxruntime (unknown distribution)"


def _load_or_exit(path, loader):
    from lto_runtime.model import OptimizerFileError

    try:
        return loader(path)
    except (OptimizerFileError, FileNotFoundError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="Checkpoint the file was exported from (default: the packaged one).")
@click.option("--steps", default=60, show_default=True, help="Length of the training trajectory to compare along.")
def validate(file: str, checkpoint: str | None, steps: int) -> None:
    """Run FILE and the PyTorch step on the same inputs; fail if they differ by more than 1e-5.

    Updates and moments are compared absolutely; values above 1 (importance) relative to their size.
    """
    from lto_core.checkpoint import DEFAULT_CHECKPOINT
    from lto_export.validate import TOLERANCE, validate_file

    report = _load_or_exit(file, lambda f: validate_file(f, checkpoint or DEFAULT_CHECKPOINT, steps))
    click.echo("difference = max |onnx - torch| / max(1, |torch|) over updates and state")
    click.echo(f"random windows:        {report.random_difference:.3e}")
    click.echo(f"trajectory ({report.trajectory_steps} steps): {report.trajectory_difference:.3e}")
    click.echo(f"checkpoint sha256 matches file metadata: {report.checkpoint_matches}")
    click.echo(f"{'PASS' if report.passed else 'FAIL'} (tolerance {TOLERANCE:g})")
    if not report.passed:
        sys.exit(1)


if __name__ == "__main__":
    main()
