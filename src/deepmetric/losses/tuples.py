"""Building blocks shared by the pair, triplet and batch losses: which (anchor, other) pairs take part
(from labels or from a miner's output), a log-sum-exp over masked entries that never produces NaN, and the
sum of every hinge ``[p - n + m]_+`` between two sets of values without enumerating the pairs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from deepmetric.distances import Distance, DotProductSimilarity, EuclideanDistance, SquaredEuclideanDistance
from deepmetric.distances import _safe_sqrt as safe_sqrt
from deepmetric.masks import label_masks, triplets_from_masks
from deepmetric.reducers import reduce, zero_loss
from deepmetric.types import Pairs, Triplets


def _check_range(name: str, index: torch.Tensor, size: int) -> None:
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= size):
        raise ValueError(f"mined {name} indices must lie in [0, {size}), got values in "
                         f"[{int(index.min())}, {int(index.max())}]")


def pair_masks(labels: torch.Tensor, ref_labels: torch.Tensor | None, mined: Pairs | Triplets | None,
               num_refs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean (B, R) masks of the positive and negative pairs that take part.

    Without ``mined`` every pair given by the labels takes part (see ``label_masks``); with ``mined`` only
    the mined ones: a Triplets ``(a, p, n)`` contributes the pairs ``(a, p)`` and ``(a, n)``. A pair mined
    twice counts once.
    """
    if mined is None:
        return label_masks(labels, ref_labels)
    num_anchors = labels.shape[0]
    positive = torch.zeros(num_anchors, num_refs, dtype=torch.bool, device=labels.device)
    negative = torch.zeros_like(positive)
    if isinstance(mined, Pairs):
        parts = (("anchor_positive", "positive", positive), ("anchor_negative", "negative", negative))
    else:
        parts = (("anchor", "positive", positive), ("anchor", "negative", negative))
    for anchor_name, other_name, mask in parts:
        anchor, other = getattr(mined, anchor_name).to(labels.device), getattr(mined, other_name).to(labels.device)
        _check_range(anchor_name, anchor, num_anchors)
        _check_range(other_name, other, num_refs)
        mask[anchor, other] = True
    return positive, negative


def triplets_for(labels: torch.Tensor, ref_labels: torch.Tensor | None, mined: Pairs | Triplets | None,
                 num_refs: int) -> Triplets:
    """The triplets a triplet-style loss uses: the mined ones, or every (a, p, n) combining a positive and a
    negative pair of the same anchor (from the labels or from mined Pairs)."""
    if isinstance(mined, Triplets):
        for name, size in (("anchor", labels.shape[0]), ("positive", num_refs), ("negative", num_refs)):
            _check_range(name, getattr(mined, name), size)
        return mined.to(labels.device)
    return triplets_from_masks(*pair_masks(labels, ref_labels, mined, num_refs))


def farther_than(distance: Distance, values: torch.Tensor, threshold: float, scale: float = 1.0) -> torch.Tensor:
    """``scale`` times how much farther apart than ``threshold`` the pairs are, in the units of
    ``distance``: ``scale * (d - t)`` for a distance, ``scale * (t - s)`` for a similarity (so margins are
    thresholds on the same scale). Two passes at most over ``values`` (it often spans a (B, R) matrix)."""
    sign = -scale if distance.is_similarity else scale
    if sign == 1.0:
        return values - threshold
    return (values * sign).sub_(threshold * sign)


def as_dissimilarity(distance: Distance, values: torch.Tensor) -> torch.Tensor:
    """Values where larger means farther apart: distances unchanged, similarities negated."""
    return -values if distance.is_similarity else values


# Gathering N row pairs costs about a dozen passes over N * D numbers; one well-blocked (B, R) matrix
# product is about as cheap as B * R / 1000 such element-wise operations. Below this ratio, gather.
_GATHER_RATIO = 1024


def distance_matrix(distance: Distance, embeddings: torch.Tensor, ref_embeddings: torch.Tensor | None) -> torch.Tensor:
    """``distance(embeddings, ref_embeddings)``; the plain Euclidean distance goes through ``torch.cdist``,
    one fused operation forward and backward (about a third cheaper than the expanded form, and its
    gradient is zero, not NaN, where two points coincide)."""
    if type(distance) is EuclideanDistance:
        prepared = distance.prepare(embeddings)
        return torch.cdist(prepared, prepared if ref_embeddings is None else distance.prepare(ref_embeddings))
    return distance(embeddings, ref_embeddings)


def masks_and_distances(distance: Distance, embeddings: torch.Tensor, labels: torch.Tensor | None,
                        mined: Pairs | Triplets | None, ref_embeddings: torch.Tensor | None,
                        ref_labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The start of every loss over a whole (B, R) matrix: the positive and negative masks of the pairs that
    take part (see ``pair_masks``) and the values of ``distance`` between all of them (``distance_matrix``)."""
    num_refs = (embeddings if ref_embeddings is None else ref_embeddings).shape[0]
    positive, negative = pair_masks(labels, ref_labels, mined, num_refs)
    return positive, negative, distance_matrix(distance, embeddings, ref_embeddings)


def pair_values(distance: Distance, embeddings: torch.Tensor, ref_embeddings: torch.Tensor | None,
                rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Dissimilarities (larger = farther) of the pairs ``(embeddings[rows], refs[cols])``.

    Few pairs: from the gathered rows. Many pairs of a Euclidean or dot-product distance: the dot products
    come from one matrix product and everything else is computed on the selected entries only (the (B, R)
    matrix is touched by the product and by the scatter of the selected gradients, nothing else). Other
    distances: the full matrix.
    """
    prepared = distance.prepare(embeddings)
    prepared_refs = prepared if ref_embeddings is None else distance.prepare(ref_embeddings)
    if rows.numel() * _GATHER_RATIO < prepared.shape[0] * prepared_refs.shape[0]:
        return as_dissimilarity(distance, distance.paired(prepared[rows], prepared_refs[cols]))
    if not isinstance(distance, (SquaredEuclideanDistance, DotProductSimilarity)):
        return as_dissimilarity(distance, distance.matrix(prepared, prepared_refs))[rows, cols]
    dots = (prepared @ prepared_refs.T)[rows, cols]
    if isinstance(distance, DotProductSimilarity):
        return -dots
    # The same expansion as SquaredEuclideanDistance.matrix, on the selected entries.
    squared = ((prepared * prepared).sum(1)[rows] + (prepared_refs * prepared_refs).sum(1)[cols] - 2.0 * dots)
    squared = squared.clamp_min(0.0)
    return safe_sqrt(squared) if isinstance(distance, EuclideanDistance) else squared


def reduce_masked(loss_of: Callable[[torch.Tensor], torch.Tensor], values: torch.Tensor, mask: torch.Tensor,
                  reduction: str, like: torch.Tensor) -> torch.Tensor:
    """``reduce(loss_of(values[mask]), reduction)`` for an element-wise ``loss_of``.

    A sparse mask (the positive pairs of a P x K batch) is gathered; a dense one (its negative pairs) is
    kept in place and zeroed where unselected, since gathering most of a (B, R) matrix and scattering the
    gradient back costs more than the loss itself.
    """
    selected = int(mask.sum())
    if reduction == "none" or selected * 4 < mask.numel():
        return reduce(loss_of(values[mask]), reduction, like=like)
    losses = loss_of(values)
    total = torch.where(mask, losses, torch.zeros_like(losses)).sum()
    if reduction == "sum":
        return total
    count = int((mask & (losses > 0)).sum()) if reduction == "mean_nonzero" else selected
    return total / count if count > 0 else zero_loss(like)


def masked_logsumexp(values: torch.Tensor, mask: torch.Tensor, dim: int = -1, *,
                     add_one: bool = False) -> torch.Tensor:
    r""":math:`\log \sum_{j: mask_j} e^{x_j}` along ``dim`` (:math:`\log(1 + \sum ...)` with ``add_one``).

    An empty selection gives ``-inf`` (``0`` with ``add_one``) with a zero gradient, never NaN, which is
    what lets a loss skip anchors without positives or negatives inside one vectorised expression. A sparse
    row-wise mask on a matrix (positive pairs) is reduced from its gathered entries only.
    """
    if values.dim() == 2 and dim in (1, -1) and int(mask.sum()) * 4 < mask.numel():
        rows, cols = mask.nonzero(as_tuple=True)
        picked = values[rows, cols]
        peak = torch.full((values.shape[0],), float("-inf"), dtype=values.dtype, device=values.device)
        peak = _stable_shift(peak.scatter_reduce(0, rows, picked.detach(), reduce="amax"), add_one)
        total = torch.zeros_like(peak).index_add(0, rows, torch.exp(picked - peak[rows]))
        return _log_total(total, peak, add_one)
    masked = values.masked_fill(~mask, float("-inf"))
    peak = _stable_shift(masked.amax(dim, keepdim=True), add_one)
    total = torch.exp(masked - peak).sum(dim, keepdim=True)
    return _log_total(total, peak, add_one).squeeze(dim)


def _stable_shift(peak: torch.Tensor, add_one: bool) -> torch.Tensor:
    # The shift only stabilises exp(); it is a constant for autograd (the result does not depend on it).
    if add_one:
        peak = peak.clamp_min(0.0)
    return torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak)).detach()


def _log_total(total: torch.Tensor, peak: torch.Tensor, add_one: bool) -> torch.Tensor:
    if add_one:
        total = total + torch.exp(-peak)
    empty = total <= 0
    result = torch.log(torch.where(empty, torch.ones_like(total), total)) + peak
    return torch.where(empty, torch.full_like(result, float("-inf")), result)


def hinge_sums(positive_values: torch.Tensor, positive_mask: torch.Tensor, negative_values: torch.Tensor,
               negative_mask: torch.Tensor, margin: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Per row r: :math:`\sum_{i \in P_r} \sum_{j \in N_r} [p_{ri} - n_{rj} + m]_+`, the number of positive
    terms, and the number of terms |P_r| |N_r|, for (R, I) and (R, J) value matrices with masks.

    Instead of the |P| x |N| terms, each row's negatives are sorted once; for a positive ``p`` the
    negatives below ``p + m`` are a prefix, so its terms sum to ``count * (p + m) - prefix_sum``. Time
    O(R J log J), memory O(R (I + J)), and the gradient is exact (sort and cumsum are differentiable).
    """
    if negative_values.shape[-1] == 0 or positive_values.shape[-1] == 0:
        none = positive_mask.sum(-1) * 0
        return positive_values.sum(-1) * 0.0 + negative_values.sum(-1) * 0.0, none, none
    inf = torch.tensor(float("inf"), dtype=negative_values.dtype, device=negative_values.device)
    ordered, _ = torch.where(negative_mask, negative_values, inf).sort(dim=-1)
    finite = torch.isfinite(ordered)
    prefix = torch.cumsum(torch.where(finite, ordered, torch.zeros_like(ordered)), dim=-1)
    prefix = torch.cat([torch.zeros_like(prefix[..., :1]), prefix], dim=-1)
    thresholds = positive_values + margin
    # Masked-out positives get threshold -inf so that no negative lies below them (count 0).
    search = torch.where(positive_mask, thresholds, -inf).detach().contiguous()
    counts = torch.searchsorted(ordered.detach().contiguous(), search)
    counts = torch.where(positive_mask, counts, torch.zeros_like(counts))
    terms = counts.to(thresholds.dtype) * torch.where(positive_mask, thresholds, torch.zeros_like(thresholds))
    totals = (terms - prefix.gather(-1, counts)).sum(-1)
    pair_counts = positive_mask.sum(-1) * negative_mask.sum(-1)
    return totals, counts.sum(-1), pair_counts
