"""Execution providers: which ones this onnxruntime offers, which to ask for, and whether CUDA really loads.

onnxruntime lists a provider as available when its distribution ships it (``onnxruntime-gpu``
lists CUDA), but whether it loads is only known once a session exists (it needs a GPU and the
CUDA and cuDNN libraries the wheel was built for); :func:`cuda_status` finds out.
"""

from __future__ import annotations

import os
from importlib import metadata
from typing import Sequence

import onnxruntime as ort

from lto_runtime.optimizer_file import default_model_path, read_optimizer_file

#: Provider names accepted in ``providers=[...]``: a name, or ``(name, options)`` as onnxruntime takes.
ProviderSpec = str | tuple[str, dict]

#: onnxruntime's name for its CUDA execution provider (in the ``onnxruntime-gpu`` distribution).
CUDA = "CUDAExecutionProvider"
#: onnxruntime's name for its CPU execution provider (in every distribution).
CPU = "CPUExecutionProvider"


def provider_name(provider: ProviderSpec) -> str:
    """The name of ``provider`` (a name, or a ``(name, options)`` pair)."""
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
        return [CPU]
    if providers == "auto":
        return ([CUDA] if CUDA in available else []) + [CPU]
    if isinstance(providers, str):
        raise ValueError(f"providers must be None, 'auto' or a list of provider names, got {providers!r}")
    names = [provider_name(p) for p in providers]
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
    if CUDA not in ort.get_available_providers():
        return False, "this onnxruntime has no CUDAExecutionProvider: it is the CPU-only distribution"
    model, _ = read_optimizer_file(default_model_path() if path is None else path)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), sess_options=options, providers=[CUDA, CPU])
    if CUDA not in session.get_providers():
        return False, "CUDAExecutionProvider is listed but did not load (no GPU, or the CUDA/cuDNN libraries it needs are missing)"
    return True, ""
