"""The onnxruntime session of an optimizer file, running the step on the caller's buffers in place.

A session binds every buffer by its address (IOBinding), in host memory or on a CUDA device: one
code path, with the device as an argument (:meth:`OptimizerSession.run`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

from lto_runtime.optimizer_file import default_model_path, read_optimizer_file
from lto_runtime.providers import CUDA, ProviderSpec, provider_name, resolve_providers

#: Logger ``"lto_runtime"``; a new session logs, at INFO, which execution provider it runs on.
logger = logging.getLogger("lto_runtime")

#: DLPack device type codes (``__dlpack_device__()``) of the devices a run can bind buffers on.
DLPACK_DEVICES: dict[str, int] = {"cpu": 1, "cuda": 2}

_HOST = (DLPACK_DEVICES["cpu"], 0)
_FLOAT32 = np.dtype(np.float32)


def _plain_host_array(array: Any, device_type: str) -> bool:
    """A C-contiguous float32 NumPy array bound on the host: bindable as it is."""
    return device_type == "cpu" and isinstance(array, np.ndarray) and array.dtype == _FLOAT32 and array.flags.c_contiguous


def _empty(array: Any) -> bool:
    """Whether ``array`` has no elements."""
    return 0 in tuple(array.shape)


def _buffer_pointer(name: str, array: Any, device_type: str, device_id: int) -> int:
    """Address of ``array``'s first element, after checking it can be bound as it is.

    ``array`` is a NumPy array (host memory) or a tensor with ``data_ptr()`` and
    ``is_contiguous()`` (torch) that tells where it lives through the DLPack protocol
    (``__dlpack_device__``), so nothing here imports a framework.
    """
    if isinstance(array, np.ndarray):
        where, pointer, contiguous, dtype = _HOST, array.ctypes.data, array.flags.c_contiguous, array.dtype.name
    else:
        try:
            where = tuple(int(x) for x in array.__dlpack_device__())
            pointer, contiguous, dtype = array.data_ptr(), array.is_contiguous(), str(array.dtype).removeprefix("torch.")
        except AttributeError:
            raise TypeError(f"{name!r} is a {type(array).__name__}; bind a NumPy array or a torch tensor") from None
    if where != (DLPACK_DEVICES[device_type], device_id):
        raise ValueError(
            f"{name!r} lives on DLPack device {where}, but this run binds {device_type}:{device_id} "
            f"(DLPack {(DLPACK_DEVICES[device_type], device_id)}); put every buffer on the run's device"
        )
    if dtype != "float32" or not contiguous:
        raise ValueError(
            f"{name!r} is {dtype}, contiguous={contiguous}; the runtime binds buffers in place and never copies, "
            "so pass C-contiguous float32 buffers"
        )
    return pointer


def session_options(threads: int) -> ort.SessionOptions:
    """onnxruntime's options for a step: ``threads`` intra-op threads (0: onnxruntime's default),
    one inter-op thread, warnings silenced, and a pool that spins only while a run lasts."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Only onnxruntime's parallel execution mode uses an inter-op pool; 1 keeps it from taking a thread per core.
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # The pool's threads spin between the step's operators (waking a sleeping thread for each
    # of them costs more than the operator's share of the work) and stop when a run returns:
    # a pool that kept spinning would steal the cores the training framework needs between steps.
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    options.add_session_config_entry("session.force_spinning_stop", "1")
    return options


class OptimizerSession:
    """A validated optimizer file with its onnxruntime session.

    Args:
        path: the ``.onnx`` file; ``None`` for the packaged default.
        providers: see :func:`resolve_providers`.
        threads: intra-op threads for onnxruntime. The default, 1, runs the step on the calling
            thread, so it never competes with the training framework's own thread pool or with
            other processes for cores; pass more for large models on an otherwise idle machine.
            0: onnxruntime's default (one per physical core). Threads spin only while a step runs.

    Attributes:
        spec: the file's metadata.
        providers: the providers the session really uses (``session.get_providers()``), logged
            once at creation on the ``lto_runtime`` logger.

    Raises:
        RuntimeError: ``providers`` named CUDA explicitly and onnxruntime could not load it.
    """

    def __init__(
        self, path: str | os.PathLike | None = None, providers: str | Sequence[ProviderSpec] | None = None, threads: int = 1
    ) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise ValueError(f"Invalid threads: {threads!r}; pass a whole number of onnxruntime intra-op threads >= 1, or 0 for onnxruntime's default")
        model, self.spec = read_optimizer_file(default_model_path() if path is None else path)
        requested = resolve_providers(providers)
        self.session = ort.InferenceSession(model.SerializeToString(), sess_options=session_options(threads), providers=requested)
        self.providers: list[str] = self.session.get_providers()
        missing = [p for p in map(provider_name, requested) if p not in self.providers]
        if missing and providers != "auto":
            raise RuntimeError(
                f"providers={providers!r} asked for {missing}, but onnxruntime could not load them and fell back to "
                f"{self.providers}; run `lto doctor` to see why, or pass providers='auto' to fall back to CPU quietly"
            )
        if missing:
            logger.info("lto: %s is available but did not load (see `lto doctor`); using %s", missing[0], self.providers[0])
        logger.info("lto: %s runs on %s", self.spec.path, self.providers[0])
        #: The file's layout (see :class:`~lto_runtime.StepFunction`).
        self.window, self.chunk, self.refresh_every = self.spec.window, self.spec.chunk, self.spec.refresh_every

    def run(self, inputs: dict[str, Any], outputs: dict[str, Any], device_type: str = "cpu", device_id: int = 0) -> None:
        """Run one step, reading ``inputs`` and writing ``outputs`` in place, on one device.

        Every buffer is bound by its address (IOBinding), so onnxruntime reads the caller's memory
        and writes the outputs where the caller wants them: no copies either way, and with
        ``device_type="cuda"`` nothing crosses to the host. Buffers are C-contiguous float32 NumPy
        arrays or torch tensors living on ``device_type:device_id``.

        Raises:
            ValueError: unknown device, a buffer on another device, or a non-contiguous or
                non-float32 buffer (nothing is run then).
        """
        if device_type not in DLPACK_DEVICES:
            raise ValueError(f"device_type must be one of {list(DLPACK_DEVICES)}, got {device_type!r}")
        binding = self.session.io_binding()
        pointers = {
            name: None if name in inputs and _plain_host_array(array, device_type) else _buffer_pointer(name, array, device_type, device_id)
            for name, array in {**inputs, **outputs}.items()
        }
        for name, array in inputs.items():
            if pointers[name] is None:  # onnxruntime reads the array's own memory (no copy) and finds its address faster than Python
                binding.bind_cpu_input(name, array)
            elif _empty(array):  # no memory to point at (torch's data_ptr() is 0): an empty value of the same shape
                value = ort.OrtValue.ortvalue_from_shape_and_type(tuple(array.shape), np.float32, device_type, device_id)
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_input(name, device_type, device_id, np.float32, tuple(array.shape), pointers[name])
        for name, array in outputs.items():
            if _empty(array):
                binding.bind_output(name, device_type, device_id)
            else:
                binding.bind_output(name, device_type, device_id, np.float32, tuple(array.shape), pointers[name])
        self.session.run_with_iobinding(binding)

    def on_device(self, device_type: str, device_id: int = 0) -> DeviceStep:
        """This session as a step function whose buffers live on ``device_type:device_id``.

        Raises:
            ValueError: ``device_type`` is ``"cuda"`` but the session does not run on that GPU.
        """
        if device_type not in DLPACK_DEVICES:
            raise ValueError(f"device_type must be one of {list(DLPACK_DEVICES)}, got {device_type!r}")
        if device_type == "cuda":
            if CUDA not in self.providers:
                raise ValueError(f"buffers on cuda:{device_id} need a session on CUDA, this one runs on {self.providers}; pass providers='auto'")
            session_gpu = int(self.session.get_provider_options()[CUDA].get("device_id", 0))
            if session_gpu != device_id:
                raise ValueError(
                    f"buffers live on cuda:{device_id}, the session runs on cuda:{session_gpu}; "
                    f"pass providers=[('CUDAExecutionProvider', {{'device_id': {device_id}}})]"
                )
        return DeviceStep(self, device_type, device_id)


class DeviceStep:
    """An :class:`OptimizerSession` bound to one device: a step function for device-resident buffers.

    It carries the session's layout (``window``, ``chunk``, ``refresh_every``, the file's), so an
    engine built on it needs nothing else.
    """

    def __init__(self, session: OptimizerSession, device_type: str, device_id: int) -> None:
        self.session, self.device_type, self.device_id = session, device_type, device_id
        self.window, self.chunk, self.refresh_every = session.window, session.chunk, session.refresh_every

    def run(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        """:meth:`OptimizerSession.run` on this device."""
        self.session.run(inputs, outputs, self.device_type, self.device_id)
