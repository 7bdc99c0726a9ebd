"""The optimizer-file format: input and output names, state slots, scalars, metadata keys.

These names are the contract between the step graph (built in ``lto_core``), the exported ONNX
file and the runtime that feeds it. A file whose ``lto.format`` is not :data:`FORMAT` is refused.
"""

from __future__ import annotations

from lto_runtime.layout import CTX_NAMES

#: Version of the optimizer-file format this runtime reads.
FORMAT = 1
#: Graph inputs, in order, and their shapes (``B`` is the dynamic window count).
INPUT_NAMES: tuple[str, ...] = ("grad", "param", "mask", "state", "scalars", "ctx")
#: Graph outputs, in order.
OUTPUT_NAMES: tuple[str, ...] = ("update", "new_state")
#: Optimizer state slots per element, in order.
STATE_NAMES: tuple[str, ...] = ("exp_avg", "exp_avg_sq", "importance", "anchor")
#: Per-window scalars, in order: hyper-parameters, then counters and flags.
SCALAR_NAMES: tuple[str, ...] = (
    "lr",
    "beta1",
    "beta2",
    "eps",
    "weight_decay",
    "step",
    "steps_since_boundary",
    "boundary",
    "active",
)
#: The hyper-parameters an adapter passes per tensor (the first scalars).
HYPER_NAMES: tuple[str, ...] = SCALAR_NAMES[:5]
#: ``metadata_props`` every optimizer file carries.
METADATA_KEYS: tuple[str, ...] = (
    "lto.format",
    "lto.chunk",
    "lto.window",
    "lto.state",
    "lto.scalars",
    "lto.ctx",
    "lto.version",
    "lto.checkpoint_sha256",
    "lto.meta_train",
)

__all__ = [
    "CTX_NAMES",
    "FORMAT",
    "HYPER_NAMES",
    "INPUT_NAMES",
    "METADATA_KEYS",
    "OUTPUT_NAMES",
    "SCALAR_NAMES",
    "STATE_NAMES",
]
