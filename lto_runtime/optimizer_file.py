"""An optimizer file: reading it, its ``lto.*`` metadata, and the checks that refuse a bad one.

A file is refused, with :class:`OptimizerFileError` naming the file and the reason, when it is not
ONNX, fails ``onnx.checker``, keeps weights in external data, lacks or has an unknown
``lto.format``, or its inputs and outputs do not match its own metadata.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import onnx

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
