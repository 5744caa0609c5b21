r"""Losses on pairs, triplets and quadruplets of embeddings: contrastive, triplet (FaceNet) and quadruplet.

Each one uses every valid tuple of the batch by default, or exactly what a miner returns (``mined=``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.distances import Distance
from deepmetric.losses.base import MetricLoss
from deepmetric.losses.tuples import (
    as_dissimilarity,
    distance_matrix,
    farther_than,
    hinge_sums,
    masks_and_distances,
    pair_masks,
    pair_values,
    reduce_masked,
    triplets_for,
)
from deepmetric.reducers import reduce, zero_loss
from deepmetric.registry import register
from deepmetric.types import Triplets
from deepmetric.validation import check_bool, check_choice, check_number


@register("loss", "contrastive", example={"pos_margin": 0.0, "neg_margin": 1.0})
class ContrastiveLoss(MetricLoss):
    r"""Contrastive loss: pull positive pairs within ``pos_margin``, push negative pairs beyond ``neg_margin``.

    Plain form (Chopra, Hadsell, LeCun, "Learning a similarity metric discriminatively, with application
    to face verification", CVPR 2005):

    .. math:: \ell_{ij} = [d_{ij} - m_+]_+ \ \text{if } y_i = y_j, \qquad [m_- - d_{ij}]_+ \ \text{otherwise}

    Squared form (Hadsell, Chopra, LeCun, "Dimensionality reduction by learning an invariant mapping",
    CVPR 2006), ``squared=True``: :math:`\tfrac12 [d_{ij} - m_+]_+^2` and :math:`\tfrac12 [m_- - d_{ij}]_+^2`.

    The survey's form on squared distances, :math:`d^2_{ij}` and :math:`[\alpha - d^2_{ij}]_+`, is
    ``distance="squared_euclidean"``. With a similarity (e.g. ``"cosine"``) the margins are thresholds on it:
    :math:`[m_+ - s_{ij}]_+` and :math:`[s_{ij} - m_-]_+`.

    The positive and the negative terms are reduced separately and added, so the many negative pairs of a
    batch do not drown the few positive ones (the convention of pytorch-metric-learning).

    Args:
        pos_margin: distance below which a positive pair costs nothing (0 = pull all the way).
        neg_margin: distance beyond which a negative pair costs nothing.
        squared: square the hinge terms (Hadsell 2006) instead of the plain hinge.
        distance: a ``Distance`` or its registry name (default ``"euclidean"``).
        reduction: ``mean`` | ``sum`` | ``mean_nonzero`` | ``none`` (``none`` returns the positive-pair
            losses followed by the negative-pair losses).

    Shapes: ``embeddings`` (B, D), ``labels`` (B,); ``mined`` Pairs or Triplets (a triplet gives the pairs
    (a, p) and (a, n)); ``ref_embeddings`` (R, D) with ``ref_labels`` (R,) replaces the batch as the other
    side of each pair.

    Example:
        >>> loss = ContrastiveLoss(neg_margin=1.0)
        >>> value = loss(torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    """

    def __init__(self, *, pos_margin: float = 0.0, neg_margin: float = 1.0, squared: bool = False,
                 distance: Distance | str | None = None, reduction: str = "mean") -> None:
        super().__init__(distance=distance, reduction=reduction)
        self.pos_margin = check_number("pos_margin", pos_margin)
        self.neg_margin = check_number("neg_margin", neg_margin)
        self.squared = check_bool("squared", squared)

    def _hinge(self, excess: torch.Tensor) -> torch.Tensor:
        return 0.5 * F.relu(excess).pow(2) if self.squared else F.relu(excess)

    def _positive_loss(self, values: torch.Tensor) -> torch.Tensor:
        return self._hinge(farther_than(self.distance, values, self.pos_margin))

    def _negative_loss(self, values: torch.Tensor) -> torch.Tensor:
        return self._hinge(farther_than(self.distance, values, self.neg_margin, scale=-1.0))

    def compute(self, embeddings, labels, *, mined, ref_embeddings, ref_labels):
        positive, negative, values = masks_and_distances(self.distance, embeddings, labels, mined, ref_embeddings,
                                                         ref_labels)
        pos_part = reduce_masked(self._positive_loss, values, positive, self.reduction, like=values)
        neg_part = reduce_masked(self._negative_loss, values, negative, self.reduction, like=values)
        return torch.cat([pos_part, neg_part]) if self.reduction == "none" else pos_part + neg_part


@register("loss", "triplet", example={"margin": 0.2})
class TripletLoss(MetricLoss):
    r"""Triplet loss (Schroff, Kalenichenko, Philbin, "FaceNet", CVPR 2015):

    .. math:: \ell_{apn} = [d_{ap} - d_{an} + m]_+

    over triplets with :math:`y_a = y_p \ne y_n`. FaceNet uses the squared Euclidean distance
    (``distance="squared_euclidean"``); the plain Euclidean distance (default) is the choice of Hermans,
    Beyer, Leibe, "In defense of the triplet loss for person re-identification", 2017. For a similarity,
    :math:`[s_{an} - s_{ap} + m]_+`. ``soft_margin=True`` replaces the hinge by
    :math:`\log(1 + e^{d_{ap} - d_{an} + m})` (Hermans 2017; set ``margin=0`` for their exact form).

    Triplets: those of ``mined`` (Triplets from any miner; Pairs are combined per anchor into triplets),
    or all valid triplets of the batch. The all-triplets hinge is summed without enumerating the triplets
    (see ``hinge_sums``), so it costs O(B^2 log B) time and O(B^2) memory.

    Args:
        margin: the margin m (distance units).
        soft_margin: use the soft-plus instead of the hinge.
        distance: a ``Distance`` or registry name (default ``"euclidean"``).
        reduction: default ``mean_nonzero`` (average over triplets that violate the margin, the "batch all"
            convention of Hermans 2017); ``mean``, ``sum`` or ``none`` (one loss per triplet).

    Example:
        >>> loss = TripletLoss(margin=0.2)
        >>> value = loss(torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    """

    def __init__(self, *, margin: float = 0.2, soft_margin: bool = False, distance: Distance | str | None = None,
                 reduction: str = "mean_nonzero") -> None:
        super().__init__(distance=distance, reduction=reduction)
        self.margin = check_number("margin", margin)
        self.soft_margin = check_bool("soft_margin", soft_margin)

    def compute(self, embeddings, labels, *, mined, ref_embeddings, ref_labels):
        refs = embeddings if ref_embeddings is None else ref_embeddings
        if not isinstance(mined, Triplets) and not self.soft_margin and self.reduction != "none":
            values = as_dissimilarity(self.distance, distance_matrix(self.distance, embeddings, ref_embeddings))
            positive, negative = pair_masks(labels, ref_labels, mined, refs.shape[0])
            totals, violating, counts = hinge_sums(values, positive, values, negative, self.margin)
            return _reduce_hinge_sums(totals.sum(), violating.sum(), counts.sum(), self.reduction, values)
        triplets = triplets_for(labels, ref_labels, mined, refs.shape[0])
        values = pair_values(self.distance, embeddings, ref_embeddings, torch.cat([triplets.anchor, triplets.anchor]),
                             torch.cat([triplets.positive, triplets.negative]))
        anchor_positive, anchor_negative = values[:len(triplets)], values[len(triplets):]
        violation = anchor_positive - anchor_negative + self.margin
        losses = F.softplus(violation) if self.soft_margin else F.relu(violation)
        return reduce(losses, self.reduction, like=embeddings)


def _reduce_hinge_sums(total: torch.Tensor, violating: torch.Tensor, count: torch.Tensor, reduction: str,
                       like: torch.Tensor) -> torch.Tensor:
    """Reduce a hinge sum known only through its total, number of positive terms and number of terms."""
    if reduction == "sum":
        return total
    divisor = int(violating) if reduction == "mean_nonzero" else int(count)
    return total / divisor if divisor > 0 else zero_loss(like)


@register("loss", "quadruplet", example={"form": "chen", "margin": 0.3, "second_margin": 0.15})
class QuadrupletLoss(MetricLoss):
    r"""Quadruplet loss, in the two forms the survey (Weng / "Metric learning" seed) describes.

    ``form="chen"`` (Chen, Chen, Zhang, Huang, "Beyond triplet loss: a deep quadruplet network for person
    re-identification", CVPR 2017): a triplet term plus a term comparing a positive pair with a negative
    pair (k, l) that shares no class with it:

    .. math:: \sum_{i,j,k} [d_{ij} - d_{ik} + \alpha_1]_+ + \sum_{i,j,k,l} [d_{ij} - d_{kl} + \alpha_2]_+,
        \quad y_i = y_j,\ y_k \ne y_i,\ y_l \ne y_i,\ y_k \ne y_l

    The second term is summed over every (positive pair, negative pair) combination without enumerating
    them (sorted negatives, one pass per class), so it stays cheap for large batches.

    ``form="ni"`` (Ni, Liu, Wang et al., "Fine-grained patient similarity measuring using deep metric
    learning", CIKM 2017): with :math:`y_a = y_p = y_s \ne y_n`,

    .. math:: [d_{ap} - d_{as} + \alpha_1]_+ + [d_{as} - d_{an} + \alpha_2]_+

    i.e. a ranking among same-label samples (p nearer than s, meant for graded similarity) plus a triplet
    term on (a, s, n). Both sums run over all valid (a, p, s) and (a, s, n) combinations.

    Each term is reduced separately (``mean``, ``sum`` or ``mean_nonzero``) and the two are added. The
    triplet terms use ``mined`` when given (Triplets, or Pairs combined per anchor); the pair-vs-pair term
    of the Chen form uses the mined positive and negative pairs.

    Args:
        form: ``"chen"`` or ``"ni"``.
        margin: :math:`\alpha_1`; second_margin: :math:`\alpha_2` (Chen 2017 uses a smaller second margin).
        distance: default ``"squared_euclidean"`` as in both papers.
        reduction: ``mean`` (default), ``sum`` or ``mean_nonzero``.

    Example:
        >>> loss = QuadrupletLoss(form="chen", margin=0.3, second_margin=0.15)
        >>> value = loss(torch.randn(9, 4), torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]))
    """

    default_distance = "squared_euclidean"
    forms = ("chen", "ni")

    def __init__(self, *, form: str = "chen", margin: float = 0.3, second_margin: float = 0.15,
                 distance: Distance | str | None = None, reduction: str = "mean") -> None:
        super().__init__(distance=distance, reduction=reduction)
        check_choice("form", form, self.forms)
        if reduction == "none":
            raise ValueError("reduction='none' is not available for quadruplet (its two terms have different "
                             "tuples); use 'mean', 'sum' or 'mean_nonzero'")
        self.form = form
        self.margin = check_number("margin", margin)
        self.second_margin = check_number("second_margin", second_margin)

    def compute(self, embeddings, labels, *, mined, ref_embeddings, ref_labels):
        refs = embeddings if ref_embeddings is None else ref_embeddings
        ref_labels_or_self = labels if ref_labels is None else ref_labels
        values = as_dissimilarity(self.distance, distance_matrix(self.distance, embeddings, ref_embeddings))
        positive, negative = pair_masks(labels, ref_labels, mined, refs.shape[0])
        margin = self.margin if self.form == "chen" else self.second_margin
        if isinstance(mined, Triplets):
            triplet_term = self._triplet_term(values, mined, margin)
        else:
            sums = hinge_sums(values, positive, values, negative, margin)
            triplet_term = _reduce_hinge_sums(*(t.sum() for t in sums), self.reduction, values)
        if self.form == "chen":
            second = self._chen_pair_term(values, positive, negative, labels, ref_labels_or_self)
        else:
            # (a, p, s): two different positives of the same anchor; d_ap - d_as + alpha_1 over all of them.
            totals, violating, counts = hinge_sums(values, positive, values, positive, self.margin)
            # A positive paired with itself (p = s) contributes exactly [alpha_1]_+; remove those terms.
            self_terms = positive.sum() * max(self.margin, 0.0)
            self_violating = positive.sum() if self.margin > 0 else 0
            second = _reduce_hinge_sums(totals.sum() - self_terms, violating.sum() - self_violating,
                                        counts.sum() - positive.sum(), self.reduction, values)
        return triplet_term + second

    def _triplet_term(self, values: torch.Tensor, triplets: Triplets, margin: float) -> torch.Tensor:
        losses = F.relu(values[triplets.anchor, triplets.positive] - values[triplets.anchor, triplets.negative]
                        + margin)
        return reduce(losses, self.reduction, like=values)

    def _chen_pair_term(self, values: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                        labels: torch.Tensor, ref_labels: torch.Tensor) -> torch.Tensor:
        neg_rows, neg_cols = negative.nonzero(as_tuple=True)
        neg_values = values[neg_rows, neg_cols]
        neg_row_labels, neg_col_labels = labels[neg_rows], ref_labels[neg_cols]
        pos_rows, pos_cols = positive.nonzero(as_tuple=True)
        pos_values, pos_labels = values[pos_rows, pos_cols], labels[pos_rows]

        def combined(pos: torch.Tensor, neg: torch.Tensor) -> tuple[torch.Tensor, int, int]:
            every = hinge_sums(pos[None], torch.ones_like(pos, dtype=torch.bool)[None], neg[None],
                               torch.ones_like(neg, dtype=torch.bool)[None], self.second_margin)
            return every[0].sum(), int(every[1].sum()), int(every[2].sum())

        # Every (positive, negative) combination once (one sort of all negative pairs), minus, class by
        # class, the combinations whose negative pair involves the positive's class: those are few
        # (about 2 K B per class), so no per-class pass over all negative pairs is needed.
        total, violating, count = combined(pos_values, neg_values)
        for label in torch.unique(pos_labels):
            involved = (neg_row_labels == label) | (neg_col_labels == label)
            if bool(involved.any()):
                excluded = combined(pos_values[pos_labels == label], neg_values[involved])
                total, violating, count = total - excluded[0], violating - excluded[1], count - excluded[2]
        return _reduce_hinge_sums(total, torch.tensor(violating), torch.tensor(count), self.reduction, values)

