"""The onnxruntime path behind the ``Embedder`` interface: ``OnnxEmbedder`` runs a ``model.onnx`` written by
``deepmetric export`` with the same ``encode`` (images, paths, arrays) and the same model stamp as the PyTorch model.

onnxruntime (the optional extra ``deepmetric[onnx]``) is imported only when a model is loaded. The graph's metadata
carries everything needed: the model config (preprocessing, embedding size, calibration), the model stamp and the
sha256 of the graph the stamp was verified for; a graph changed after export is refused rather than trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepmetric.models.embedder import ONNX_FILE, Embedder, validate_model_config
from deepmetric.validation import check_positive_int

#: Version of the metadata layout below; readers refuse versions they do not know.
ONNX_FORMAT_VERSION = 1
#: Metadata keys (``ModelProto.metadata_props``). The ``deepmetric.*`` ones are what this runtime reads; the plain
#: ones describe the contract for any other runtime (C++, Java, a browser) that has no deepmetric.
FORMAT_KEY = "deepmetric.format_version"
CONFIG_KEY = "deepmetric.config"
STAMP_KEY = "deepmetric.model_stamp"
GRAPH_KEY = "deepmetric.graph_sha256"
PARITY_KEY = "deepmetric.parity"
QUANTIZATION_KEY = "deepmetric.quantization"
INPUT_NAME = "inputs"
OUTPUT_NAME = "embeddings"


def graph_digest(model_proto: Any) -> str:
    """sha256 of a graph (nodes, weights, inputs and outputs), leaving out the model's metadata, which is written
    after the graph is verified."""
    return hashlib.sha256(model_proto.graph.SerializeToString(deterministic=True)).hexdigest()


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as error:  # pragma: no cover - the extra is installed in CI
        raise ModuleNotFoundError("the onnxruntime path needs the optional extra: pip install 'deepmetric[onnx]'") \
            from error
    return onnxruntime


def session_options(threads: int | None) -> Any:
    """onnxruntime session options: all graph optimisations, ``threads`` intra-op threads (default: as many as
    PyTorch uses, so the two runtimes compare on equal terms), one inter-op thread."""
    ort = _import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = (torch.get_num_threads() if threads is None
                                    else check_positive_int("threads", threads))
    options.inter_op_num_threads = 1
    return options


def read_onnx_metadata(model_proto: Any, *, source: str) -> dict[str, Any]:
    """The deepmetric metadata of an exported graph, checked: format version, config, stamp, graph hash.

    Raises:
        ValueError: not a deepmetric export, an unknown format version, or a graph changed after export.
    """
    props = {entry.key: entry.value for entry in model_proto.metadata_props}
    if FORMAT_KEY not in props or CONFIG_KEY not in props or STAMP_KEY not in props:
        raise ValueError(f"{source} was not written by deepmetric export (no {CONFIG_KEY!r} / {STAMP_KEY!r} "
                         f"metadata): export the model folder with `deepmetric export MODEL_DIR --format onnx`")
    if props[FORMAT_KEY] != str(ONNX_FORMAT_VERSION):
        raise ValueError(f"{source}: ONNX metadata format {props[FORMAT_KEY]!r} is not supported (this deepmetric "
                         f"reads {ONNX_FORMAT_VERSION}); upgrade deepmetric or export again")
    digest = graph_digest(model_proto)
    if props.get(GRAPH_KEY) != digest:
        raise ValueError(f"{source}: the graph was changed after export (sha256 {digest[:12]}, exported "
                         f"{str(props.get(GRAPH_KEY))[:12]}), so its parity with the PyTorch model is unknown; "
                         f"export it again with `deepmetric export`")
    try:
        config = json.loads(props[CONFIG_KEY])
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}: metadata {CONFIG_KEY!r} is not JSON: {error}") from error
    if not isinstance(config, dict):
        raise TypeError(f"{source}: metadata {CONFIG_KEY!r} must be a JSON object, got {type(config).__name__}")
    return {"config": config, "stamp": props[STAMP_KEY], "properties": props}


class OnnxEmbedder:
    """An exported embedding model run by onnxruntime on the CPU: same ``encode``, ``config``, ``embedding_dim``
    and ``fingerprint()`` as the ``Embedder`` it was exported from, so galleries, evaluation and the service use
    either. Rows are L2-normalised inside the graph.

    Load one with ``OnnxEmbedder.load(folder_or_file)`` or ``Embedder.load(folder, runtime="onnx")``.

    Args:
        model_bytes: the serialised ``model.onnx``.
        source: where it came from, for messages.
        threads: intra-op threads (default: ``torch.get_num_threads()``).
    """

    runtime = "onnxruntime"
    # The one input path (decoding through load_image, the stored preprocessing, shape and finiteness checks) is
    # the Embedder's, shared here rather than copied.
    _transform = Embedder._transform
    _check_model_input = Embedder._check_model_input
    _batches = Embedder._batches
    _prepare_one = Embedder._prepare_one

    def __init__(self, model_bytes: bytes, *, source: str = "model.onnx", threads: int | None = None) -> None:
        import onnx

        if not isinstance(model_bytes, (bytes, bytearray)):
            raise TypeError(f"model_bytes must be bytes, got {type(model_bytes).__name__}")
        try:
            proto = onnx.load_model_from_string(bytes(model_bytes))
        except Exception as error:  # onnx raises DecodeError (protobuf) for anything that is not a model
            raise ValueError(f"{source} is not an ONNX model: {error}") from error
        metadata = read_onnx_metadata(proto, source=source)
        try:
            self._config = validate_model_config(metadata["config"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: metadata {CONFIG_KEY!r}: {error}") from error
        self._stamp = metadata["stamp"]
        self.properties = metadata["properties"]
        self.embedding_dim = int(self._config["embedding_dim"])
        self.source = source
        ort = _import_onnxruntime()
        self.session = ort.InferenceSession(bytes(model_bytes), sess_options=session_options(threads),
                                            providers=["CPUExecutionProvider"])
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
            raise ValueError(f"{source}: expected one input {INPUT_NAME!r} and one output {OUTPUT_NAME!r}, got "
                             f"{[i.name for i in inputs]} -> {[o.name for o in outputs]}")
        if self.input_kind == "vector":
            self.input_dim = int(inputs[0].shape[1])

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: Any = None, threads: int | None = None) -> OnnxEmbedder:
        """Load ``path``: a ``.onnx`` file or a folder holding ``model.onnx``. ``device`` must be None or CPU."""
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"the onnxruntime path runs on the CPU; got device={str(device)!r} (use the PyTorch "
                             f"runtime for accelerators)")
        path = Path(path)
        file = path / ONNX_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no ONNX model at {file}: export one with `deepmetric export MODEL_DIR "
                                    f"--format onnx -o {file}`")
        return cls(file.read_bytes(), source=str(file), threads=threads)

    @property
    def config(self) -> dict[str, Any]:
        return self._config

    @property
    def preprocessing(self) -> dict[str, Any] | None:
        return self._config["preprocessing"]

    @property
    def input_kind(self) -> str:
        return "image" if self._config["preprocessing"] is not None else "vector"

    @property
    def parity(self) -> Mapping[str, Any] | None:
        """The parity report measured when this graph was exported (None if it was not stored)."""
        text = self.properties.get(PARITY_KEY)
        return json.loads(text) if text else None

    def fingerprint(self) -> str:
        """The exported model's stamp: the PyTorch model's fingerprint, written only after parity held, so a gallery
        embedded with either runtime opens with the other without re-embedding (a quantised graph has its own)."""
        return self._stamp

    def encode(self, inputs: Any, *, batch_size: int = 256, device: Any = None, progress: bool = False) -> np.ndarray:
        """Embed ``inputs`` exactly as ``Embedder.encode`` takes them (images, paths, uint8 batches, preprocessed
        arrays, a Dataset), in batches of ``batch_size``, on the CPU.

        Returns:
            float32 array (N, embedding_dim) of unit-length rows.
        """
        batch_size = check_positive_int("batch_size", batch_size)
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"the onnxruntime path runs on the CPU; got device={str(device)!r}")
        batches = self._batches(inputs, batch_size)
        if progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="embedding", unit="batch")
        outputs = [self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch.numpy(), np.float32)})[0]
                   for batch in batches]
        if not outputs:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        return np.concatenate(outputs).astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return f"OnnxEmbedder({self.source!r}, embedding_dim={self.embedding_dim}, stamp={self._stamp[:12]})"
