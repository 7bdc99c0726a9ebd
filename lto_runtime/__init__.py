"""lto_runtime: run an lto optimizer file with onnxruntime, for any training loop.

NumPy and onnxruntime only (never torch), one module for each thing: the optimizer file
(:mod:`~lto_runtime.optimizer_file`: reading, metadata, checks), its format's names
(:mod:`~lto_runtime.format`), execution providers (:mod:`~lto_runtime.providers`: what is
installed, what really loads), the onnxruntime session (:mod:`~lto_runtime.session`), the token
layout (:mod:`~lto_runtime.layout`: tensors as windows), the state outside the graph
(:mod:`~lto_runtime.state`) and the engine that streams chunks of windows through the step
(:mod:`~lto_runtime.engine`), in host memory or, through :class:`Buffers` a front end provides,
on its device.

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
from lto_runtime.optimizer_file import OptimizerFileError, OptimizerSpec, default_model_path, read_optimizer_file  # noqa: E402
from lto_runtime.providers import cuda_status, onnxruntime_distributions, resolve_providers  # noqa: E402
from lto_runtime.session import DeviceStep, OptimizerSession  # noqa: E402

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
