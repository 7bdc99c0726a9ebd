"""lto_export: PyTorch -> ONNX export, validation against the PyTorch step, and the ``lto`` CLI."""

from __future__ import annotations

from typing import Any

__all__ = ["export_onnx"]


def __getattr__(name: str) -> Any:
    """``lto_export.export_onnx``, imported on first use: the exporter needs torch and onnx, and the
    ``lto`` CLI imports this package for verbs (``--help``, ``inspect``) that need neither."""
    if name == "export_onnx":
        from lto_export.onnx_export import export_onnx

        return export_onnx
    raise AttributeError(f"module 'lto_export' has no attribute {name!r}")
