"""Face pipeline: detect faces and 5 landmarks (dlib) in images decoded by ``deepmetric.data.images``, align
them to the ArcFace template, and embed them (dlib's pretrained descriptor or a deepmetric model). dlib loads
on first use."""

from __future__ import annotations

from deepmetric import lazy_exports

_EXPORTS = {
    "ARCFACE_TEMPLATE_112": "alignment", "face_template": "alignment", "estimate_similarity": "alignment",
    "warp_affine": "alignment", "align_face": "alignment",
    "Face": "detection", "FaceDetector": "detection", "NoFaceError": "detection", "model_file": "detection",
    "MultipleFacesError": "detection", "check_face_choice": "detection", "choose_face": "detection",
    "FaceEmbedder": "embedder", "DlibFaceEmbedder": "embedder", "AlignedFaceEmbedder": "embedder",
    "FaceEmbeddings": "embedder",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
