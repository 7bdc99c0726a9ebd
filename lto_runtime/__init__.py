"""lto_runtime: run an lto optimizer file with onnxruntime, for any training loop.

NumPy and onnxruntime only (never torch): load and validate a file (:class:`OptimizerSession`),
lay out tensors as token windows (:class:`TokenLayout`), hold the optimizer state and stream
chunks of windows through the step (:class:`StepEngine`), in host memory or, through
:class:`Buffers` a front end provides, on its device.

Importing it turns onnxruntime's telemetry off (``ORT_DISABLE_TELEMETRY=1``) unless the
environment already says otherwise.
"""

import os

# Before anything imports onnxruntime: it reads the variable once, at import, and otherwise writes a
# device id and queued telemetry events under ~/.cache/Microsoft/. lto_core, lto_adapters and the
# CLI all reach onnxruntime through this package, so this one line covers them.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from lto_runtime.engine import MAX_BATCH_WINDOWS, Buffers, HostBuffers, StepEngine, StepFunction  # noqa: E402
from lto_runtime.format import FORMAT, HYPER_NAMES, SCALAR_NAMES, STATE_NAMES, TOKEN_STATE_NAMES  # noqa: E402
from lto_runtime.layout import CTX_NAMES, TokenLayout, tensor_context  # noqa: E402
from lto_runtime.state import StepCounters, check_tensor_state, hyper_row  # noqa: E402
from lto_runtime.model import (  # noqa: E402
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
    "MAX_BATCH_WINDOWS",
    "OptimizerFileError",
    "OptimizerSession",
    "OptimizerSpec",
    "SCALAR_NAMES",
    "STATE_NAMES",
    "StepCounters",
    "StepEngine",
    "StepFunction",
    "TOKEN_STATE_NAMES",
    "TokenLayout",
    "cuda_status",
    "check_tensor_state",
    "default_model_path",
    "hyper_row",
    "onnxruntime_distributions",
    "read_optimizer_file",
    "resolve_providers",
    "tensor_context",
]
