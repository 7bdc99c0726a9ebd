"""lto_runtime: run an lto optimizer file with onnxruntime, for any training loop.

NumPy and onnxruntime only (never torch): load and validate a file (:class:`OptimizerSession`),
lay out tensors as token windows (:class:`TokenLayout`), hold the optimizer state and stream
chunks of windows through the step (:class:`StepEngine`), in host memory or, through
:class:`Buffers` a front end provides, on its device.
"""

from lto_runtime.engine import Buffers, HostBuffers, StepEngine, StepFunction, hyper_row
from lto_runtime.format import FORMAT, HYPER_NAMES, SCALAR_NAMES, STATE_NAMES
from lto_runtime.layout import CTX_NAMES, TokenLayout, tensor_context
from lto_runtime.model import (
    DeviceStep,
    OptimizerFileError,
    OptimizerSession,
    OptimizerSpec,
    cuda_status,
    default_model_path,
    onnxruntime_distributions,
    read_optimizer_file,
    resolve_providers,
)

__version__ = "0.1.0"

__all__ = [
    "Buffers",
    "CTX_NAMES",
    "DeviceStep",
    "FORMAT",
    "HYPER_NAMES",
    "HostBuffers",
    "OptimizerFileError",
    "OptimizerSession",
    "OptimizerSpec",
    "SCALAR_NAMES",
    "STATE_NAMES",
    "StepEngine",
    "StepFunction",
    "TokenLayout",
    "cuda_status",
    "default_model_path",
    "hyper_row",
    "onnxruntime_distributions",
    "read_optimizer_file",
    "resolve_providers",
    "tensor_context",
]
