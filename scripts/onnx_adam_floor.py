"""What onnxruntime's own kernels cost for plain Adam: the floor under any ONNX step.

Exports Adam's part of the step alone (:func:`lto_core.step.adam_element_step` without weight decay:
the moments and the direction, the graph's branch for windows that hold no importance, and no
engine, chunk copies or update added to the parameters) as one ONNX graph, runs it in
onnxruntime on window buffers bound in place (the moments written over themselves, as the engine
does, in calls of at most 512 windows), and times it against ``torch.optim.Adam`` (default
settings) on the four tensors ``lto bench speed`` steps for that size, on the same threads, in the
same process. An optimizer file's step does this work and more, so its ratio to Adam cannot be
below this one.

    python scripts/onnx_adam_floor.py --sizes 1e6,1e7 --threads 1,2
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import onnxruntime as ort
import torch

from lto_core.bench.speed import call_seconds, make_parameters, speed_shapes
from lto_core.network import NetworkConfig
from lto_core.step import adam_element_step
from lto_runtime.engine import MAX_BATCH_WINDOWS
from lto_runtime.format import SCALAR_NAMES
from lto_runtime.session import session_options

#: Tokens per window and elements per token: the packaged network's layout.
WINDOW, CHUNK = NetworkConfig().window, NetworkConfig().chunk


class PlainAdam(torch.nn.Module):
    """Adam's moments and update ``-lr d`` for windows ``[B, W, C]`` with per-window scalars ``[B, M]``."""

    def forward(self, grad, exp_avg, exp_avg_sq, scalars):
        return adam_element_step(grad, grad, exp_avg, exp_avg_sq, None, None, None, scalars, decay=False)


def onnx_session(threads: int) -> ort.InferenceSession:
    """The exported graph in an onnxruntime session with the runtime's options (:func:`~lto_runtime.session.session_options`)."""
    example = (torch.randn(2, WINDOW, CHUNK), torch.zeros(2, WINDOW, CHUNK), torch.zeros(2, WINDOW, CHUNK), scalar_rows(2))
    windows = torch.export.Dim("windows", min=1)
    buffer = io.BytesIO()
    program = torch.onnx.export(
        PlainAdam(), example, dynamo=True, external_data=False,
        input_names=["grad", "exp_avg", "exp_avg_sq", "scalars"], output_names=["update", "new_exp_avg", "new_exp_avg_sq"],
        dynamic_shapes=({0: windows}, {0: windows}, {0: windows}, {0: windows}),
    )
    program.save(buffer)
    return ort.InferenceSession(buffer.getvalue(), sess_options=session_options(threads), providers=["CPUExecutionProvider"])


def scalar_rows(windows: int) -> torch.Tensor:
    """Per-window scalars of a stepped window: lr 1e-3, betas 0.9/0.999, eps 1e-8, step 5."""
    rows = torch.zeros(windows, len(SCALAR_NAMES))
    for name, value in {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "step": 5.0, "active": 1.0}.items():
        rows[:, SCALAR_NAMES.index(name)] = value
    return rows


def median_seconds(run, repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls, after three untimed ones."""
    for _ in range(3):
        run()
    return float(np.median(call_seconds(run, repeats)))


def run_windows(session: ort.InferenceSession, grad, exp_avg, exp_avg_sq, scalars, update) -> None:
    """One call of the graph on these NumPy window buffers (C-contiguous float32): the new moments
    written over ``exp_avg`` and ``exp_avg_sq``, the update into ``update``."""
    binding = session.io_binding()
    for name, array in (("grad", grad), ("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq), ("scalars", scalars)):
        binding.bind_cpu_input(name, array)
    for name, array in (("update", update), ("new_exp_avg", exp_avg), ("new_exp_avg_sq", exp_avg_sq)):
        binding.bind_output(name, "cpu", 0, np.float32, array.shape, array.ctypes.data)
    session.run_with_iobinding(binding)


def onnx_adam(session: ort.InferenceSession, size: int):
    """A callable running the graph over ``size`` elements (whole windows) in calls of at most 512 windows."""
    rng = np.random.default_rng(0)
    windows = -(-size // (WINDOW * CHUNK))
    grad = rng.standard_normal((windows, WINDOW, CHUNK), np.float32) * 1e-3
    exp_avg, exp_avg_sq, update = (np.zeros_like(grad) for _ in range(3))
    scalars = scalar_rows(windows).numpy()

    def run() -> None:
        for first in range(0, windows, MAX_BATCH_WINDOWS):
            part = slice(first, first + MAX_BATCH_WINDOWS)
            run_windows(session, grad[part], exp_avg[part], exp_avg_sq[part], scalars[part], update[part])

    return run


def torch_adam(size: int):
    """A callable stepping ``torch.optim.Adam`` (default settings) on ``lto bench speed``'s tensors of ``size`` elements."""
    return torch.optim.Adam(make_parameters(speed_shapes(size))).step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1e6,1e7", help="comma-separated element counts")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (onnxruntime and torch alike)")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print("| threads | size | onnxruntime Adam graph ms | torch.optim.Adam ms | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        session = onnx_session(threads)
        for size in (int(float(s)) for s in args.sizes.split(",")):
            repeats = max(3, min(args.repeats, int(2e8 // size)))
            # Alternating rounds, so drift in the machine's speed touches both alike.
            runs = {"onnx": onnx_adam(session, size), "torch": torch_adam(size)}
            rounds = {name: [] for name in runs}
            for _ in range(2):
                for name, run in runs.items():
                    rounds[name].append(median_seconds(run, repeats // 2 + 1))
            onnx_ms, torch_ms = (1e3 * float(np.mean(rounds[name])) for name in runs)
            print(f"| {threads} | {size:.0e} | {onnx_ms:.2f} | {torch_ms:.2f} | {onnx_ms / torch_ms:.2f} |", flush=True)


if __name__ == "__main__":
    main()
