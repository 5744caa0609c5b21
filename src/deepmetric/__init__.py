"""deepmetric: deep metric learning, from training embeddings to searching galleries of millions.

Nothing heavy happens at import time; subpackages load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {
    "types", "registry", "config", "io", "distances", "reducers", "losses", "miners",
    "samplers", "models", "data", "train", "eval", "index", "gallery", "service",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"deepmetric.{name}")
    raise AttributeError(f"module 'deepmetric' has no attribute {name!r}")


def build(node: dict, kind: str | None = None) -> Any:
    """Build a component from a ``{"name": ..., "args": {...}}`` node (see ``deepmetric.registry``)."""
    from deepmetric.registry import build as _build

    return _build(node, kind=kind)
