r"""Losses over the whole batch at once: lifted structure, N-pair, NT-Xent / SupCon, multi-similarity and
proxy anchor.

All of them work on the (B, R) similarity or distance matrix with masked log-sum-exp, so memory is
O(B R): no per-pair (P, B) or (B, B, B) tensor is ever built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepmetric.distances import Distance
from deepmetric.losses.base import BaseLoss, MetricLoss
from deepmetric.losses.tuples import (
    as_dissimilarity,
    farther_than,
    masked_logsumexp,
    masks_and_distances,
    pair_masks,
)
from deepmetric.reducers import reduce
from deepmetric.registry import register
from deepmetric.validation import (
    check_bool,
    check_choice,
    check_non_negative_float,
    check_number,
    check_positive_float,
    check_positive_int,
)


@register("loss", "lifted_structure", example={"form": "song", "neg_margin": 1.0})
class LiftedStructureLoss(MetricLoss):
    r"""Lifted structured loss.

    ``form="song"`` (Song, Xiang, Jegelka, Savarese, "Deep metric learning via lifted structured feature
    embedding", CVPR 2016), for every positive pair (i, j):

    .. math:: J_{ij} = \log\Big(\sum_{(i,k) \in N} e^{m - d_{ik}} + \sum_{(l,j) \in N} e^{m - d_{lj}}\Big)
        + d_{ij}, \qquad L = \frac{1}{2|P|} \sum_{(i,j) \in P} [J_{ij}]_+^2

    ``form="generalized"`` (Hermans, Beyer, Leibe, "In defense of the triplet loss for person
    re-identification", 2017), per anchor a:

    .. math:: L_a = \Big[\log \sum_{p \in P(a)} e^{d_{ap} - m_+} + \log \sum_{n \in N(a)} e^{m - d_{an}}\Big]_+

    averaged over the anchors that have positives and negatives. :math:`m` is ``neg_margin`` and
    :math:`m_+` is ``pos_margin`` (the Song form subtracts it from :math:`d_{ij}`). With a similarity the
    exponents become :math:`s - m` and :math:`m_+ - s`.

    Both forms need only the (B, R) matrix: the negative log-sum-exp of every row (and, for Song, every
    column: the negatives of the reference item j) is computed once and combined per positive pair.

    Args:
        form: ``"song"`` or ``"generalized"``.
        neg_margin, pos_margin: margins in distance units.
        distance: default ``"euclidean"``.
        reduction: ``mean`` (default), ``sum``, ``mean_nonzero`` or ``none`` (per positive pair for Song,
            per anchor for the generalized form).

    Example:
        >>> loss = LiftedStructureLoss(form="song", neg_margin=1.0)
        >>> value = loss(torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    """

    forms = ("song", "generalized")

    def __init__(self, *, form: str = "song", neg_margin: float = 1.0, pos_margin: float = 0.0,
                 distance: Distance | str | None = None, reduction: str = "mean") -> None:
        super().__init__(distance=distance, reduction=reduction)
        self.form = check_choice("form", form, self.forms)
        self.neg_margin = check_number("neg_margin", neg_margin)
        self.pos_margin = check_number("pos_margin", pos_margin)

    def compute(self, embeddings, labels, *, mined, ref_embeddings, ref_labels):
        positive, negative, values = masks_and_distances(self.distance, embeddings, labels, mined, ref_embeddings,
                                                         ref_labels)
        pos_exponent = farther_than(self.distance, values, self.pos_margin)
        neg_exponent = farther_than(self.distance, values, self.neg_margin, scale=-1.0)
        if self.form == "generalized":
            has_both = positive.any(1) & negative.any(1)
            losses = F.relu(masked_logsumexp(pos_exponent, positive) + masked_logsumexp(neg_exponent, negative))
            return reduce(losses[has_both], self.reduction, like=values)
        row_negatives = masked_logsumexp(neg_exponent, negative, dim=1)
        col_negatives = masked_logsumexp(neg_exponent, negative, dim=0)
        rows, cols = positive.nonzero(as_tuple=True)
        both = torch.stack([row_negatives[rows], col_negatives[cols]], dim=-1)
        joint = masked_logsumexp(both, torch.isfinite(both), dim=-1) + pos_exponent[rows, cols]
        losses = 0.5 * F.relu(joint).pow(2)
        return reduce(losses, self.reduction, like=values)


@register("loss", "npair", example={"l2_reg": 0.002})
class NPairLoss(MetricLoss):
    r"""Multi-class N-pair loss (Sohn, "Improved deep metric learning with multi-class N-pair loss
    objective", NIPS 2016).

    From N pairs :math:`(f_i, f_i^+)` of N different classes:

    .. math:: L = \frac1N \sum_i \log\Big(1 + \sum_{j \ne i} e^{f_i^\top f_j^+ - f_i^\top f_i^+}\Big)
        + \frac{\lambda}{N} \sum_i \big(\|f_i\|^2 + \|f_i^+\|^2\big)

    i.e. a cross-entropy over the (N, N) anchor-positive similarity matrix, plus the paper's L2 regulariser
    of the embedding norms (the loss is not scale-invariant with the raw dot product).

    One pair per class: the first positive pair of each label (row-major order of the positive pairs, from
    the labels or from ``mined``); with ``ref_embeddings`` the positives come from the reference set. With
    pairs from fewer than two classes there is nothing to contrast and the loss is zero.

    Args:
        l2_reg: :math:`\lambda` (0 disables the regulariser).
        distance: default ``"dot"`` (no normalisation, as in the paper); a distance d gives logits -d.
        reduction: over the N anchors (``mean`` default).

    Example:
        >>> loss = NPairLoss(l2_reg=0.002)
        >>> value = loss(torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    """

    default_distance = "dot"

    def __init__(self, *, l2_reg: float = 0.002, distance: Distance | str | None = None,
                 reduction: str = "mean") -> None:
        super().__init__(distance=distance, reduction=reduction)
        self.l2_reg = check_non_negative_float("l2_reg", l2_reg)

    def compute(self, embeddings, labels, *, mined, ref_embeddings, ref_labels):
        refs = embeddings if ref_embeddings is None else ref_embeddings
        positive, _ = pair_masks(labels, ref_labels, mined, refs.shape[0])
        rows, cols = positive.nonzero(as_tuple=True)
        if torch.unique(labels[rows]).numel() < 2:
            # Fewer than two classes with a pair: nothing to contrast (and no reason to shrink the norms).
            return reduce(rows[:0].to(embeddings.dtype), self.reduction, like=embeddings)
        # First positive pair per anchor label: the smallest position in row-major order.
        unique_labels, group = torch.unique(labels[rows], return_inverse=True)
        positions = torch.arange(rows.numel(), device=rows.device)
        first = torch.full((unique_labels.numel(),), rows.numel(), dtype=torch.long, device=rows.device)
        first = first.scatter_reduce(0, group, positions, reduce="amin")
        anchors, positives = embeddings[rows[first]], refs[cols[first]]
        logits = self.distance(anchors, positives)
        logits = logits if self.distance.is_similarity else -logits
        targets = torch.arange(logits.shape[0], device=logits.device)
        losses = F.cross_entropy(logits, targets, reduction="none")
        loss = reduce(losses, self.reduction, like=embeddings)
        if self.l2_reg > 0:
            norms = anchors.pow(2).sum(1) + positives.pow(2).sum(1)
            loss = loss + self.l2_reg * norms.mean()
        return loss


@register("loss", "ntxent", example={"temperature": 0.1})
class NTXentLoss(MetricLoss):
    r"""NT-Xent / InfoNCE (Chen, Kornblith, Norouzi, Hinton, "SimCLR", ICML 2020; van den Oord et al.,
    "CPC", 2018), and with ``supervised=True`` the supervised contrastive loss SupCon (Khosla et al.,
    "Supervised contrastive learning", NeurIPS 2020). With :math:`z_{ij} = s_{ij} / \tau`:

    .. math:: \text{NT-Xent:}\quad \ell_{ij} = -\log \frac{e^{z_{ij}}}{e^{z_{ij}} + \sum_{k \in N(i)} e^{z_{ik}}}
        \quad \text{for every positive pair } (i, j)

    .. math:: \text{SupCon:}\quad \ell_i = -\frac{1}{|P(i)|} \sum_{p \in P(i)}
        \log \frac{e^{z_{ip}}}{\sum_{a \ne i} e^{z_{ia}}}

    With two views per item (SimCLR) each anchor has one positive and the two coincide. NT-Xent is written
    as :math:`\text{softplus}(\log\sum_{k \in N(i)} e^{z_{ik}} - z_{ij})`: one masked log-sum-exp per row of
    the (B, R) matrix. SupCon averages over anchors that have a positive and a negative (an anchor without
    negatives has nothing to contrast with, so a batch of one class gives zero).

    Args:
        temperature: :math:`\tau` > 0.
        supervised: SupCon instead of NT-Xent.
        distance: default ``"cosine"``; a distance d gives :math:`z = -d / \tau`.
        reduction: over positive pairs (NT-Xent) or anchors (SupCon); ``mean`` default.

    Example:
        >>> loss = NTXentLoss(temperature=0.1)
        >>> value = loss(torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    """

    default_distance = "cosine"

    def __init__(self, *, temperature: float = 0.1, supervised: bool = False, distance: Distance | str | None = None,
                 reduction: str = "mean") -> None:
        self.temperature = check_positive_float("temperature", temperature)
        self.supervised = check_bool("supervised", supervised)
        super().__init__(distance=distance, reduction=reduction)

    def compute(self, embeddings, labels, *, mined, ref_embeddings, ref_labels):
        positive, negative, values = masks_and_distances(self.distance, embeddings, labels, mined, ref_embeddings,
                                                         ref_labels)
        logits = -as_dissimilarity(self.distance, values) / self.temperature
        if self.supervised:
            denominator = masked_logsumexp(logits, positive | negative)
            pos_count = positive.sum(1)
            valid = (pos_count > 0) & negative.any(1)
            pos_sum = torch.where(positive, logits, torch.zeros_like(logits)).sum(1)
            losses = denominator - pos_sum / pos_count.clamp_min(1)
            return reduce(losses[valid], self.reduction, like=logits)
        negatives = masked_logsumexp(logits, negative)
        rows, cols = positive.nonzero(as_tuple=True)
        losses = F.softplus(negatives[rows] - logits[rows, cols])
        return reduce(losses, self.reduction, like=logits)


@register("loss", "multi_similarity", example={"alpha": 2.0, "beta": 50.0, "base": 0.5, "mining_epsilon": 0.1})
class MultiSimilarityLoss(MetricLoss):
    r"""Multi-similarity loss (Wang, Han, Huang, Dong, Scott, "Multi-similarity loss with general pair
    weighting for deep metric learning", CVPR 2019):

    .. math:: L = \frac1B \sum_i \Big[\frac1\alpha \log\Big(1 + \sum_{k \in P_i} e^{-\alpha (s_{ik} - \lambda)}\Big)
        + \frac1\beta \log\Big(1 + \sum_{k \in N_i} e^{\beta (s_{ik} - \lambda)}\Big)\Big]

    with :math:`\lambda` = ``base``. The paper's pair mining (``mining_epsilon`` = :math:`\epsilon`) keeps a
    negative only if :math:`s_{ik} + \epsilon > \min_{j \in P_i} s_{ij}` and a positive only if
    :math:`s_{ij} - \epsilon < \max_{k \in N_i} s_{ik}`; ``mining_epsilon=None`` uses every pair (or the
    ``mined`` pairs). Mining runs on detached similarities; it only selects pairs.

    Args:
        alpha, beta: weights of positive and negative pairs (paper: 2 and 50).
        base: :math:`\lambda` (paper: 0.5 for cosine similarity).
        mining_epsilon: :math:`\epsilon` (paper: 0.1) or None.
        distance: default ``"cosine"``; with a distance the exponents become
            :math:`\alpha (d - \lambda)` and :math:`-\beta (d - \lambda)`.
        reduction: over anchors (``mean`` default).

    Example:
        >>> loss = MultiSimilarityLoss()
        >>> value = loss(torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    """

    default_distance = "cosine"

    def __init__(self, *, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5,
                 mining_epsilon: float | None = 0.1, distance: Distance | str | None = None,
                 reduction: str = "mean") -> None:
        super().__init__(distance=distance, reduction=reduction)
        self.alpha = check_positive_float("alpha", alpha)
        self.beta = check_positive_float("beta", beta)
        self.base = check_number("base", base)
        self.mining_epsilon = None if mining_epsilon is None else check_number("mining_epsilon", mining_epsilon)

    def compute(self, embeddings, labels, *, mined, ref_embeddings, ref_labels):
        positive, negative, values = masks_and_distances(self.distance, embeddings, labels, mined, ref_embeddings,
                                                         ref_labels)
        if self.mining_epsilon is not None:
            positive, negative = self._mine(as_dissimilarity(self.distance, values.detach()), positive, negative)
        pos_exponent = farther_than(self.distance, values, self.base, scale=self.alpha)
        neg_exponent = farther_than(self.distance, values, self.base, scale=-self.beta)
        losses = (masked_logsumexp(pos_exponent, positive, add_one=True) / self.alpha
                  + masked_logsumexp(neg_exponent, negative, add_one=True) / self.beta)
        return reduce(losses, self.reduction, like=values)

    def _mine(self, dissimilarity: torch.Tensor, positive: torch.Tensor,
              negative: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inf = torch.tensor(float("inf"), dtype=dissimilarity.dtype, device=dissimilarity.device)
        farthest_positive = torch.where(positive, dissimilarity, -inf).amax(1, keepdim=True)
        nearest_negative = torch.where(negative, dissimilarity, inf).amin(1, keepdim=True)
        keep_negative = negative & (dissimilarity - self.mining_epsilon < farthest_positive)
        keep_positive = positive & (dissimilarity + self.mining_epsilon > nearest_negative)
        return keep_positive, keep_negative


@register("loss", "proxy_anchor", example={"margin": 0.1, "alpha": 32.0})
class ProxyAnchorLoss(BaseLoss):
    r"""Proxy anchor loss (Kim, Kim, Cho, Kwak, "Proxy anchor loss for deep metric learning", CVPR 2020).

    One learnable proxy :math:`p` per class; with :math:`s(x, p)` the cosine similarity, :math:`P^+` the
    proxies of classes present in the batch and :math:`X_p^+`, :math:`X_p^-` the batch items of / not of
    the proxy's class:

    .. math:: L = \frac{1}{|P^+|} \sum_{p \in P^+} \log\Big(1 + \sum_{x \in X_p^+} e^{-\alpha (s(x,p) - \delta)}\Big)
        + \frac{1}{|P|} \sum_{p \in P} \log\Big(1 + \sum_{x \in X_p^-} e^{\alpha (s(x,p) + \delta)}\Big)

    Args:
        embedding_dim: D; num_classes: C (labels must lie in [0, C)).
        margin: :math:`\delta` (paper 0.1); alpha: :math:`\alpha` (paper 32).

    The proxies are the class centres (``has_class_centres``; the trainer gives them their own learning
    rate, the paper uses 100x). ``logits(embeddings)`` returns the (B, C) cosine similarities. Mined tuples
    and ``ref_*`` are not used.

    Example:
        >>> loss = ProxyAnchorLoss(embedding_dim=4, num_classes=3)
        >>> value = loss(torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2]))
    """

    has_class_centres = True
    needs_labels = True

    def __init__(self, *, embedding_dim: int, num_classes: int, margin: float = 0.1, alpha: float = 32.0) -> None:
        super().__init__()
        for name, value in (("embedding_dim", embedding_dim), ("num_classes", num_classes)):
            check_positive_int(name, value)
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes
        self.margin = check_number("margin", margin)
        self.alpha = check_positive_float("alpha", alpha)
        self.proxies = nn.Parameter(torch.empty(num_classes, embedding_dim))
        # The paper's initialisation (Kaiming normal, fan-out); only directions matter for the cosine.
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, C) cosine similarities between embeddings and the class proxies."""
        proxies = self.proxies.to(embeddings.dtype)
        return F.normalize(embeddings, dim=1) @ F.normalize(proxies, dim=1).T

    def compute(self, embeddings, labels, *, mined, ref_embeddings, ref_labels):
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}) for num_classes={self.num_classes}, "
                             f"got values in [{int(labels.min())}, {int(labels.max())}]")
        cosine = self.logits(embeddings)
        positive = F.one_hot(labels, self.num_classes).bool()
        pos_terms = masked_logsumexp(-self.alpha * (cosine - self.margin), positive, dim=0, add_one=True)
        neg_terms = masked_logsumexp(self.alpha * (cosine + self.margin), ~positive, dim=0, add_one=True)
        present = positive.any(0)
        return pos_terms.sum() / present.sum().clamp_min(1) + neg_terms.sum() / self.num_classes

