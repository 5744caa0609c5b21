"""How the gallery reads an embedding model's config: its decision threshold and a short name for messages.
Loading and fingerprinting models is ``deepmetric.models.protocol``'s job."""

from __future__ import annotations

from typing import Any


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
