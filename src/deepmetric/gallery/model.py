"""The embedding model seen from the gallery: load one by name or folder, fingerprint it (the stamp that
ties a gallery to the model that embedded it) and read its calibrated decision threshold."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

#: Built-in model names accepted wherever a model folder is.
BUILTIN_MODELS = ("dlib-face",)


def model_fingerprint(model: Any) -> str:
    """sha256 of what determines the embedding space: the architecture config (without the calibration,
    which only moves the threshold) and every weight tensor. Models may provide ``fingerprint()`` instead."""
    if hasattr(model, "fingerprint"):
        return str(model.fingerprint())
    config = dict(getattr(model, "config", None) or {})
    config.pop("calibration", None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode("utf-8"))
    state_dict = getattr(model, "state_dict", None)
    if callable(state_dict):
        for name, tensor in sorted(state_dict().items()):
            digest.update(name.encode("utf-8"))
            digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def threshold_from_config(config: dict[str, Any] | None) -> float | None:
    """The decision threshold a model's config carries: ``calibration.threshold`` (calibrated on data), else a
    published ``operating_point.threshold``; None when neither exists."""
    config = config or {}
    for key in ("calibration", "operating_point"):
        value = (config.get(key) or {}).get("threshold")
        if value is not None:
            return float(value)
    return None


def describe(config: dict[str, Any] | None, embedding_dim: int | None = None) -> str:
    """A short human name for a model config, for messages and the health endpoint."""
    config = config or {}
    name = config.get("name") or (config.get("backbone") or {}).get("name") or "model"
    dim = embedding_dim or config.get("embedding_dim")
    return f"{name} ({dim}-d)" if dim else str(name)


@functools.lru_cache(maxsize=2)
def _dlib_face(detector: str) -> Any:
    """dlib's models are read-only and thread-safe behind their locks: load them once per process."""
    from deepmetric.faces.embedder import DlibFaceEmbedder

    return DlibFaceEmbedder(detector=detector)


def load_model(spec: str | Path, *, faces: bool = False, detector: str = "hog", device: Any = None) -> Any:
    """Load an embedding model for the gallery and the service.

    Args:
        spec: ``"dlib-face"`` (dlib's pretrained face descriptor) or a model folder written by
            ``Embedder.save`` (config.json + model.safetensors; never unpickled, no code run).
        faces: for a model folder, detect and align faces first (a model trained on aligned face crops);
            otherwise whole images are embedded.
        detector: face detector, ``"hog"`` or ``"mmod"``.
        device: torch device for a model folder; CUDA when available by default.
    """
    if str(spec) == "dlib-face":
        return _dlib_face(detector)
    path = Path(spec)
    if not (path / "config.json").is_file():
        raise ValueError(f"model must be one of {list(BUILTIN_MODELS)} or a model folder with config.json, "
                         f"got {str(spec)!r}")
    from deepmetric.models import Embedder

    embedder = Embedder.load(path, device=device)
    if faces:
        from deepmetric.faces.detection import FaceDetector
        from deepmetric.faces.embedder import AlignedFaceEmbedder

        return AlignedFaceEmbedder(embedder, detector=FaceDetector(detector=detector))
    return embedder
