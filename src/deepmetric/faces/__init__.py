"""Face pipeline: detect faces and 5 landmarks (dlib) in images decoded by ``deepmetric.data.images``, align
them to the ArcFace template, and embed them (dlib's pretrained descriptor or a deepmetric model). dlib loads
on first use."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ARCFACE_TEMPLATE_112": "alignment", "face_template": "alignment", "estimate_similarity": "alignment",
    "warp_affine": "alignment", "align_face": "alignment",
    "Face": "detection", "FaceDetector": "detection", "NoFaceError": "detection", "model_file": "detection",
    "FaceEmbedder": "embedder", "DlibFaceEmbedder": "embedder", "AlignedFaceEmbedder": "embedder",
    "FaceEmbeddings": "embedder",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"deepmetric.faces.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'deepmetric.faces' has no attribute {name!r}")
