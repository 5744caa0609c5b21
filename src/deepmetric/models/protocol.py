"""What deepmetric needs from an embedding model, wherever it comes from: the ``EmbeddingModel`` protocol (and
``FaceModel`` for pipelines that find faces first), the fingerprint naming its embedding space, and ``load_model``.

Face models live in ``deepmetric.faces`` and are found here by registered name, so neither this layer nor the
gallery above it imports them directly.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from deepmetric import registry

#: Registry kind of ready-made face models (e.g. ``"dlib-face"``), each built with ``detector=<name>``.
FACE_MODEL_KIND = "face_model"
#: Registry kind of face pipelines that wrap an ``EmbeddingModel`` trained on aligned face crops, each built
#: as ``pipeline(model, detector=<name>)``.
FACE_PIPELINE_KIND = "face_pipeline"
#: The face pipeline ``load_model(folder, faces=True)`` puts in front of a model folder.
ALIGNED_FACES = "aligned"


@runtime_checkable
class EmbeddingModel(Protocol):
    """Anything that embeds images, such as ``deepmetric.models.Embedder`` and the face models.

    ``encode(images)`` takes a list of images (paths, encoded bytes, binary streams, PIL images or uint8
    arrays; all decoded by ``deepmetric.data.images.load_image``) and returns float32 rows
    ``(N, embedding_dim)`` of unit length. ``config`` describes the model (architecture, preprocessing,
    calibration) and is stored with every gallery it embeds.
    """

    embedding_dim: int

    @property
    def config(self) -> Mapping[str, Any]: ...

    def encode(self, inputs: Any, *, batch_size: int = 256, device: Any = None,
               progress: bool = False) -> np.ndarray: ...


@runtime_checkable
class FaceModel(EmbeddingModel, Protocol):
    """An ``EmbeddingModel`` that detects faces first: ``encode`` embeds the largest face of each image, and
    ``embed(image, all_faces=...)`` returns the faces found with one embedding each. Images with more than
    ``max_pixels`` pixels are refused before decoding; ``fingerprint()`` names the embedding space."""

    detector: Any
    max_pixels: int

    def embed(self, source: Any, *, all_faces: bool = False) -> Any: ...

    def fingerprint(self) -> str: ...


def model_fingerprint(model: Any) -> str:
    """sha256 of what determines the embedding space: the architecture config (without the calibration,
    which only moves the threshold) and every weight tensor. Models may provide ``fingerprint()`` instead.

    Example:
        >>> class Plain:
        ...     config = {"embedding_dim": 8}
        >>> class Recalibrated:  # the calibration moves the threshold, not the embedding space
        ...     config = {"embedding_dim": 8, "calibration": {"threshold": 0.4}}
        >>> model_fingerprint(Plain()) == model_fingerprint(Recalibrated())
        True
    """
    if callable(getattr(model, "fingerprint", None)):
        return str(model.fingerprint())
    config = dict(getattr(model, "config", None) or {})
    config.pop("calibration", None)
    state_dict = getattr(model, "state_dict", None)
    return weights_fingerprint(config, state_dict() if callable(state_dict) else {})


def weights_fingerprint(config: Mapping[str, Any], state_dict: Mapping[str, Any]) -> str:
    """sha256 of a config (as sorted JSON) and every tensor of a state dict (name and bytes, in name order):
    the identity of a model that ``model_fingerprint`` and the two-tower model both use."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode("utf-8"))
    for name, tensor in sorted(state_dict.items()):
        digest.update(name.encode("utf-8"))
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=4)
def _face_model(name: str, detector: str) -> EmbeddingModel:
    """Ready-made face models are read-only and thread-safe behind their own locks, and slow to load (dlib
    reads two model files): one per name and detector per process."""
    return registry.get(name, FACE_MODEL_KIND)(detector=detector)


def load_model(spec: str | Path, *, faces: bool = False, detector: str = "hog", device: Any = None,
               runtime: str | None = None) -> EmbeddingModel:
    """Load an embedding model for the gallery and the service.

    Args:
        spec: a registered face model name (``"dlib-face"``: dlib's pretrained face descriptor) or a model
            folder written by ``Embedder.save`` (config.json + model.safetensors; never unpickled, no code run).
        faces: for a model folder, detect and align faces first (a model trained on aligned face crops);
            otherwise whole images are embedded.
        detector: face detector, ``"hog"`` or ``"mmod"``.
        device: torch device for a model folder; CUDA when available by default.
        runtime: for a model folder, ``"torch"`` or ``"onnx"`` (onnxruntime on its exported ``model.onnx``); by
            default onnx exactly when the folder holds ``model.onnx`` and no weights (see ``Embedder.load``).

    Raises:
        TypeError: ``spec`` is not a string or a path.
        ValueError: ``spec`` is neither a registered face model nor a model folder.
    """
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"model must be a face model name or a model folder path, got {type(spec).__name__}")
    built_in = registry.names(FACE_MODEL_KIND)
    if str(spec) in built_in:
        if runtime == "onnx":
            raise ValueError(f"runtime 'onnx' needs a model folder holding an exported model.onnx; {str(spec)!r} is "
                             f"a ready-made face model")
        return _face_model(str(spec), detector)
    path = Path(spec)
    if not ((path / "config.json").is_file() or (path / "model.onnx").is_file()):
        raise ValueError(f"model must be one of {built_in} or a model folder with config.json (or an exported "
                         f"model.onnx), got {str(spec)!r}")
    # Here, not at the top: the protocol is what galleries of face embeddings need, and they need no torch.
    from deepmetric.models.embedder import Embedder

    embedder = Embedder.load(path, device=device, runtime=runtime)
    if faces:
        return registry.get(ALIGNED_FACES, FACE_PIPELINE_KIND)(embedder, detector=detector)
    return embedder
