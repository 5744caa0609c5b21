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


def label_masks(labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (B, R) masks of positive and negative pairs. Without ``ref_labels`` the reference set is the
    batch and the diagonal (an item with itself) is neither positive nor negative."""
    same_set = ref_labels is None
    ref = labels if same_set else ref_labels
    same = labels[:, None] == ref[None, :]
    positive = same.clone()
    if same_set:
        positive.fill_diagonal_(False)
    return positive, ~same


def triplets_from_masks(positive: torch.Tensor, negative: torch.Tensor) -> Triplets:
    """Every (a, p, n) with ``positive[a, p]`` and ``negative[a, n]``, built anchor by anchor group so that
    memory is O(number of triplets + B^2), never a dense (B, R, R) tensor."""
    device = positive.device
    pos_count = positive.sum(1)
    neg_count = negative.sum(1)
    per_anchor = pos_count * neg_count
    total = int(per_anchor.sum())
    if total == 0:
        return Triplets.empty(device)
    anchors = torch.arange(positive.shape[0], device=device)
    anchor = torch.repeat_interleave(anchors, per_anchor)
    # Position of each triplet inside its anchor's block, split into (positive rank, negative rank).
    offsets = torch.cumsum(per_anchor, 0) - per_anchor
    local = torch.arange(total, device=device) - torch.repeat_interleave(offsets, per_anchor)
    neg_per = torch.repeat_interleave(neg_count, per_anchor)
    pos_rank = torch.div(local, neg_per, rounding_mode="floor")
    neg_rank = local - pos_rank * neg_per
    pos_cols = positive.nonzero()[:, 1]
    neg_cols = negative.nonzero()[:, 1]
    pos_start = torch.cumsum(pos_count, 0) - pos_count
    neg_start = torch.cumsum(neg_count, 0) - neg_count
    positive_idx = pos_cols[pos_start[anchor] + pos_rank]
    negative_idx = neg_cols[neg_start[anchor] + neg_rank]
    return Triplets(anchor, positive_idx, negative_idx)


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
        # Imported here: deepmetric.losses imports the miners' helpers, so a module-level import is a cycle.
        from deepmetric.losses.base import check_embeddings

        check_embeddings(embeddings, labels)
        if labels is None:
            raise ValueError("miners need labels")
        if (ref_embeddings is None) != (ref_labels is None):
            raise ValueError("ref_embeddings and ref_labels must be given together")
        if ref_embeddings is not None:
            check_embeddings(ref_embeddings, ref_labels, "ref_embeddings")
        with torch.no_grad():
            return self.mine(embeddings.detach(), labels,
                             embeddings.detach() if ref_embeddings is None else ref_embeddings.detach(), ref_labels)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_embeddings: torch.Tensor,
             ref_labels: torch.Tensor | None) -> Pairs | Triplets:
        raise NotImplementedError
