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
from deepmetric.validation import check_batch


class BaseLoss(nn.Module):
    """Validates ``(embeddings, labels, mined, ref_embeddings, ref_labels)`` and calls ``compute``.

    ``ref_embeddings``/``ref_labels`` (e.g. a cross-batch memory) default to the batch itself. Losses
    with class centres ignore ``ref_*``. A subclass that cannot work without labels sets ``needs_labels``.
    """

    needs_labels = False

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None, *,
                mined: Pairs | Triplets | None = None, ref_embeddings: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        check_batch(embeddings, labels, ref_embeddings, ref_labels, labels_required=self.needs_labels)
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
