"""Which (anchor, reference) pairs share a label: the positive / negative masks and index tuples that both the
losses and the miners build from ``labels`` and ``ref_labels``, kept below both so neither imports the other.

Without ``ref_labels`` the reference set is the batch itself, and an item is never paired with itself.
"""

from __future__ import annotations

import torch

from deepmetric.types import Triplets


def label_masks(labels: torch.Tensor, ref_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (B, R) masks of positive and negative pairs. Without ``ref_labels`` the reference set is the
    batch and the diagonal (an item with itself) is neither positive nor negative.

    >>> positive, negative = label_masks(torch.tensor([0, 0, 1]))
    >>> positive.int().tolist(), negative.int().tolist()
    ([[0, 1, 0], [1, 0, 0], [0, 0, 0]], [[0, 0, 1], [0, 0, 1], [1, 1, 0]])
    """
    same_set = ref_labels is None
    ref = labels if same_set else ref_labels
    same = labels[:, None] == ref[None, :]
    positive = same.clone()
    if same_set:
        positive.fill_diagonal_(False)
    return positive, ~same


def positive_pairs(labels: torch.Tensor, ref_labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchor, positive) indices of every same-label pair (an item is not its own positive when there is
    no reference set), in row-major order like ``label_masks(...)[0].nonzero()``.

    The reference labels are sorted once and each anchor's positives are the run of its label, so this
    costs O(B log R + P) instead of building and scanning a (B, R) mask.

    >>> anchor, positive = positive_pairs(torch.tensor([0, 0, 1, 0]), None)
    >>> anchor.tolist(), positive.tolist()
    ([0, 0, 1, 1, 3, 3], [1, 3, 0, 3, 0, 1])
    """
    ref = labels if ref_labels is None else ref_labels
    sorted_ref, order = torch.sort(ref, stable=True)
    start = torch.searchsorted(sorted_ref, labels)
    counts = torch.searchsorted(sorted_ref, labels, right=True) - start
    anchor = torch.repeat_interleave(torch.arange(labels.shape[0], device=labels.device), counts)
    first_of_anchor = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    offset = torch.arange(anchor.numel(), device=labels.device) - first_of_anchor
    positive = order[torch.repeat_interleave(start, counts) + offset]
    if ref_labels is None:
        not_self = anchor != positive
        anchor, positive = anchor[not_self], positive[not_self]
    return anchor, positive


def triplets_from_masks(positive: torch.Tensor, negative: torch.Tensor) -> Triplets:
    """Every (a, p, n) with ``positive[a, p]`` and ``negative[a, n]``, built anchor by anchor group so that
    memory is O(number of triplets + B^2), never a dense (B, R, R) tensor.

    >>> triplets = triplets_from_masks(*label_masks(torch.tensor([0, 0, 1])))
    >>> triplets.anchor.tolist(), triplets.positive.tolist(), triplets.negative.tolist()
    ([0, 1], [1, 0], [2, 2])
    """
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
