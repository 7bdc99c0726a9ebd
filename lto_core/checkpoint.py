"""Checkpoints: network weights as ``NAME.safetensors`` beside a ``NAME.json`` config.

Never pickle: weights load with ``safetensors`` only, and the JSON holds the network sizes and the
meta-training provenance (``meta_train``), which export copies into the ONNX metadata.

Every file is written with :func:`write_atomically`: a reader (or a run resumed after a crash)
sees the old file or the new one, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from safetensors.torch import load_file, save

from lto_core.network import NetworkConfig
from lto_core.step import StepGraph

#: The checkpoint of the optimizer that ships inside the package.
DEFAULT_CHECKPOINT = Path(__file__).parent / "checkpoints" / "default.safetensors"
#: Version of the checkpoint JSON layout this code reads and writes (2: the token-level network of format-2 files).
CHECKPOINT_FORMAT = 2


#: Fault injection for tests: when this environment variable holds a file name, the process ends
#: at once (``os._exit``, no cleanup, like a kill) right after :func:`write_atomically` has written
#: a file of that name. Tests use it to interrupt meta-training between two of its writes.
EXIT_AFTER_WRITING_ENV = "LTO_EXIT_AFTER_WRITING"
#: Exit status of a process ended by :data:`EXIT_AFTER_WRITING_ENV`.
EXIT_AFTER_WRITING_STATUS = 75


def write_atomically(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that no reader or crash ever sees a partial file.

    The bytes go to ``PATH.tmp`` in the same directory, are flushed to disk (``fsync``), and the
    temporary file is renamed over ``path`` (``os.replace``, atomic on POSIX and Windows); the
    directory is then synced so the rename itself survives a power loss (POSIX).
    """
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _sync_directory(path.parent)
    if os.environ.get(EXIT_AFTER_WRITING_ENV) == path.name:
        os._exit(EXIT_AFTER_WRITING_STATUS)


def _sync_directory(directory: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):  # Windows: a directory cannot be opened to sync it
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _paths(path: str | Path) -> tuple[Path, Path]:
    """``NAME.safetensors`` and ``NAME.json`` of a checkpoint named ``NAME``, ``NAME.safetensors`` or
    ``NAME.json``. Any other dot belongs to the name (``alpha0.3`` is ``alpha0.3.safetensors``), so
    two names that differ after a dot never share files."""
    path = Path(path)
    name = path.stem if path.suffix in (".safetensors", ".json") else path.name
    return path.with_name(name + ".safetensors"), path.with_name(name + ".json")


def save_checkpoint(graph: StepGraph, path: str | Path, meta_train: dict) -> Path:
    """Write ``graph``'s weights and config; returns the ``.safetensors`` path.

    ``meta_train`` records how the weights were made (``{"meta_trained": False, ...}`` for the
    zero-head Adam-equivalent network).
    """
    weights, config = _paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in graph.state_dict().items()}
    write_atomically(weights, save(tensors))
    doc = {"format": CHECKPOINT_FORMAT, "config": graph.config.to_dict(), "meta_train": meta_train}
    write_atomically(config, (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode())
    return weights


def load_checkpoint(path: str | Path = DEFAULT_CHECKPOINT) -> tuple[StepGraph, dict]:
    """Rebuild the :class:`StepGraph` saved at ``path``; returns it with its ``meta_train`` record.

    Raises:
        FileNotFoundError: the ``.safetensors`` or its ``.json`` is missing.
        ValueError: the JSON is not a checkpoint of a known format, or weights do not fit it.
    """
    weights, config = _paths(path)
    for p in (weights, config):
        if not p.is_file():
            raise FileNotFoundError(f"checkpoint file {p} not found (a checkpoint is NAME.safetensors + NAME.json)")
    doc = json.loads(config.read_text())
    if doc.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{config}: unknown checkpoint format {doc.get('format')!r}; expected {CHECKPOINT_FORMAT}")
    graph = StepGraph(NetworkConfig(**doc["config"]))
    try:
        graph.load_state_dict(load_file(str(weights)))
    except RuntimeError as err:
        raise ValueError(f"{weights}: weights do not match the config in {config}: {err}") from None
    return graph.eval(), doc.get("meta_train", {})


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 of the checkpoint's ``.safetensors`` file, recorded in the exported ONNX file."""
    return hashlib.sha256(_paths(path)[0].read_bytes()).hexdigest()
