"""Durable galleries of identities (SQLite truth + cached ANN index) with calibrated verify / identify."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Gallery": "gallery", "Decision": "gallery", "Match": "gallery", "TemplateMatch": "gallery",
    "GalleryModelMismatch": "gallery", "encode_image": "gallery",
    "GalleryStore": "store", "GalleryError": "store", "UnknownIdentityError": "store",
    "DuplicateIdentityError": "store", "IdentityRecord": "store", "TemplateInput": "store",
    "IdentityIndex": "cache",
    "threshold_from_config": "model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"deepmetric.gallery.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'deepmetric.gallery' has no attribute {name!r}")
