"""Triplet miners: all triplets, hardest-k, batch-hard (Hermans et al. 2017) and semi-hard (FaceNet).

All of them work on a (B, R) matrix and return index tensors; none builds a (B, R, R) tensor.
"""

from __future__ import annotations

import torch

from deepmetric.distances import Distance
from deepmetric.masks import label_masks, positive_pairs, triplets_from_masks
from deepmetric.miners._util import closeness_ranking, negatives_only
from deepmetric.miners.base import BaseMiner
from deepmetric.registry import register
from deepmetric.types import Pairs, Triplets
from deepmetric.validation import check_bool, check_choice, check_positive_float, check_positive_int


@register("miner", "all_triplets", example={})
class AllTripletsMiner(BaseMiner):
    r"""Every valid triplet :math:`\{(a, p, n): y_a = y_p \ne y_n,\ a \ne p\}` (Weinberger & Saul 2009;
    the "batch all" strategy of Hermans et al. 2017, "In Defense of the Triplet Loss").

    The result itself has :math:`\sum_a |P_a| |N_a|` entries (cubic in B for few classes), but no dense
    (B, R, R) tensor is built: triplets are enumerated anchor by anchor.

    Shapes: embeddings (B, D), labels (B,); optional ref_embeddings (R, D), ref_labels (R,). Returns
    ``Triplets``.

    Example:
        >>> import torch
        >>> len(AllTripletsMiner()(torch.randn(4, 8), torch.tensor([0, 0, 1, 1])))
        8
    """

    def __init__(self, *, distance: Distance | str | None = None) -> None:
        super().__init__(distance=distance)

    def mine(self, embeddings, labels, ref_embeddings, ref_labels) -> Triplets:
        return triplets_from_masks(*label_masks(labels, ref_labels))


def _hardest(closeness: torch.Tensor, mask: torch.Tensor, k: int, *,
             farthest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the columns of the ``k`` hardest entries allowed by ``mask`` (farthest positives or closest
    negatives) and whether each chosen column is really allowed (rows may have fewer than ``k``)."""
    fill = float("-inf") if farthest else float("inf")
    masked = closeness.masked_fill(~mask, fill)
    columns = torch.topk(masked, min(k, masked.shape[1]), dim=1, largest=farthest).indices
    return columns, mask.gather(1, columns)


def _hardest_one(closeness: torch.Tensor, labels: torch.Tensor, ref_labels: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_hardest`` with k = 1 for both sides from the positive-pair list: the farthest positive by a
    reduction over the P pairs and the closest negative by one row minimum (the batch-hard hot path)."""
    num_anchors = closeness.shape[0]
    anchor, positive = positive_pairs(labels, ref_labels)
    values = closeness[anchor, positive]
    farthest = torch.full((num_anchors,), float("-inf"), dtype=values.dtype, device=values.device)
    farthest = farthest.scatter_reduce(0, anchor, values, reduce="amax")
    # first positive reaching its anchor's maximum
    reaching = torch.where(values == farthest[anchor], torch.arange(anchor.numel(), device=anchor.device),
                           anchor.numel())
    first = torch.full((num_anchors,), anchor.numel(), dtype=torch.long, device=anchor.device)
    first = first.scatter_reduce(0, anchor, reaching, reduce="amin")
    pos_valid = first < anchor.numel()
    pos_cols = torch.cat([positive, positive.new_zeros(1)])[first]  # anchors without a positive hit the pad
    neg_values, neg_cols = negatives_only(closeness, anchor, positive, ref_labels is None).min(1)
    return pos_cols[:, None], pos_valid[:, None], neg_cols[:, None], torch.isfinite(neg_values)[:, None]


_TUPLE_TYPES = ("triplets", "pairs")


@register("miner", "hard", example={"tuple_type": "triplets", "k": 2})
class HardMiner(BaseMiner):
    r"""The ``k`` hardest positives and the ``k`` hardest negatives of every anchor, as pairs or triplets.

    Hardest positives are the farthest same-label items, hardest negatives the closest other-label items:

    .. math::
        P_a^k = \operatorname{top\text{-}k}_{p: y_p = y_a, p \ne a} d(a, p), \qquad
        N_a^k = \operatorname{bottom\text{-}k}_{n: y_n \ne y_a} d(a, n)

    (for a similarity the order flips). ``tuple_type="pairs"`` returns :math:`(a, p), p \in P_a^k` and
    :math:`(a, n), n \in N_a^k`; ``tuple_type="triplets"`` returns every :math:`(a, p, n) \in \{a\} \times
    P_a^k \times N_a^k`. With ``k=1`` and triplets this is batch-hard mining (Hermans, Beyer & Leibe 2017,
    "In Defense of the Triplet Loss for Person Re-Identification"). Anchors with fewer than ``k`` positives
    or negatives use those they have; anchors with none give no tuple.

    Args:
        tuple_type: ``"triplets"`` or ``"pairs"``.
        k: hardest items kept per anchor and side, >= 1.
        distance: distance or similarity (default euclidean).

    Shapes: embeddings (B, D), labels (B,); optional ref_embeddings (R, D), ref_labels (R,). At most
    ``B k^2`` triplets or ``2 B k`` pairs; memory O(B R).

    Example:
        >>> import torch
        >>> miner = HardMiner(tuple_type="pairs", k=1)
        >>> pairs = miner(torch.randn(6, 8), torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> pairs.num_positive, pairs.num_negative
        (6, 6)
    """

    def __init__(self, *, tuple_type: str = "triplets", k: int = 1, distance: Distance | str | None = None) -> None:
        super().__init__(distance=distance)
        self.tuple_type = check_choice("tuple_type", tuple_type, _TUPLE_TYPES)
        self.k = check_positive_int("k", k)

    def mine(self, embeddings, labels, ref_embeddings, ref_labels) -> Pairs | Triplets:
        references = embeddings if ref_labels is None else ref_embeddings
        closeness, _ = closeness_ranking(self.distance, embeddings, references)
        if closeness.numel() == 0:
            return (Pairs if self.tuple_type == "pairs" else Triplets).empty(embeddings.device)
        if self.k == 1:
            pos_cols, pos_valid, neg_cols, neg_valid = _hardest_one(closeness, labels, ref_labels)
        else:
            positive, negative = label_masks(labels, ref_labels)
            pos_cols, pos_valid = _hardest(closeness, positive, self.k, farthest=True)
            neg_cols, neg_valid = _hardest(closeness, negative, self.k, farthest=False)
        rows = torch.arange(closeness.shape[0], device=closeness.device)
        if self.tuple_type == "pairs":
            return Pairs(rows[:, None].expand_as(pos_cols)[pos_valid], pos_cols[pos_valid],
                         rows[:, None].expand_as(neg_cols)[neg_valid], neg_cols[neg_valid])
        grid = (rows.shape[0], pos_cols.shape[1], neg_cols.shape[1])
        valid = pos_valid[:, :, None] & neg_valid[:, None, :]
        return Triplets(rows[:, None, None].expand(grid)[valid], pos_cols[:, :, None].expand(grid)[valid],
                        neg_cols[:, None, :].expand(grid)[valid])


@register("miner", "batch_hard", example={})
class BatchHardMiner(HardMiner):
    r"""Batch-hard triplets (Hermans, Beyer & Leibe 2017, "In Defense of the Triplet Loss for Person
    Re-Identification"): for every anchor its hardest positive and hardest negative,

    .. math::
        \Big(a,\ \arg\max_{p: y_p = y_a, p \ne a} d(a, p),\ \arg\min_{n: y_n \ne y_a} d(a, n)\Big)

    (arg min / arg max swap for a similarity). Anchors without a positive or a negative give no triplet.

    Shapes: embeddings (B, D), labels (B,); optional ref_embeddings (R, D), ref_labels (R,). At most B
    triplets; memory O(B R).

    Example:
        >>> import torch
        >>> len(BatchHardMiner()(torch.randn(6, 8), torch.tensor([0, 0, 1, 1, 2, 7])))
        4
    """

    def __init__(self, *, distance: Distance | str | None = None) -> None:
        super().__init__(tuple_type="triplets", k=1, distance=distance)


@register("miner", "semi_hard", example={"margin": 0.2})
class SemiHardMiner(BaseMiner):
    r"""Semi-hard triplets (Schroff, Kalenichenko & Philbin 2015, "FaceNet"): for every positive pair
    :math:`(a, p)` the closest negative that is farther than the positive but inside the margin,

    .. math::
        n^*(a, p) = \arg\min_{n:\ y_n \ne y_a,\ d(a,p) < d(a,n) < d(a,p) + m} d(a, n)

    (for a similarity: :math:`s(a,p) - m < s(a,n) < s(a,p)`, the largest such :math:`s(a,n)`). Pairs with
    no semi-hard negative are dropped, or with ``fallback_to_hardest=True`` get the hardest negative
    :math:`\arg\min_n d(a,n)`.

    Each anchor's negative distances are sorted once and every positive distance is located with
    ``searchsorted``, so time is O(B R log R) and memory O(B R) (never the (B, R, R) tensor of a naive
    implementation). The number of triplets is at most the number of positive pairs.

    Args:
        margin: m, > 0, in the units of the distance (similarity units for cosine / dot).
        fallback_to_hardest: give positive pairs without a semi-hard negative the hardest negative.
        distance: distance or similarity (default euclidean).

    Shapes: embeddings (B, D), labels (B,); optional ref_embeddings (R, D), ref_labels (R,). Returns
    ``Triplets``.

    Example:
        >>> import torch
        >>> from deepmetric.distances import EuclideanDistance
        >>> embeddings = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.25, 0.0], [1.0, 0.0]])
        >>> miner = SemiHardMiner(margin=0.2, distance=EuclideanDistance(normalize_embeddings=False))
        >>> triplets = miner(embeddings, torch.tensor([0, 0, 1, 1]))
        >>> triplets.anchor.tolist(), triplets.positive.tolist(), triplets.negative.tolist()
        ([0, 1, 3], [1, 0, 2], [2, 2, 1])
    """

    def __init__(self, *, margin: float = 0.2, fallback_to_hardest: bool = False,
                 distance: Distance | str | None = None) -> None:
        super().__init__(distance=distance)
        self.margin = check_positive_float("margin", margin)
        self.fallback_to_hardest = check_bool("fallback_to_hardest", fallback_to_hardest)

    def mine(self, embeddings, labels, ref_embeddings, ref_labels) -> Triplets:
        anchor, positive_idx = positive_pairs(labels, ref_labels)
        if anchor.numel() == 0:
            return Triplets.empty(embeddings.device)
        closeness, to_distance = closeness_ranking(self.distance, embeddings,
                                                   embeddings if ref_labels is None else ref_embeddings)
        anchor_positive = closeness[anchor, positive_idx]
        negative_closeness = negatives_only(closeness, anchor, positive_idx, ref_labels is None)
        # Positive distances laid out per anchor, (B, most positives of an anchor), padded with +inf, so
        # that each anchor's negatives are scanned or searched once for all its positives.
        counts = torch.bincount(anchor, minlength=closeness.shape[0])
        rank = torch.arange(anchor.numel(), device=anchor.device) - (torch.cumsum(counts, 0) - counts)[anchor]
        queries = torch.full((closeness.shape[0], int(counts.max())), float("inf"), dtype=closeness.dtype,
                             device=closeness.device)
        queries[anchor, rank] = anchor_positive
        candidate, negative_cols = _closest_farther(negative_closeness, queries)
        candidate, negative_idx = candidate[anchor, rank], negative_cols[anchor, rank]
        # The search ran on a ranking of the distances; the margin is tested on the distances themselves.
        # An inf candidate (no farther negative) fails the comparisons.
        farther = candidate > anchor_positive
        if to_distance is not None:
            candidate, anchor_positive = to_distance(candidate), to_distance(anchor_positive)
        semi_hard = farther & (candidate < anchor_positive + self.margin)
        if not self.fallback_to_hardest:
            return Triplets(anchor[semi_hard], positive_idx[semi_hard], negative_idx[semi_hard])
        hardest_value, hardest = negative_closeness.min(1)
        keep = semi_hard | torch.isfinite(hardest_value)[anchor]
        negative_idx = torch.where(semi_hard, negative_idx, hardest[anchor])
        return Triplets(anchor[keep], positive_idx[keep], negative_idx[keep])


# Up to this many positives per anchor a masked min over (B, J, R) beats sorting every row; it runs over
# blocks of rows of at most _SCAN_BLOCK elements so memory stays O(B R).
_SCAN_MAX_POSITIVES = 6
_SCAN_BLOCK = 1 << 22


def _closest_farther(negative_closeness: torch.Tensor, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each ``queries[a, j]``, the smallest ``negative_closeness[a, n]`` strictly above it and its column
    (``inf`` when there is none). Inputs (B, R) and (B, J); memory O(B R) whatever J."""
    num_queries, num_refs = queries.shape[1], negative_closeness.shape[1]
    if num_queries <= _SCAN_MAX_POSITIVES:
        rows = max(1, _SCAN_BLOCK // (num_queries * num_refs))
        values, columns = [], []
        for start in range(0, queries.shape[0], rows):
            block = negative_closeness[start:start + rows, None, :]
            query = queries[start:start + rows, :, None]
            value, column = torch.where(block > query, block, float("inf")).min(2)
            values.append(value)
            columns.append(column)
        return torch.cat(values), torch.cat(columns)
    sorted_negatives, order = torch.sort(negative_closeness, dim=1, stable=True)
    slot = torch.searchsorted(sorted_negatives, queries.contiguous(), right=True)
    slot = slot.clamp_max(num_refs - 1)
    return sorted_negatives.gather(1, slot), order.gather(1, slot)
