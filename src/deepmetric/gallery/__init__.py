"""Durable galleries of identities (SQLite truth + cached ANN index) with calibrated verify / identify."""

from __future__ import annotations

from deepmetric import lazy_exports

_EXPORTS = {
    "Gallery": "gallery", "Decision": "gallery", "Match": "gallery", "TemplateMatch": "gallery",
    "GalleryModelMismatch": "gallery", "encode_image": "gallery",
    "GalleryStore": "store", "GalleryError": "store", "UnknownIdentityError": "store",
    "DuplicateIdentityError": "store", "IdentityRecord": "store", "TemplateInput": "store",
    "IdentityIndex": "cache",
    "threshold_from_config": "model",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
