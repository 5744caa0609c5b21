"""The miner contract: ``miner(embeddings, labels, ref_embeddings=None, ref_labels=None) -> Pairs | Triplets``.

Miners return index tensors (never a dense B x B x B tensor). Indices point into ``embeddings`` (anchors) and
``ref_embeddings`` (the rest), which is the batch itself when no reference set is given; in that case an
item is never paired with itself.
"""

from __future__ import annotations

import torch
from torch import nn

from deepmetric.distances import Distance, get_distance
from deepmetric.types import Pairs, Triplets
from deepmetric.validation import check_batch


class BaseMiner(nn.Module):
    """Validates inputs once and calls ``mine``. Subclasses implement
    ``mine(embeddings, labels, ref_embeddings, ref_labels) -> Pairs | Triplets`` where ``ref_labels`` is
    None when the reference set is the batch itself (``ref_embeddings`` is then ``embeddings``).

    Mining runs without gradient: it only chooses indices.
    """

    default_distance = "euclidean"

    def __init__(self, *, distance: Distance | str | None = None) -> None:
        super().__init__()
        self.distance = get_distance(distance, self.default_distance)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_embeddings: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None) -> Pairs | Triplets:
        check_batch(embeddings, labels, ref_embeddings, ref_labels, labels_required=True)
        with torch.no_grad():
            return self.mine(embeddings.detach(), labels,
                             embeddings.detach() if ref_embeddings is None else ref_embeddings.detach(), ref_labels)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_embeddings: torch.Tensor,
             ref_labels: torch.Tensor | None) -> Pairs | Triplets:
        raise NotImplementedError
