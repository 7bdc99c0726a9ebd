"""``lto demo``: a short continual stream on scikit-learn digits with LTO and with Adam."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lto_core.continual import StreamResult, run_stream
from lto_core.data import load_digits
from lto_core.models import make_model
from lto_core.streams import make_stream


@dataclass
class DemoResult:
    """One optimizer's run through the demo stream."""

    name: str
    result: StreamResult


def run_demo(tasks: int = 5, iters: int = 300, lr: float = 1e-3, seed: int = 0, threads: int = 1) -> list[DemoResult]:
    """Train the same MLP (same init, same batches) through a task-incremental split-digits stream
    of ``tasks`` tasks, ``iters`` steps each, once with Adam and once with LTO (whose onnxruntime
    session gets ``threads`` intra-op threads; torch's threads are the caller's to set)."""
    from lto_adapters.torch import LTO

    stream = make_stream(load_digits(seed), "split", "task", tasks, seed=seed)
    out = []
    for name, make in (("Adam", lambda p: torch.optim.Adam(p, lr=lr)), ("LTO", lambda p: LTO(p, lr=lr, threads=threads))):
        model = make_model("mlp", stream.input_shape, stream.num_outputs, seed=seed)
        out.append(DemoResult(name, run_stream(model, make(model.parameters()), stream, iters, seed=seed)))
    return out
