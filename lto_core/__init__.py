"""lto_core: the update network, the step function, meta-training, task families and benchmarks.

The optimizer step is the pure function :class:`StepGraph` (gradients, parameters and state in,
update and new state out) over token windows; with its output head at zero it is exactly Adam.
"""

from lto_core.checkpoint import DEFAULT_CHECKPOINT, checkpoint_sha256, load_checkpoint, save_checkpoint
from lto_core.network import NetworkConfig, TokenNetwork
from lto_core.step import StepGraph
from lto_runtime.format import SCALAR_NAMES, STATE_NAMES

__all__ = [
    "DEFAULT_CHECKPOINT",
    "NetworkConfig",
    "SCALAR_NAMES",
    "STATE_NAMES",
    "StepGraph",
    "TokenNetwork",
    "checkpoint_sha256",
    "load_checkpoint",
    "save_checkpoint",
]
