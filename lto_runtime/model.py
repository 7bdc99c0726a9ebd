"""Opening an optimizer file: validation, metadata and the onnxruntime session.

A file is refused, with :class:`OptimizerFileError` naming the file and the reason, when it is not
ONNX, fails ``onnx.checker``, keeps weights in external data, lacks or has an unknown
``lto.format``, or its inputs and outputs do not match its own metadata.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

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
    state_names: tuple[str, ...]
    scalar_names: tuple[str, ...]
    ctx_names: tuple[str, ...]
    version: str
    checkpoint_sha256: str
    meta_train: dict

    @property
    def meta_trained(self) -> bool:
        """True when the file's provenance says its network was meta-trained."""
        return bool(self.meta_train.get("meta_trained", False))


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
            state_names=tuple(json.loads(meta["lto.state"])),
            scalar_names=tuple(json.loads(meta["lto.scalars"])),
            ctx_names=tuple(json.loads(meta["lto.ctx"])),
            version=meta["lto.version"],
            checkpoint_sha256=meta["lto.checkpoint_sha256"],
            meta_train=json.loads(meta["lto.meta_train"]),
        )
    except (ValueError, TypeError) as err:
        raise _refuse(path, f"malformed lto metadata: {err}") from None
    expected = {"lto.state": STATE_NAMES, "lto.scalars": SCALAR_NAMES, "lto.ctx": CTX_NAMES}
    for key, got in zip(expected, (spec.state_names, spec.scalar_names, spec.ctx_names)):
        if got != expected[key]:
            raise _refuse(path, f"{key} is {list(got)}, format {FORMAT} requires {list(expected[key])}")
    return spec


def _dims(value_info: onnx.ValueInfoProto) -> list[int | None]:
    """Static dims as ints, symbolic ones as None."""
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def _check_signature(path: Path, model: onnx.ModelProto, spec: OptimizerSpec) -> None:
    w, c, s = spec.window, spec.chunk, len(spec.state_names)
    want = {
        "grad": [None, w, c],
        "param": [None, w, c],
        "mask": [None, w, c],
        "state": [s, None, w, c],
        "scalars": [None, len(spec.scalar_names)],
        "ctx": [None, len(spec.ctx_names)],
        "update": [None, w, c],
        "new_state": [s, None, w, c],
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


def resolve_providers(providers: str | Sequence[str] | None) -> list[str]:
    """Execution providers to ask onnxruntime for.

    ``None`` means CPU. ``"auto"`` means CUDA first when onnxruntime offers it (the
    ``onnxruntime-gpu`` distribution with a usable GPU), else CPU. A list is passed through.
    """
    available = ort.get_available_providers()
    if providers is None:
        return ["CPUExecutionProvider"]
    if providers == "auto":
        chosen = [p for p in ("CUDAExecutionProvider",) if p in available]
        return chosen + ["CPUExecutionProvider"]
    if isinstance(providers, str):
        raise ValueError(f"providers must be None, 'auto' or a list of provider names, got {providers!r}")
    unknown = [p for p in providers if p not in available]
    if unknown:
        raise ValueError(f"providers {unknown} are not available in this onnxruntime; available: {available}")
    return list(providers)


class OptimizerSession:
    """A validated optimizer file with its onnxruntime session.

    Args:
        path: the ``.onnx`` file; ``None`` for the packaged default.
        providers: see :func:`resolve_providers`.
        threads: intra-op threads for onnxruntime (0: onnxruntime's default, all cores).

    Attributes:
        spec: the file's metadata.
        providers: the providers the session really uses (``session.get_providers()``).
    """

    def __init__(self, path: str | os.PathLike | None = None, providers: str | Sequence[str] | None = None, threads: int = 0) -> None:
        model, self.spec = read_optimizer_file(default_model_path() if path is None else path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        # A spinning onnxruntime thread pool steals the cores the training framework needs between steps.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(
            model.SerializeToString(), sess_options=options, providers=resolve_providers(providers)
        )
        self.providers: list[str] = self.session.get_providers()
        logger.info("lto: %s runs on %s", self.spec.path, self.providers[0])

    def run(self, inputs: dict, outputs: dict) -> None:
        """Run one step, reading ``inputs`` and writing ``outputs`` in place.

        Every array is bound by its buffer address (IOBinding), so onnxruntime reads the caller's
        memory and writes the outputs where the caller wants them: no copies either way. Arrays
        must be C-contiguous float32 NumPy arrays.
        """
        binding = self.session.io_binding()
        for name, array in inputs.items():
            binding.bind_input(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        for name, array in outputs.items():
            binding.bind_output(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        self.session.run_with_iobinding(binding)
