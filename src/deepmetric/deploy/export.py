"""ONNX export of a model folder as a contract: a dynamic batch axis, a pinned opset, L2 normalisation inside the
graph, the preprocessing, embedding size, threshold and model stamp in the metadata, and parity with PyTorch
checked on real inputs before anything is written (``deepmetric.deploy.parity``).

The graph takes preprocessed inputs ``inputs`` (N, C, H, W) float32 (or (N, F) for vector models) and returns
``embeddings`` (N, D) of unit length. A failed parity check raises ``ParityError`` and leaves no file behind.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

from deepmetric.deploy.parity import ParityError, ParityReport, ParityTolerances, measure_parity
from deepmetric.io import atomic_write_bytes
from deepmetric.validation import check_positive_int

#: The opset every export is pinned to: supported by onnxruntime since 1.12 and by the TorchScript exporter.
OPSET = 17
#: Formats ``deepmetric export`` writes.
FORMATS = ("onnx",)


@dataclasses.dataclass
class ExportResult:
    """Where the graph went, its model stamp and the parity measured before it was written."""

    path: Path
    model_stamp: str
    parity: ParityReport

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "model_stamp": self.model_stamp, "opset": OPSET,
                "parity": self.parity.to_dict()}


@dataclasses.dataclass
class VerifiedGraph:
    """A traced graph with its metadata, after parity held: what is written, or quantised first."""

    model: Any
    onnx_bytes: bytes
    metadata: dict[str, str]
    model_stamp: str
    parity: ParityReport


def _load_model(model: Any) -> Any:
    from deepmetric.models.embedder import Embedder

    if isinstance(model, Embedder):
        return model
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be an Embedder or a model folder path, got {type(model).__name__}")
    return Embedder.load(model, device="cpu", runtime="torch")


def _decomposed_prelu() -> type:
    import torch

    class DecomposedPReLU(torch.nn.Module):
        """PReLU as ``relu(x) - a * relu(-x)``: bit-identical (negation and the product's sign are exact) and about
        ten times faster in onnxruntime 1.32, whose PRelu kernel takes a slow broadcasting path for per-channel
        slopes (it was 3/4 of MobileFaceNet's time at batch 1; see docs/benchmarks/runtime.md)."""

        def __init__(self, weight: torch.Tensor) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            slope = self.weight.view(1, -1, *([1] * (x.dim() - 2)))
            return torch.relu(x) - slope * torch.relu(-x)

    return DecomposedPReLU


def export_friendly(model: Any) -> Any:
    """A copy of ``model`` computing the same function with operators onnxruntime runs fast (PReLU decomposed);
    the model itself is left alone."""
    import copy

    import torch

    decomposed = _decomposed_prelu()
    friendly = copy.deepcopy(model)
    for parent in list(friendly.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.PReLU):
                setattr(parent, name, decomposed(child.weight))
    return friendly.eval()


def trace_to_onnx(model: Any, *, decompose_prelu: bool = True) -> bytes:
    """The ``Embedder``'s forward (L2 normalisation included) as ONNX bytes, batch axis dynamic, opset ``OPSET``.

    The TorchScript exporter is used: it exports every shipped backbone with a truly dynamic batch, where the
    dynamo exporter specialises the MLP's batch to the example's (its input checks read the shape) and takes
    10-30 times longer. Parity is what proves the graph right either way. PReLU is traced in a faster equivalent
    form (``export_friendly``) unless ``decompose_prelu`` is False (the benchmark's comparison).
    """
    import torch

    model = model.to("cpu").eval()
    model = export_friendly(model) if decompose_prelu else model
    if model.input_kind == "vector":
        example = torch.zeros(2, model.input_dim)
    else:
        pre = model.preprocessing
        example = torch.zeros(2, pre["channels"], *pre["image_size"])
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # Tracing notes shape reads in input checks (TracerWarning) and the exporter's own deprecation notice;
        # neither changes the graph, and parity decides whether it is right.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, input_names=["inputs"], output_names=["embeddings"],
                          dynamic_axes={"inputs": {0: "batch"}, "embeddings": {0: "batch"}}, opset_version=OPSET,
                          do_constant_folding=True, dynamo=False)
    return buffer.getvalue()


def contract_metadata(config: dict[str, Any], *, model_stamp: str, graph_sha256: str) -> dict[str, str]:
    """The metadata every export carries: what a runtime without deepmetric needs to feed the graph (size,
    channels, channel order, scaling, mean/std, layout), what comes out (dimension, unit length, threshold), and
    for deepmetric the full config, the stamp and the graph hash the stamp is vouched for."""
    from deepmetric.gallery.model import threshold_from_config
    from deepmetric.models import onnx_runtime as rt

    meta = {rt.FORMAT_KEY: str(rt.ONNX_FORMAT_VERSION), rt.CONFIG_KEY: json.dumps(config, sort_keys=True),
            rt.STAMP_KEY: model_stamp, rt.GRAPH_KEY: graph_sha256,
            "embedding_dim": str(config["embedding_dim"]), "output": "embeddings (N, embedding_dim), L2-normalised",
            "similarity": "cosine (the dot product of two outputs)", "opset": str(OPSET)}
    pre = config.get("preprocessing")
    if pre is None:
        meta.update({"input": "inputs (N, input_dim) float32 feature vectors", "input_kind": "vector"})
    else:
        meta.update({
            "input": "inputs (N, channels, height, width) float32, preprocessed as described here",
            "input_kind": "image", "layout": "NCHW", "image_size": json.dumps(pre["image_size"]),
            "channels": str(pre["channels"]),
            "channel_order": "RGB" if pre["channels"] == 3 else "grey (ITU-R 601 luma of RGB)",
            "resize": "area interpolation to image_size (height, width), no crop",
            "pixel_scale": "1/255 (uint8 to [0, 1]) before (x - mean) / std",
            "mean": json.dumps(pre["mean"]), "std": json.dumps(pre["std"])})
    threshold = threshold_from_config(config)
    if threshold is not None:
        meta.update({"threshold": repr(threshold), "threshold_metric": "cosine"})
    return meta


def with_metadata(onnx_bytes: bytes, metadata: dict[str, str]) -> tuple[bytes, str]:
    """``onnx_bytes`` with ``metadata`` replacing its metadata_props (graph unchanged), and the graph's sha256."""
    import onnx

    from deepmetric.models.onnx_runtime import graph_digest

    proto = onnx.load_model_from_string(onnx_bytes)
    del proto.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "deepmetric"
    proto.doc_string = "deepmetric embedding model: see the metadata for the input contract"
    return proto.SerializeToString(), graph_digest(proto)


def verified_graph(model: Any, *, max_images: int, faces: bool | None, tolerances: ParityTolerances | None,
                   threads: int | None, progress: bool, source: str) -> VerifiedGraph:
    """Trace ``model``, give the graph its contract metadata and check parity; raises ``ParityError`` if it fails."""
    from deepmetric.models.onnx_runtime import PARITY_KEY, OnnxEmbedder
    from deepmetric.models.protocol import model_fingerprint

    max_images = check_positive_int("max_images", max_images)
    model = _load_model(model)
    stamp = model_fingerprint(model)
    config = dict(model.config)
    traced, digest = with_metadata(trace_to_onnx(model), {})
    metadata = contract_metadata(config, model_stamp=stamp, graph_sha256=digest)
    draft, _ = with_metadata(traced, metadata)
    exported = OnnxEmbedder(draft, source=source, threads=threads)
    report = measure_parity(model, exported, max_images=max_images, faces=faces, tolerances=tolerances,
                            progress=progress)
    if not report.passed:
        raise ParityError(f"the ONNX export does not reproduce the PyTorch model, so nothing was written to "
                          f"{source}: " + "; ".join(report.failures))
    metadata[PARITY_KEY] = json.dumps(report.to_dict(), sort_keys=True)
    final, _ = with_metadata(draft, metadata)
    return VerifiedGraph(model=model, onnx_bytes=final, metadata=metadata, model_stamp=stamp, parity=report)


def output_file(output: str | os.PathLike) -> Path:
    """``output`` itself for a ``.onnx`` path, else ``output/model.onnx``."""
    from deepmetric.models.embedder import ONNX_FILE

    output = Path(output)
    return output / ONNX_FILE if output.is_dir() or output.suffix != ".onnx" else output


def export_onnx(model: Any, output: str | os.PathLike, *, max_images: int = 1000, faces: bool | None = None,
                tolerances: ParityTolerances | None = None, threads: int | None = None,
                progress: bool = False) -> ExportResult:
    """Export ``model`` (a model folder or an ``Embedder``) to ``output`` (a ``.onnx`` file, or a folder that
    receives ``model.onnx``), after checking parity on real inputs (see ``deepmetric.deploy.parity``); written
    atomically.

    Args:
        max_images: images of the Glyphs test split for the downstream check (whole classes).
        faces: add aligned face crops to the per-sample check (default: with the face extra, for colour models).
        tolerances: what parity must meet (default ``ParityTolerances()``: cosine >= 0.99999 for every sample at
            batch sizes 1, 7 and 32, top-10 overlap >= 0.999, MAP@R within 1e-4).
        threads: onnxruntime intra-op threads for the check (default: PyTorch's).

    Raises:
        ParityError: the graph misses a tolerance; nothing is written.

    Example:
        >>> import tempfile
        >>> from deepmetric.models import build_embedder
        >>> model = build_embedder({"backbone": {"name": "mlp", "args": {"input_dim": 6}}, "embedding_dim": 4})
        >>> result = export_onnx(model, tempfile.mkdtemp() + "/model.onnx", max_images=40)
        >>> result.parity.passed, result.path.name
        (True, 'model.onnx')
    """
    output = output_file(output)
    graph = verified_graph(model, max_images=max_images, faces=faces, tolerances=tolerances, threads=threads,
                           progress=progress, source=str(output))
    atomic_write_bytes(output, graph.onnx_bytes)
    return ExportResult(path=output, model_stamp=graph.model_stamp, parity=graph.parity)
