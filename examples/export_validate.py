"""Make your own optimizer file, export it to ONNX, validate it, and train with it.

The step graph's update network is set by hand to a simple rule, instead of being meta-trained:
Adam whose step is gated by the importance that task boundaries consolidate,

    update = -lr * adam_direction * 2 * sigmoid(-c * log(1 + importance)),

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
from lto_core.network import ELEMENT_FEATURES
from lto_core.streams import make_stream
from lto_export import export_onnx
from lto_export.validate import TOLERANCE, validate_file
from lto_runtime import read_optimizer_file


# --8<-- [start:gate]
def importance_gate(c: float) -> StepGraph:
    """A step graph whose network outputs ``g = -c * log(1 + importance)`` and ``s = d = 0``.

    Path through the network: one embedding unit copies the ``importance`` feature (it is
    ``log(1 + importance)``, never negative, so the ReLU passes it), one head unit copies that
    unit, and the output row of the gate ``g`` reads it with weight ``-c``. Everything else that
    reaches the head is zeroed, so the transformer's token mixing does not enter.
    """
    graph = StepGraph()  # the output head starts at zero: exactly Adam
    net = graph.network
    with torch.no_grad():
        net.embed.weight[0].zero_()
        net.embed.weight[0, ELEMENT_FEATURES.index("importance")] = 1.0
        net.embed.bias[0] = 0.0
        net.element_to_head.weight.zero_()
        net.element_to_head.weight[0, 0] = 1.0
        net.token_to_head.weight.zero_()
        net.token_to_head.bias.zero_()
        net.out.weight[1, 0] = -c  # outputs are (s, g, d): row 1 is the plasticity gate g
    return graph
# --8<-- [end:gate]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10-step validation and 20 steps per task (for CI)")
    parser.add_argument("--out-dir", type=Path, default=None, help="where to write the files (default: a temporary folder)")
    parser.add_argument("--gate", type=float, default=2.0, help="c in 2*sigmoid(-c*log(1+importance))")
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
            importance_gate(args.gate),
            out_dir / "importance_gate",
            meta_train={"meta_trained": False, "note": f"hand-set importance gate, c={args.gate}"},
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
