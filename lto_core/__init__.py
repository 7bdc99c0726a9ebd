"""lto_core: the update network, the step function, meta-training, task families and benchmarks.

The optimizer step is the pure function :class:`StepGraph` ``(grad, param, mask, state, scalars,
ctx) -> (update, new_state)`` over token windows; with its output head at zero it is exactly Adam.
"""

from lto_core.checkpoint import DEFAULT_CHECKPOINT, checkpoint_sha256, load_checkpoint, save_checkpoint
from lto_core.network import NetworkConfig, UpdateNetwork
from lto_core.step import StepGraph
from lto_runtime.format import SCALAR_NAMES, STATE_NAMES

__all__ = [
    "DEFAULT_CHECKPOINT",
    "NetworkConfig",
    "SCALAR_NAMES",
    "STATE_NAMES",
    "StepGraph",
    "UpdateNetwork",
    "checkpoint_sha256",
    "load_checkpoint",
    "save_checkpoint",
]
