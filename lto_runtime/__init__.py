"""lto_runtime: run an lto optimizer file with onnxruntime, for any training loop.

NumPy and onnxruntime only (never torch): load and validate a file (:class:`OptimizerSession`),
lay out tensors as token windows (:class:`TokenLayout`), hold the optimizer state and stream
chunks of windows through the step (:class:`StepEngine`).
"""

from lto_runtime.engine import StepEngine, StepFunction, hyper_row
from lto_runtime.format import FORMAT, HYPER_NAMES, SCALAR_NAMES, STATE_NAMES
from lto_runtime.layout import CTX_NAMES, TokenLayout, tensor_context
from lto_runtime.model import (
    OptimizerFileError,
    OptimizerSession,
    OptimizerSpec,
    default_model_path,
    read_optimizer_file,
    resolve_providers,
)

__version__ = "0.1.0"

__all__ = [
    "CTX_NAMES",
    "FORMAT",
    "HYPER_NAMES",
    "OptimizerFileError",
    "OptimizerSession",
    "OptimizerSpec",
    "SCALAR_NAMES",
    "STATE_NAMES",
    "StepEngine",
    "StepFunction",
    "TokenLayout",
    "default_model_path",
    "hyper_row",
    "read_optimizer_file",
    "resolve_providers",
    "tensor_context",
]
