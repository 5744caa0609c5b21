"""The embedding neck: pooled features (B, F) -> embeddings (B, embedding_dim) before L2 normalisation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from deepmetric.validation import check_in_range

NECK_KEYS = ("dropout", "linear", "batch_norm")


class EmbeddingNeck(nn.Module):
    """Dropout -> Linear(in_features, embedding_dim) -> BatchNorm1d, each part optional.

    BatchNorm after the projection is the insightface/BNNeck recipe; without the linear layer the pooled
    features are the embedding and ``in_features`` must equal ``embedding_dim``.

    Args:
        in_features: size of the pooled features.
        embedding_dim: size of the embedding.
        dropout: dropout probability before the projection.
        linear: use the linear projection.
        batch_norm: BatchNorm1d on the embedding.
    """

    def __init__(self, *, in_features: int, embedding_dim: int, dropout: float = 0.0, linear: bool = True,
                 batch_norm: bool = True) -> None:
        super().__init__()
        check_in_range("dropout", dropout, 0, 1, high_inclusive=False)
        if not linear and in_features != embedding_dim:
            raise ValueError(f"neck without a linear layer needs embedding_dim == pooled features "
                             f"({in_features}), got embedding_dim={embedding_dim}")
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.linear = nn.Linear(in_features, embedding_dim, bias=not batch_norm) if linear else nn.Identity()
        self.norm = nn.BatchNorm1d(embedding_dim) if batch_norm else nn.Identity()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(self.dropout(features)))


def validate_neck(neck: Mapping[str, Any] | None) -> dict[str, Any]:
    """The neck part of a model config with defaults filled in; unknown keys are an error."""
    neck = dict(neck or {})
    unknown = sorted(set(neck) - set(NECK_KEYS))
    if unknown:
        raise ValueError(f"model config 'neck' has unknown key {unknown[0]!r}; allowed: {list(NECK_KEYS)}")
    clean = {"dropout": float(neck.get("dropout", 0.0)), "linear": bool(neck.get("linear", True)),
             "batch_norm": bool(neck.get("batch_norm", True))}
    return clean
