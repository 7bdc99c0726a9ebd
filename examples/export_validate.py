"""Make your own optimizer file, export it to ONNX, validate it, and train with it.

The step graph's network is set by hand to a simple rule, instead of being meta-trained: every
token gets the same coefficients, so each element follows Adam gated by the importance ``P =
log(1 + Omega)`` that task boundaries consolidate, plus a pull back toward its value at the last
boundary (EWC-like),

    update = -lr * (2 * sigmoid(-c * P) * adam_direction + rho * P * (theta - theta*) / rms_window(theta)),

so an element that mattered for earlier tasks moves less, and before the first boundary (no
importance yet) the rule is exactly Adam. The script saves it as a checkpoint, exports the ONNX
file, checks the file against the PyTorch step, and runs it through a short continual stream
beside Adam and the packaged default.

    python examples/export_validate.py --out-dir my_optimizer            # 60-step validation, 200 steps per task
    python examples/export_validate.py --out-dir my_optimizer --quick    # 10-step validation, 20 steps per task (CI)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from lto_adapters.torch import LTO
from lto_core import StepGraph, save_checkpoint
from lto_core.continual import run_stream
from lto_core.data import load_digits
from lto_core.models import make_model
from lto_core.streams import make_stream
from lto_export import export_onnx
from lto_export.validate import TOLERANCE, validate_file
from lto_runtime import read_optimizer_file


# --8<-- [start:gate]
def importance_gate(c: float, rho: float) -> StepGraph:
    """A step graph whose network gives every token the coefficients ``(alpha, beta, rho) = (0, c, rho)``.

    The output layer's weights are zero and its bias holds the coefficients, so nothing the
    network reads (and none of its random hidden weights) changes them.
    """
    graph = StepGraph()  # the output layer starts at zero: exactly Adam
    with torch.no_grad():
        graph.network.out.bias.copy_(torch.tensor([0.0, c, rho]))  # gate offset, gate slope, pull
    return graph
# --8<-- [end:gate]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10-step validation and 20 steps per task (for CI)")
    parser.add_argument("--out-dir", type=Path, default=None, help="where to write the files (default: a temporary folder)")
    parser.add_argument("--gate", type=float, default=2.0, help="c in 2*sigmoid(-c*log(1+importance))")
    parser.add_argument("--pull", type=float, default=0.0, help="rho, the pull toward the anchor (0 to 1)")
    parser.add_argument("--steps", type=int, default=200, help="training steps per task in the stream")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    steps = 20 if args.quick else args.steps
    validation_steps = 10 if args.quick else 60

    torch.manual_seed(args.seed)  # the network's unused weights are random: seed them for a reproducible file
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out_dir or Path(tmp)
        # --8<-- [start:export]
        checkpoint = save_checkpoint(
            importance_gate(args.gate, args.pull),
            out_dir / "importance_gate",
            meta_train={"meta_trained": False, "note": f"hand-set importance gate, c={args.gate}, rho={args.pull}"},
        )
        onnx_file = export_onnx(out_dir / "importance_gate.onnx", checkpoint)
        report = validate_file(onnx_file, checkpoint, steps=validation_steps)
        # --8<-- [end:export]
        _, spec = read_optimizer_file(onnx_file)
        print(f"checkpoint: {checkpoint.name} + {checkpoint.with_suffix('.json').name}")
        print(f"exported:   {onnx_file.name} ({onnx_file.stat().st_size / 1024:.1f} KiB), format {spec.format}, "
              f"window {spec.window} x chunk {spec.chunk}, meta_train {spec.meta_train}")
        print(f"validation: random windows {report.random_difference:.2e}, "
              f"{report.trajectory_steps}-step trajectory {report.trajectory_difference:.2e}, "
              f"checkpoint matches: {report.checkpoint_matches} -> {'PASS' if report.passed else 'FAIL'} (tolerance {TOLERANCE:g})")
        if not report.passed:
            raise SystemExit(1)

        # --8<-- [start:use]
        stream = make_stream(load_digits(args.seed), "permuted", "domain", 3, seed=args.seed)
        optimizers = {
            "Adam": lambda params: torch.optim.Adam(params, lr=1e-3),
            "LTO default": lambda params: LTO(params, lr=1e-3),
            "your file": lambda params: LTO(params, lr=1e-3, onnx_path=onnx_file),
        }
        print(f"\n{stream.name}, {stream.scenario}-incremental, {len(stream.tasks)} tasks, {steps} steps per task")
        print(f"{'optimizer':<12}{'ACC':>7}{'BWT':>8}")
        for name, make in optimizers.items():
            model = make_model("mlp", stream.input_shape, stream.num_outputs, seed=args.seed)
            result = run_stream(model, make(model.parameters()), stream, steps, seed=args.seed)
            print(f"{name:<12}{result.acc:7.3f}{result.bwt:+8.3f}")
        # --8<-- [end:use]


if __name__ == "__main__":
    main()
