"""Opening an optimizer file: validation, metadata, execution providers and the onnxruntime session.

A file is refused, with :class:`OptimizerFileError` naming the file and the reason, when it is not
ONNX, fails ``onnx.checker``, keeps weights in external data, lacks or has an unknown
``lto.format``, or its inputs and outputs do not match its own metadata.

A session runs the step on the caller's buffers in place (IOBinding by address), in host memory or
on a CUDA device: one code path, with the device as an argument (:meth:`OptimizerSession.run`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime as ort

from lto_runtime.format import (
    CTX_NAMES,
    FORMAT,
    INPUT_NAMES,
    METADATA_KEYS,
    OUTPUT_NAMES,
    SCALAR_NAMES,
    STATE_NAMES,
    TOKEN_STATE_NAMES,
)

#: Logger ``"lto_runtime"``; a new session logs, at INFO, which execution provider it runs on.
logger = logging.getLogger("lto_runtime")


class OptimizerFileError(ValueError):
    """An optimizer file that the runtime will not run; the message names the file and why."""


def default_model_path() -> Path:
    """Path of the optimizer file that ships inside the package."""
    return Path(str(resources.files("lto_runtime") / "models" / "default.onnx"))


@dataclass(frozen=True)
class OptimizerSpec:
    """What an optimizer file declares in its ``lto.*`` metadata."""

    path: Path
    format: int
    chunk: int
    window: int
    refresh_every: int
    state_names: tuple[str, ...]
    token_state_names: tuple[str, ...]
    scalar_names: tuple[str, ...]
    ctx_names: tuple[str, ...]
    version: str
    checkpoint_sha256: str
    meta_train: dict

    @property
    def meta_trained(self) -> bool:
        """True when the file's provenance says its network was meta-trained."""
        return bool(self.meta_train.get("meta_trained", False))

    @property
    def provenance(self) -> str:
        """One line on where the file's network came from, from its ``lto.meta_train`` record."""
        if not self.meta_trained:
            note = self.meta_train.get("note")
            return "NOT meta-trained" + (f" ({note})" if note else "")
        return "meta-trained: " + ", ".join(f"{k}={v}" for k, v in sorted(self.meta_train.items()) if k != "meta_trained")


def _refuse(path: Path, reason: str) -> OptimizerFileError:
    return OptimizerFileError(f"optimizer file {path}: {reason}")


def _uses_external_data(model: onnx.ModelProto) -> bool:
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors.extend(a.t for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in tensors)


def _parse_metadata(path: Path, model: onnx.ModelProto) -> OptimizerSpec:
    meta = {p.key: p.value for p in model.metadata_props}
    if "lto.format" not in meta:
        raise _refuse(path, "missing lto.format metadata; this is not an lto optimizer file (make one with `lto export`)")
    if meta["lto.format"] != str(FORMAT):
        raise _refuse(
            path, f"unknown lto.format {meta['lto.format']!r}; this runtime reads format {FORMAT} (re-export with `lto export`)"
        )
    missing = [k for k in METADATA_KEYS if k not in meta]
    if missing:
        raise _refuse(path, f"missing metadata {', '.join(missing)}")
    try:
        spec = OptimizerSpec(
            path=path,
            format=FORMAT,
            chunk=int(meta["lto.chunk"]),
            window=int(meta["lto.window"]),
            refresh_every=int(meta["lto.refresh_every"]),
            state_names=tuple(json.loads(meta["lto.state"])),
            token_state_names=tuple(json.loads(meta["lto.token_state"])),
            scalar_names=tuple(json.loads(meta["lto.scalars"])),
            ctx_names=tuple(json.loads(meta["lto.ctx"])),
            version=meta["lto.version"],
            checkpoint_sha256=meta["lto.checkpoint_sha256"],
            meta_train=json.loads(meta["lto.meta_train"]),
        )
    except (ValueError, TypeError) as err:
        raise _refuse(path, f"malformed lto metadata: {err}") from None
    if min(spec.chunk, spec.window, spec.refresh_every) < 1:
        raise _refuse(path, f"lto.chunk, lto.window and lto.refresh_every must be >= 1, got {spec.chunk}, {spec.window}, {spec.refresh_every}")
    expected = {"lto.state": STATE_NAMES, "lto.token_state": TOKEN_STATE_NAMES, "lto.scalars": SCALAR_NAMES, "lto.ctx": CTX_NAMES}
    for key, got in zip(expected, (spec.state_names, spec.token_state_names, spec.scalar_names, spec.ctx_names)):
        if got != expected[key]:
            raise _refuse(path, f"{key} is {list(got)}, format {FORMAT} requires {list(expected[key])}")
    return spec


def _dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
    """Static dims as ints, symbolic ones as None."""
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def _check_signature(path: Path, model: onnx.ModelProto, spec: OptimizerSpec) -> None:
    w, c = spec.window, spec.chunk
    element = [None, w, c]
    tokens = [None, w, len(spec.token_state_names)]
    want = {
        **{name: element for name in ("grad", "param", "mask", *STATE_NAMES, "update", "new_exp_avg", "new_exp_avg_sq")},
        "consolidated_log_importance": element,
        "consolidated_anchor": element,
        "coefficients": tokens,
        "refreshed_coefficients": tokens,
        "scalars": [None, len(spec.scalar_names)],
        "ctx": [None, len(spec.ctx_names)],
        "boundary_windows": [None],
        "refresh_windows": [None],
    }
    inputs = {v.name: v for v in model.graph.input}
    outputs = {v.name: v for v in model.graph.output}
    if list(inputs) != list(INPUT_NAMES) or list(outputs) != list(OUTPUT_NAMES):
        raise _refuse(
            path, f"graph has inputs {list(inputs)} and outputs {list(outputs)}; expected {list(INPUT_NAMES)} -> {list(OUTPUT_NAMES)}"
        )
    for name, value in {**inputs, **outputs}.items():
        got = _dims(value)
        ok = len(got) == len(want[name]) and all(x is None or x == y for x, y in zip(want[name], got))
        if not ok or got[want[name].index(None)] is not None:
            shown = ["B" if d is None else d for d in got]
            expected = ["B" if d is None else d for d in want[name]]
            raise _refuse(path, f"{name} has shape {shown}, but the metadata implies {expected} with a dynamic B")


def read_optimizer_file(path: str | os.PathLike) -> tuple[onnx.ModelProto, OptimizerSpec]:
    """Load and validate an optimizer file without creating a session.

    Raises:
        FileNotFoundError: no file at ``path``.
        OptimizerFileError: the file is not a valid lto optimizer file (see the module docstring).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"optimizer file {path} not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # onnx raises protobuf's DecodeError and others
        raise _refuse(path, f"not a readable ONNX model ({type(err).__name__}: {err})") from None
    if _uses_external_data(model):
        raise _refuse(path, "weights are stored as external data; export one self-contained file (external_data=False)")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        raise _refuse(path, f"onnx.checker failed: {str(err).splitlines()[0]}") from None
    spec = _parse_metadata(path, model)
    _check_signature(path, model, spec)
    return model, spec


#: Provider names accepted in ``providers=[...]``: a name, or ``(name, options)`` as onnxruntime takes.
ProviderSpec = str | tuple[str, dict]

#: DLPack device type codes (``__dlpack_device__()``) of the devices a run can bind buffers on.
DLPACK_DEVICES: dict[str, int] = {"cpu": 1, "cuda": 2}

_HOST = (DLPACK_DEVICES["cpu"], 0)
_FLOAT32 = np.dtype(np.float32)
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def _provider_name(provider: ProviderSpec) -> str:
    return provider if isinstance(provider, str) else provider[0]


def resolve_providers(providers: str | Sequence[ProviderSpec] | None) -> list[ProviderSpec]:
    """Execution providers to ask onnxruntime for.

    ``None`` means CPU. ``"auto"`` means CUDA first when this onnxruntime offers it (the
    ``onnxruntime-gpu`` distribution), else CPU; whether CUDA really loads is only known once a
    session exists, so :class:`OptimizerSession` checks ``session.get_providers()`` and falls back
    to CPU when it did not. A list (of names, or ``(name, options)`` pairs) is passed through.

    Raises:
        ValueError: an unknown string, or a provider this onnxruntime does not offer.
    """
    available = ort.get_available_providers()
    if providers is None:
        return [_CPU]
    if providers == "auto":
        return ([_CUDA] if _CUDA in available else []) + [_CPU]
    if isinstance(providers, str):
        raise ValueError(f"providers must be None, 'auto' or a list of provider names, got {providers!r}")
    names = [_provider_name(p) for p in providers]
    unknown = [p for p in names if p not in available]
    if unknown:
        raise ValueError(f"providers {unknown} are not available in this onnxruntime; available: {available} (see `lto doctor`)")
    if not names:
        raise ValueError("providers is an empty list; pass None for CPU or 'auto'")
    return list(providers)


def onnxruntime_distributions() -> list[str]:
    """Installed distributions that provide the ``onnxruntime`` import folder.

    Normally one: ``onnxruntime`` (CPU) or ``onnxruntime-gpu``. Two means both are installed and
    overwrite each other's files in the same ``onnxruntime/`` folder.
    """
    return sorted(set(metadata.packages_distributions().get("onnxruntime", [])))


def cuda_status(path: str | os.PathLike | None = None) -> tuple[bool, str]:
    """Whether onnxruntime really runs the optimizer file ``path`` (default: the packaged one) on CUDA.

    Returns:
        ``(True, "")`` when a session created with the CUDA provider keeps it, else ``(False, reason)``.
    """
    if _CUDA not in ort.get_available_providers():
        return False, "this onnxruntime has no CUDAExecutionProvider: it is the CPU-only distribution"
    model, _ = read_optimizer_file(default_model_path() if path is None else path)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=[_CUDA, _CPU])
    if _CUDA not in session.get_providers():
        return False, "CUDAExecutionProvider is listed but did not load (no GPU, or the CUDA/cuDNN libraries it needs are missing)"
    return True, ""


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


class OptimizerSession:
    """A validated optimizer file with its onnxruntime session.

    Args:
        path: the ``.onnx`` file; ``None`` for the packaged default.
        providers: see :func:`resolve_providers`.
        threads: intra-op threads for onnxruntime. The default, 1, runs the step on the calling
            thread, so it never competes with the training framework's own thread pool or with
            other processes for cores; pass more for large models on an otherwise idle machine.
            0: onnxruntime's default (one per physical core). Threads never spin while waiting.

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
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Only onnxruntime's parallel execution mode uses an inter-op pool; 1 keeps it from taking a thread per core.
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # A spinning onnxruntime thread pool steals the cores the training framework needs between steps.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=requested)
        self.providers: list[str] = self.session.get_providers()
        missing = [p for p in map(_provider_name, requested) if p not in self.providers]
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
            if _CUDA not in self.providers:
                raise ValueError(f"buffers on cuda:{device_id} need a session on CUDA, this one runs on {self.providers}; pass providers='auto'")
            session_gpu = int(self.session.get_provider_options()[_CUDA].get("device_id", 0))
            if session_gpu != device_id:
                raise ValueError(
                    f"buffers live on cuda:{device_id}, the session runs on cuda:{session_gpu}; "
                    f"pass providers=[('CUDAExecutionProvider', {{'device_id': {device_id}}})]"
                )
        return DeviceStep(self, device_type, device_id)


@dataclass(frozen=True)
class DeviceStep:
    """An :class:`OptimizerSession` bound to one device: a step function for device-resident buffers."""

    session: OptimizerSession
    device_type: str
    device_id: int

    @property
    def window(self) -> int:
        """Tokens per window (the file's)."""
        return self.session.window

    @property
    def chunk(self) -> int:
        """Elements per token (the file's)."""
        return self.session.chunk

    @property
    def refresh_every(self) -> int:
        """Steps between runs of the network (the file's)."""
        return self.session.refresh_every

    def run(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> None:
        """:meth:`OptimizerSession.run` on this device."""
        self.session.run(inputs, outputs, self.device_type, self.device_id)
