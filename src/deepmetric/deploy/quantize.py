"""Optional int8 dynamic quantisation of an exported graph (``onnxruntime.quantization.quantize_dynamic``): weights
stored as int8, activations quantised per batch at run time. Never on by default.

The float graph must pass the full parity check first; the int8 graph is then measured the same way and its
cosine, neighbour overlap and MAP@R loss are reported (and stored in its metadata). It cannot meet the float
tolerances, so it gets its own model stamp: galleries embedded with the float model are re-embedded for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from deepmetric.deploy.export import ExportResult, output_file, verified_graph, with_metadata
from deepmetric.deploy.parity import ParityError, ParityTolerances, measure_parity
from deepmetric.io import atomic_write_bytes
from deepmetric.validation import check_non_negative_float

QUANTIZATIONS = ("int8",)


def quantize_dynamic_int8(onnx_bytes: bytes, *, per_channel: bool = True) -> bytes:
    """``onnx_bytes`` with its Conv, MatMul and Gemm weights quantised to int8 (dynamic activation quantisation)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="deepmetric-int8-") as folder:
        source, prepared, target = (Path(folder) / name for name in ("float.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(onnx_bytes)
        # The recommended preparation: shape inference and graph optimisation before choosing what to quantise.
        quant_pre_process(str(source), str(prepared))
        quantize_dynamic(prepared, target, weight_type=QuantType.QInt8, per_channel=per_channel)
        return onnx.load_model(str(target)).SerializeToString()


def export_quantized(model: Any, output: str | os.PathLike, *, max_images: int = 1000, faces: bool | None = None,
                     threads: int | None = None, max_map_loss: float = 0.01, progress: bool = False) -> ExportResult:
    """Export ``model`` as an int8 dynamically quantised graph to ``output``. The float graph passes the strict
    parity check first; the int8 one must keep MAP@R within ``max_map_loss`` of PyTorch's (its cosine and overlap
    are reported, not enforced).

    Raises:
        ParityError: the float graph fails parity, or the int8 graph loses more than ``max_map_loss`` MAP@R.
    """
    from deepmetric.models import onnx_runtime as rt

    max_map_loss = check_non_negative_float("max_map_loss", max_map_loss)
    output = output_file(output)
    graph = verified_graph(model, max_images=max_images, faces=faces, tolerances=None, threads=threads,
                           progress=progress, source=str(output))
    quantized, digest = with_metadata(quantize_dynamic_int8(graph.onnx_bytes), {})
    # The int8 graph computes another embedding space: a stamp of its own, derived from the float model's.
    stamp = hashlib.sha256(f"int8-dynamic:{graph.model_stamp}:{digest}".encode()).hexdigest()
    metadata = {**graph.metadata, rt.STAMP_KEY: stamp, rt.GRAPH_KEY: digest,
                rt.QUANTIZATION_KEY: json.dumps({"method": "dynamic", "weights": "int8 per channel",
                                                 "float_model_stamp": graph.model_stamp})}
    draft, _ = with_metadata(quantized, metadata)
    loose = ParityTolerances(min_cosine=-1.0, min_overlap=0.0, max_map_difference=max_map_loss)
    report = measure_parity(graph.model, rt.OnnxEmbedder(draft, source=str(output), threads=threads),
                            max_images=max_images, faces=faces, tolerances=loose, progress=progress)
    if not report.passed:
        raise ParityError(f"the int8 graph loses too much, so nothing was written to {output}: "
                          + "; ".join(report.failures))
    metadata[rt.PARITY_KEY] = json.dumps({"int8": report.to_dict(), "float": graph.parity.to_dict()},
                                         sort_keys=True)
    final, _ = with_metadata(draft, metadata)
    atomic_write_bytes(output, final)
    return ExportResult(path=output, model_stamp=stamp, parity=report)
