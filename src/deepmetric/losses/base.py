"""The loss contract: ``loss(embeddings, labels, *, mined=None, ref_embeddings=None, ref_labels=None)``.

``BaseLoss.forward`` validates inputs once and calls the subclass's ``compute``; subclasses never
re-check shapes. ``MetricLoss`` adds a distance and a reducer for pair/triplet/batch losses.
"""

from __future__ import annotations

import torch
from torch import nn

from deepmetric.distances import Distance, get_distance
from deepmetric.reducers import check_reduction
from deepmetric.types import Pairs, Triplets


def check_embeddings(embeddings: torch.Tensor, labels: torch.Tensor | None, name: str = "embeddings") -> None:
    """Raise ValueError/TypeError naming the problem for malformed (embeddings, labels)."""
    if not isinstance(embeddings, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(embeddings).__name__}")
    if embeddings.dim() != 2:
        raise ValueError(f"{name} must have shape (B, D), got {tuple(embeddings.shape)}")
    if not embeddings.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {embeddings.dtype}")
    if labels is None:
        return
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels for {name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"labels for {name} must have shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels for {name} must be integers, got {labels.dtype}")


class BaseLoss(nn.Module):
    """Validates ``(embeddings, labels, mined, ref_embeddings, ref_labels)`` and calls ``compute``.

    ``ref_embeddings``/``ref_labels`` (e.g. a cross-batch memory) default to the batch itself. Losses
    with class centres ignore ``ref_*``.
    """

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None, *,
                mined: Pairs | Triplets | None = None, ref_embeddings: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        check_embeddings(embeddings, labels)
        if (ref_embeddings is None) != (ref_labels is None):
            raise ValueError("ref_embeddings and ref_labels must be given together")
        if ref_embeddings is not None:
            check_embeddings(ref_embeddings, ref_labels, "ref_embeddings")
            if ref_embeddings.shape[1] != embeddings.shape[1]:
                raise ValueError(f"ref_embeddings has dimension {ref_embeddings.shape[1]}, embeddings {embeddings.shape[1]}")
        if mined is not None and not isinstance(mined, (Pairs, Triplets)):
            raise TypeError(f"mined must be Pairs or Triplets, got {type(mined).__name__}")
        return self.compute(embeddings, labels, mined=mined, ref_embeddings=ref_embeddings, ref_labels=ref_labels)

    def compute(self, embeddings: torch.Tensor, labels: torch.Tensor | None, *, mined: Pairs | Triplets | None,
                ref_embeddings: torch.Tensor | None, ref_labels: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError


class MetricLoss(BaseLoss):
    """Base for losses on distances between embeddings (pairs, triplets, whole batches).

    Args:
        distance: a ``Distance`` or registry name; default given by the subclass.
        reduction: ``mean``, ``sum``, ``mean_nonzero`` or ``none`` (see ``deepmetric.reducers``).
    """

    default_distance = "euclidean"

    def __init__(self, *, distance: Distance | str | None = None, reduction: str = "mean") -> None:
        super().__init__()
        self.distance = get_distance(distance, self.default_distance)
        self.reduction = check_reduction(reduction)
