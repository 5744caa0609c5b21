"""Small typed results passed between components: mined pairs and triplets, and search results.

Index tensors always point into ``embeddings`` (anchors) and into ``ref_embeddings`` (the others), which
is ``embeddings`` itself when no separate reference set is given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _as_index(name: str, value: torch.Tensor) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(value)
    if value.dim() != 1:
        raise ValueError(f"{name} must be a 1-D index tensor, got shape {tuple(value.shape)}")
    if value.dtype != torch.long:
        value = value.long()
    return value


@dataclass(frozen=True)
class Pairs:
    """Positive and negative pairs: ``(anchor_positive[i], positive[i])`` share a label,
    ``(anchor_negative[j], negative[j])`` do not."""

    anchor_positive: torch.Tensor
    positive: torch.Tensor
    anchor_negative: torch.Tensor
    negative: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("anchor_positive", "positive", "anchor_negative", "negative"):
            object.__setattr__(self, name, _as_index(name, getattr(self, name)))
        if self.anchor_positive.numel() != self.positive.numel():
            raise ValueError("anchor_positive and positive must have the same length")
        if self.anchor_negative.numel() != self.negative.numel():
            raise ValueError("anchor_negative and negative must have the same length")

    @property
    def num_positive(self) -> int:
        return int(self.anchor_positive.numel())

    @property
    def num_negative(self) -> int:
        return int(self.anchor_negative.numel())

    def __len__(self) -> int:
        return self.num_positive + self.num_negative

    def to(self, device: torch.device | str) -> Pairs:
        return Pairs(*(t.to(device) for t in (self.anchor_positive, self.positive,
                                              self.anchor_negative, self.negative)))

    @staticmethod
    def empty(device: torch.device | str | None = None) -> Pairs:
        e = torch.empty(0, dtype=torch.long, device=device)
        return Pairs(e, e, e, e)


@dataclass(frozen=True)
class Triplets:
    """Triplets ``(anchor[i], positive[i], negative[i])``: anchor and positive share a label, the negative
    does not."""

    anchor: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor

    def __post_init__(self) -> None:
        for name in ("anchor", "positive", "negative"):
            object.__setattr__(self, name, _as_index(name, getattr(self, name)))
        n = self.anchor.numel()
        if self.positive.numel() != n or self.negative.numel() != n:
            raise ValueError("anchor, positive and negative must have the same length")

    def __len__(self) -> int:
        return int(self.anchor.numel())

    def to(self, device: torch.device | str) -> Triplets:
        return Triplets(self.anchor.to(device), self.positive.to(device), self.negative.to(device))

    @staticmethod
    def empty(device: torch.device | str | None = None) -> Triplets:
        e = torch.empty(0, dtype=torch.long, device=device)
        return Triplets(e, e, e)


@dataclass(frozen=True)
class SearchResult:
    """Top-k neighbours: ``scores`` (Q, k) similarities, higher = closer; ``ids`` (Q, k) int64, -1 = missing."""

    scores: np.ndarray
    ids: np.ndarray

    def __post_init__(self) -> None:
        if self.scores.shape != self.ids.shape:
            raise ValueError(f"scores {self.scores.shape} and ids {self.ids.shape} must have the same shape")

    def __len__(self) -> int:
        return int(self.ids.shape[0])
