"""Deployment: ONNX export with parity checks, and the onnxruntime path for embedding and serving. Names load on first
use, so importing the package costs no onnx."""

from __future__ import annotations

from deepmetric import lazy_exports

_EXPORTS = {
    "export_onnx": "export", "ExportResult": "export", "OPSET": "export",
    "export_quantized": "quantize",
    "ParityError": "parity", "ParityReport": "parity", "ParityTolerances": "parity", "measure_parity": "parity",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
