"""deepmetric: deep metric learning, from training embeddings to searching galleries of millions.

Nothing heavy happens at import time; subpackages load on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
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


def lazy_exports(package: str, exports: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``name`` is imported from ``package.<exports[name]>`` on first
    use, so importing a package never imports what it re-exports (torch, numba, ...)."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def build(node: dict, kind: str | None = None) -> Any:
    """Build a component from a ``{"name": ..., "args": {...}}`` node (see ``deepmetric.registry``)."""
    from deepmetric.registry import build as _build

    return _build(node, kind=kind)
