"""lto_export: PyTorch -> ONNX export, validation against the PyTorch step, and the ``lto`` CLI."""

from lto_export.onnx_export import export_onnx

__all__ = ["export_onnx"]
