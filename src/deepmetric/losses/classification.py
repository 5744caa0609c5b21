r"""Classification-style losses: softmax, normalised softmax, center loss and the angular-margin family
(SphereFace, CosFace, ArcFace, combined, AdaCos, sub-center and dynamic-margin ArcFace).

Each loss owns its class centres (a ``ClassCentreHead``: full or sampled, chunked so 1M classes fit),
applies a pure margin from ``deepmetric.losses.margins`` to the target cosine only, and exposes
``logits(embeddings)`` (margin-free, for inference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from deepmetric.losses.base import BaseLoss
from deepmetric.losses.heads import (
    HEADS,
    ClassCentreHead,
    HeadOutput,
    adacos_dynamic_scale,
    adacos_fixed_scale,
    identity_margin,
)
from deepmetric.losses.margins import annealed_sphere_psi, arc_margin, combined_margin, cosine_margin
from deepmetric.losses.partial_fc import ShardedClassCentreHead
from deepmetric.reducers import zero_loss
from deepmetric.registry import register
from deepmetric.types import Pairs, Triplets
from deepmetric.validation import (
    check_bool,
    check_choice,
    check_in_range,
    check_int,
    check_non_negative_float,
    check_positive_float,
)

_CENTRE_UPDATES = ("gradient", "alpha")


def mined_weights(mined: Pairs | Triplets | None, batch_size: int, like: torch.Tensor) -> torch.Tensor | None:
    """Per-sample weights from a miner's output: how often each sample occurs in the mined tuples,
    divided by the largest count (pytorch-metric-learning's convention); None when nothing was mined."""
    if mined is None:
        return None
    if isinstance(mined, Pairs):
        parts = (mined.anchor_positive, mined.positive, mined.anchor_negative, mined.negative)
    else:
        parts = (mined.anchor, mined.positive, mined.negative)
    indices = torch.cat([p.to(like.device) for p in parts])
    counts = torch.bincount(indices, minlength=batch_size)[:batch_size].to(like.dtype)
    return counts / counts.max() if indices.numel() else counts


class ClassCentreLoss(BaseLoss):
    """Base of the losses with class centres: builds the head, validates labels, applies the mined
    weights and averages the per-sample cross-entropies over the batch.

    Subclasses choose the head's kind and override ``prepare`` (features and scale) and ``margin``.

    Args:
        embedding_dim: ``D``; num_classes: ``C``.
        head: ``"full"``, ``"sampled"`` (PartialFC: all batch classes + a random ``sample_rate``
            fraction of the others in the denominator while training) or ``"sharded"`` (PartialFC with
            the classes split across the ``torch.distributed`` processes, ``ShardedClassCentreHead``;
            the loss is then the mean over the global batch).
        sample_rate: fraction of classes for the sampled head.
        chunk_size: classes per chunk of the streamed cross-entropy (None: automatic).
    """

    has_class_centres = True
    needs_labels = True

    def __init__(self, *, embedding_dim: int, num_classes: int, num_subcenters: int = 1,
                 normalize_weight: bool = True, bias: bool = False, head: str = "full", sample_rate: float = 0.1,
                 chunk_size: int | None = None) -> None:
        super().__init__()
        common = dict(embedding_dim=embedding_dim, num_classes=num_classes, num_subcenters=num_subcenters,
                      normalize_weight=normalize_weight, bias=bias, sample_rate=sample_rate, chunk_size=chunk_size)
        self.head = (ShardedClassCentreHead(**common) if check_choice("head", head, (*HEADS, "sharded")) == "sharded"
                     else ClassCentreHead(head=head, **common))
        self.embedding_dim = embedding_dim
        self.num_classes = num_classes

    @property
    def weight(self) -> torch.nn.Parameter:
        """The class-centre matrix, (C * K, D)."""
        return self.head.weight

    def prepare(self, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
        """Features given to the head and the scale ``s`` (float or per-sample tensor)."""
        return F.normalize(embeddings, dim=1), 1.0

    def margin(self, cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The target-cosine transform (identity: no margin)."""
        return identity_margin(cosine, labels)

    def head_output(self, embeddings: torch.Tensor, labels: torch.Tensor) -> HeadOutput:
        inputs, scale = self.prepare(embeddings)
        return self.head(inputs, labels, row_scale=scale, margin=self.margin)

    def extra_losses(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """Per-sample terms added to the cross-entropy (None: nothing)."""
        return None

    def compute(self, embeddings, labels, *, mined, ref_embeddings, ref_labels) -> torch.Tensor:
        weights = mined_weights(mined, embeddings.shape[0], embeddings)
        sharded = isinstance(self.head, ShardedClassCentreHead)  # every process must join its collectives
        if not sharded and (embeddings.shape[0] == 0 or (weights is not None and not bool(weights.any()))):
            return zero_loss(embeddings)
        losses = self.head_output(embeddings, labels).losses
        extra = self.extra_losses(embeddings, labels)
        if sharded:  # per-sample terms of the global batch, in the head's rank order
            extra = None if extra is None else self.head.gather(extra)
            weights = None if weights is None else self.head.gather(weights)
        if extra is not None:
            losses = losses + extra
        if weights is not None:
            losses = losses * weights
        return losses.mean()

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Margin-free logits (B, C) for inference (scale times cosine for the cosine heads)."""
        inputs, scale = self.prepare(embeddings)
        return self.head.logits(inputs, row_scale=scale)


@register("loss", "softmax", example={})
class SoftmaxLoss(ClassCentreLoss):
    r"""Softmax cross-entropy on a linear layer with bias, the baseline of the seeds.

    .. math:: L = -\frac{1}{B}\sum_i \log \frac{e^{W_{y_i}^\top x_i + b_{y_i}}}{\sum_j e^{W_j^\top x_i + b_j}}

    Args:
        embedding_dim: ``D``; num_classes: ``C``; head / sample_rate / chunk_size: see ``ClassCentreLoss``.

    Shapes: embeddings (B, D) float, labels (B,) int in ``[0, C)``.

    Example:
        >>> loss = SoftmaxLoss(embedding_dim=8, num_classes=5)
        >>> value = loss(torch.randn(4, 8), torch.tensor([0, 1, 1, 4]))
    """

    def __init__(self, *, embedding_dim: int, num_classes: int, head: str = "full", sample_rate: float = 0.1,
                 chunk_size: int | None = None) -> None:
        super().__init__(embedding_dim=embedding_dim, num_classes=num_classes, normalize_weight=False, bias=True,
                         head=head, sample_rate=sample_rate, chunk_size=chunk_size)

    def prepare(self, embeddings):
        return embeddings, 1.0


@register("loss", "normalized_softmax", example={"scale": 16.0})
class NormalizedSoftmaxLoss(ClassCentreLoss):
    r"""NormFace / L2-constrained softmax (Wang et al. 2017; Ranjan et al. 2017): cross-entropy on
    cosine logits of normalised features and normalised class weights, times a fixed scale.

    .. math:: L = -\frac{1}{B}\sum_i \log \frac{e^{s \cos\theta_{i,y_i}}}{\sum_j e^{s \cos\theta_{i,j}}}

    Args:
        scale: ``s > 0`` (default 20, i.e. pytorch-metric-learning's temperature 0.05; Ranjan et al.
            give ``s >= log(p (C - 2) / (1 - p))`` for a target probability ``p``).
        embedding_dim, num_classes, head, sample_rate, chunk_size: see ``ClassCentreLoss``.

    Example:
        >>> loss = NormalizedSoftmaxLoss(embedding_dim=8, num_classes=5, scale=16.0)
        >>> value = loss(torch.randn(4, 8), torch.tensor([0, 1, 1, 4]))
    """

    def __init__(self, *, embedding_dim: int, num_classes: int, scale: float = 20.0, head: str = "full",
                 sample_rate: float = 0.1, chunk_size: int | None = None) -> None:
        super().__init__(embedding_dim=embedding_dim, num_classes=num_classes, head=head, sample_rate=sample_rate,
                         chunk_size=chunk_size)
        self.scale = check_positive_float("scale", scale)

    def prepare(self, embeddings):
        return F.normalize(embeddings, dim=1), self.scale


@register("loss", "center", example={"center_weight": 0.01, "center_update": "gradient"})
class CenterLoss(SoftmaxLoss):
    r"""Center loss (Wen et al., ECCV 2016): softmax cross-entropy plus a pull of each feature towards
    its class centre.

    .. math:: L = L_{softmax} + \lambda \frac{1}{B} \sum_i \tfrac12 \lVert x_i - c_{y_i} \rVert^2

    Centres are learnt either by their gradient (``center_update="gradient"``; they are parameters, the
    trainer gives them the class-centre learning rate) or by the paper's rule (``"alpha"``; a buffer
    updated after each training step, eq. 4):
    ``c_j <- c_j - alpha * sum_{i: y_i=j} (c_j - x_i) / (1 + |{i: y_i = j}|)``.

    Args:
        center_weight: ``lambda >= 0`` (paper: 0.003).
        center_update: ``"gradient"`` or ``"alpha"``.
        alpha: centre learning rate of the paper's rule, in (0, 1] (paper: 0.5).
        embedding_dim, num_classes, head, sample_rate, chunk_size: see ``SoftmaxLoss``.

    Example:
        >>> loss = CenterLoss(embedding_dim=8, num_classes=5, center_update="alpha")
        >>> value = loss(torch.randn(4, 8), torch.tensor([0, 1, 1, 4]))
    """

    def __init__(self, *, embedding_dim: int, num_classes: int, center_weight: float = 0.003,
                 center_update: str = "gradient", alpha: float = 0.5, head: str = "full", sample_rate: float = 0.1,
                 chunk_size: int | None = None) -> None:
        super().__init__(embedding_dim=embedding_dim, num_classes=num_classes, head=head, sample_rate=sample_rate,
                         chunk_size=chunk_size)
        self.center_weight = check_non_negative_float("center_weight", center_weight)
        self.center_update = check_choice("center_update", center_update, _CENTRE_UPDATES)
        self.alpha = check_in_range("alpha", alpha, 0, 1, low_inclusive=False)
        centers = torch.zeros(num_classes, embedding_dim)
        if center_update == "gradient":
            self.centers = torch.nn.Parameter(centers)
        else:
            self.register_buffer("centers", centers)

    def extra_losses(self, embeddings, labels):
        labels = labels.to(embeddings.device).long()
        diff = embeddings - self.centers[labels].to(embeddings.dtype)
        if self.center_update == "alpha" and self.training:
            self._alpha_update(embeddings.detach(), labels)
        return self.center_weight * 0.5 * (diff * diff).sum(dim=1)

    @torch.no_grad()
    def _alpha_update(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        centers = self.centers
        counts = torch.bincount(labels, minlength=self.num_classes).to(centers.dtype)
        sums = torch.zeros_like(centers).index_add_(0, labels, embeddings.to(centers.dtype))
        seen = counts > 0
        # sum_i (c_j - x_i) = n_j c_j - sum_i x_i
        delta = (counts[seen, None] * centers[seen] - sums[seen]) / (1.0 + counts[seen, None])
        centers[seen] -= self.alpha * delta


@register("loss", "sphereface", example={"margin": 4})
class SphereFaceLoss(ClassCentreLoss):
    r"""A-Softmax / SphereFace (Liu et al., CVPR 2017) with the paper's annealing.

    Weights are normalised, the feature norm is kept:

    .. math::
        L_i = -\log \frac{e^{\lVert x_i\rVert f(\theta_{i,y_i})}}
              {e^{\lVert x_i\rVert f(\theta_{i,y_i})} + \sum_{j\ne y_i} e^{\lVert x_i\rVert \cos\theta_{i,j}}},
        \qquad f = \frac{\lambda \cos\theta + \psi(\theta)}{1 + \lambda}

    with ``psi(theta) = (-1)^k cos(m theta) - 2k`` on ``[k pi/m, (k+1) pi/m]`` (``sphere_psi``). Each
    training step decays ``lambda_t = max(lambda_min, lambda_max * (1 + gamma t)^(-power))`` as in the
    authors' released code (base 1000, gamma 0.12, power 1, min 5), so training starts close to the
    softmax and the margin takes over gradually. ``current_lambda`` gives the value in use.

    Args:
        margin: integer ``m >= 1`` (paper: 4).
        lambda_max, lambda_min, lambda_gamma, lambda_power: the annealing schedule above.
        embedding_dim, num_classes, head, sample_rate, chunk_size: see ``ClassCentreLoss``.

    Example:
        >>> loss = SphereFaceLoss(embedding_dim=8, num_classes=5, margin=4)
        >>> value = loss(torch.randn(4, 8), torch.tensor([0, 1, 1, 4]))
    """

    def __init__(self, *, embedding_dim: int, num_classes: int, margin: int = 4, lambda_max: float = 1000.0,
                 lambda_min: float = 5.0, lambda_gamma: float = 0.12, lambda_power: float = 1.0,
                 head: str = "full", sample_rate: float = 0.1, chunk_size: int | None = None) -> None:
        super().__init__(embedding_dim=embedding_dim, num_classes=num_classes, head=head, sample_rate=sample_rate,
                         chunk_size=chunk_size)
        self.margin_multiplier = check_int("margin", margin, low=1)
        self.lambda_max = check_non_negative_float("lambda_max", lambda_max)
        self.lambda_min = check_non_negative_float("lambda_min", lambda_min)
        if self.lambda_min > self.lambda_max:
            raise ValueError(f"lambda_min ({lambda_min}) must be <= lambda_max ({lambda_max})")
        self.lambda_gamma = check_non_negative_float("lambda_gamma", lambda_gamma)
        self.lambda_power = check_non_negative_float("lambda_power", lambda_power)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self._lambda_now = self.current_lambda()

    def current_lambda(self) -> float:
        decayed = self.lambda_max * (1.0 + self.lambda_gamma * int(self.step)) ** (-self.lambda_power)
        return max(self.lambda_min, decayed)

    def prepare(self, embeddings):
        return F.normalize(embeddings, dim=1), torch.linalg.vector_norm(embeddings, dim=1)

    def margin(self, cosine, labels):
        return annealed_sphere_psi(cosine, self.margin_multiplier, self._lambda_now)

    def head_output(self, embeddings, labels):
        self._lambda_now = self.current_lambda()
        output = super().head_output(embeddings, labels)
        if self.training:
            self.step += 1
        return output


class _ScaledMarginLoss(ClassCentreLoss):
    """Normalised features and centres, fixed scale ``s``: logits ``s cos`` with the margin on the target."""

    def __init__(self, *, embedding_dim: int, num_classes: int, scale: float, num_subcenters: int = 1,
                 head: str = "full", sample_rate: float = 0.1, chunk_size: int | None = None) -> None:
        super().__init__(embedding_dim=embedding_dim, num_classes=num_classes, num_subcenters=num_subcenters,
                         head=head, sample_rate=sample_rate, chunk_size=chunk_size)
        self.scale = check_positive_float("scale", scale)

    def prepare(self, embeddings):
        return F.normalize(embeddings, dim=1), self.scale


@register("loss", "cosface", example={"margin": 0.35, "scale": 30.0})
class CosFaceLoss(_ScaledMarginLoss):
    r"""Large Margin Cosine Loss / CosFace (Wang et al., CVPR 2018).

    .. math::
        L_i = -\log \frac{e^{s(\cos\theta_{i,y_i} - m)}}
                         {e^{s(\cos\theta_{i,y_i} - m)} + \sum_{j \ne y_i} e^{s\cos\theta_{i,j}}}

    Args:
        margin: cosine margin ``m >= 0`` (paper: 0.35); scale: ``s > 0`` (paper: 64).
        embedding_dim, num_classes, head, sample_rate, chunk_size: see ``ClassCentreLoss``.

    Example:
        >>> loss = CosFaceLoss(embedding_dim=8, num_classes=5, margin=0.35, scale=64.0)
        >>> value = loss(torch.randn(4, 8), torch.tensor([0, 1, 1, 4]))
    """

    def __init__(self, *, embedding_dim: int, num_classes: int, margin: float = 0.35, scale: float = 64.0,
                 head: str = "full", sample_rate: float = 0.1, chunk_size: int | None = None) -> None:
        super().__init__(embedding_dim=embedding_dim, num_classes=num_classes, scale=scale, head=head,
                         sample_rate=sample_rate, chunk_size=chunk_size)
        self.margin_value = check_non_negative_float("margin", margin)

    def margin(self, cosine, labels):
        return cosine_margin(cosine, self.margin_value)


def _angular_margin(name: str, value: float) -> float:
    """An angle in radians in [0, pi): a larger margin would fold the target angle past pi."""
    return check_in_range(name, value, 0, math.pi, high_inclusive=False)


@register("loss", "arcface", example={"margin": 0.5, "scale": 30.0})
class ArcFaceLoss(_ScaledMarginLoss):
    r"""Additive Angular Margin Loss / ArcFace (Deng et al., CVPR 2019).

    .. math::
        L_i = -\log \frac{e^{s\cos(\theta_{i,y_i} + m)}}
                         {e^{s\cos(\theta_{i,y_i} + m)} + \sum_{j \ne y_i} e^{s\cos\theta_{i,j}}}

    Where ``theta + m > pi`` the target uses ``cos(theta) - m sin(m)`` so it keeps decreasing in
    ``theta`` (see ``deepmetric.losses.margins.arc_margin``); the gradient is the exact derivative
    (no straight-through trick).

    Args:
        margin: angular margin ``m`` in radians (paper: 0.5 = 28.6 degrees; pytorch-metric-learning takes
            degrees); scale: ``s > 0`` (paper: 64); num_subcenters: ``K`` (1 = plain ArcFace).
        embedding_dim, num_classes, head, sample_rate, chunk_size: see ``ClassCentreLoss``.

    Example:
        >>> loss = ArcFaceLoss(embedding_dim=8, num_classes=5, margin=0.5, scale=64.0)
        >>> value = loss(torch.randn(4, 8), torch.tensor([0, 1, 1, 4]))
    """

    def __init__(self, *, embedding_dim: int, num_classes: int, margin: float = 0.5, scale: float = 64.0,
                 num_subcenters: int = 1, head: str = "full", sample_rate: float = 0.1,
                 chunk_size: int | None = None) -> None:
        super().__init__(embedding_dim=embedding_dim, num_classes=num_classes, scale=scale,
                         num_subcenters=num_subcenters, head=head, sample_rate=sample_rate, chunk_size=chunk_size)
        self.margin_value = _angular_margin("margin", margin)

    def margin(self, cosine, labels):
        return arc_margin(cosine, self.margin_value)


@register("loss", "combined_margin", example={"angular_multiplier": 1.0, "angular_margin": 0.3, "cosine_margin": 0.2})
class CombinedMarginLoss(_ScaledMarginLoss):
    r"""The combined margin of insightface: target logit ``s (cos(m1 theta + m2) - m3)``.

    ``(m, 0, 0)`` is SphereFace's ``psi`` (normalised features, no annealing), ``(1, m, 0)`` ArcFace,
    ``(1, 0, m)`` CosFace; continued monotonically where ``m1 theta + m2 > pi``
    (``deepmetric.losses.margins.combined_margin``).

    Args:
        angular_multiplier: ``m1 > 0``; angular_margin: ``m2`` in radians; cosine_margin: ``m3``;
        scale: ``s > 0``.
        embedding_dim, num_classes, head, sample_rate, chunk_size: see ``ClassCentreLoss``.

    Example:
        >>> loss = CombinedMarginLoss(embedding_dim=8, num_classes=5, angular_multiplier=1.0,
        ...                           angular_margin=0.3, cosine_margin=0.2)
        >>> value = loss(torch.randn(4, 8), torch.tensor([0, 1, 1, 4]))
    """

    def __init__(self, *, embedding_dim: int, num_classes: int, angular_multiplier: float = 1.0,
                 angular_margin: float = 0.3, cosine_margin: float = 0.2, scale: float = 64.0, head: str = "full",
                 sample_rate: float = 0.1, chunk_size: int | None = None) -> None:
        super().__init__(embedding_dim=embedding_dim, num_classes=num_classes, scale=scale, head=head,
                         sample_rate=sample_rate, chunk_size=chunk_size)
        self.angular_multiplier = check_positive_float("angular_multiplier", angular_multiplier)
        self.angular_margin = _angular_margin("angular_margin", angular_margin)
        self.cosine_margin = check_non_negative_float("cosine_margin", cosine_margin)

    def margin(self, cosine, labels):
        return combined_margin(cosine, self.angular_multiplier, self.angular_margin, self.cosine_margin)


@register("loss", "adacos", example={"dynamic": True})
class AdaCosLoss(ClassCentreLoss):
    r"""AdaCos (Zhang et al., CVPR 2019): margin-free cosine softmax with an automatic scale.

    Fixed: ``s = sqrt(2) log(C - 1)``. Dynamic (default): before each training step's loss,
    ``s <- log(B_avg) / cos(min(pi/4, theta_med))`` with ``B_avg = (1/B) sum_i sum_{j != y_i}
    exp(s_old cos theta_{i,j})`` and ``theta_med`` the batch's median target angle (eq. 16). ``B_avg``
    needs one extra forward pass over the classes. ``scale`` (a buffer) is the value in use.

    Args:
        dynamic: update the scale every training step.
        embedding_dim, num_classes (>= 3), head, sample_rate, chunk_size: see ``ClassCentreLoss``.

    Example:
        >>> loss = AdaCosLoss(embedding_dim=8, num_classes=5)
        >>> value = loss(torch.randn(4, 8), torch.tensor([0, 1, 1, 4]))
    """

    def __init__(self, *, embedding_dim: int, num_classes: int, dynamic: bool = True, head: str = "full",
                 sample_rate: float = 0.1, chunk_size: int | None = None) -> None:
        super().__init__(embedding_dim=embedding_dim, num_classes=num_classes, head=head, sample_rate=sample_rate,
                         chunk_size=chunk_size)
        self.dynamic = check_bool("dynamic", dynamic)
        self.register_buffer("scale", torch.tensor(adacos_fixed_scale(num_classes), dtype=torch.float64))

    def prepare(self, embeddings):
        return F.normalize(embeddings, dim=1), float(self.scale)

    def head_output(self, embeddings, labels):
        inputs, scale = self.prepare(embeddings)
        class_index = None
        if self.head.head == "sampled" and self.training:
            class_index = self.head.sample_classes(labels.to(inputs.device).long())
        if self.dynamic and self.training:
            with torch.no_grad():
                rest = self.head.nontarget_logsumexp(inputs.detach(), labels, row_scale=scale, class_index=class_index)
                target = self.head.target_cosines(inputs.detach(), labels)
                new_scale = adacos_dynamic_scale(rest, target)
            if math.isfinite(new_scale) and new_scale > 0:
                self.scale.fill_(new_scale)
                scale = new_scale
        return self.head(inputs, labels, row_scale=scale, class_index=class_index)


@register("loss", "subcenter_arcface", example={"num_subcenters": 3})
class SubCenterArcFaceLoss(ArcFaceLoss):
    r"""Sub-center ArcFace (Deng et al., ECCV 2020): ``K`` centres per class, the class cosine is the
    largest over its sub-centres, ``cos theta_{i,j} = max_k <x_i, w_{j,k}>``, then ArcFace.

    After training, ``subcentre_votes`` counts (over the training data, batch by batch) which
    sub-centre each sample is closest to; ``dominant_centres`` keeps the most voted one per class and
    ``keep_mask`` drops samples farther than ``max_angle`` from their class's dominant centre (the
    paper's noisy-data cleaning; 75 degrees in the paper).

    Args:
        num_subcenters: ``K >= 1`` (paper: 3); margin: radians (0.5); scale: ``s`` (64).
        embedding_dim, num_classes, head, sample_rate, chunk_size: see ``ClassCentreLoss``.

    Example:
        >>> loss = SubCenterArcFaceLoss(embedding_dim=8, num_classes=5, num_subcenters=3)
        >>> embeddings, labels = torch.randn(4, 8), torch.tensor([0, 1, 1, 4])
        >>> value = loss(embeddings, labels)
        >>> keep = loss.keep_mask(embeddings, labels)
    """

    def __init__(self, *, embedding_dim: int, num_classes: int, num_subcenters: int = 3, margin: float = 0.5,
                 scale: float = 64.0, head: str = "full", sample_rate: float = 0.1,
                 chunk_size: int | None = None) -> None:
        super().__init__(embedding_dim=embedding_dim, num_classes=num_classes, margin=margin, scale=scale,
                         num_subcenters=num_subcenters, head=head, sample_rate=sample_rate, chunk_size=chunk_size)

    def _subcentre_cosines(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, K) cosines between each sample and its own class's sub-centres."""
        labels = labels.to(embeddings.device).long()
        self.head.check_labels(labels)
        centres = self.head.unit_centres()[labels].to(embeddings.dtype)
        return torch.einsum("bd,bkd->bk", F.normalize(embeddings.detach(), dim=1), centres)

    @torch.no_grad()
    def subcentre_votes(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(C, K) counts: how many samples of each class are closest to each of its sub-centres.
        Sum the counts over batches to cover a whole data set."""
        labels = labels.to(embeddings.device).long()
        nearest = self._subcentre_cosines(embeddings, labels).argmax(dim=1)
        k = self.head.num_subcenters
        flat = torch.bincount(labels * k + nearest, minlength=self.num_classes * k)
        return flat.view(self.num_classes, k)

    @torch.no_grad()
    def dominant_centres(self, votes: torch.Tensor) -> torch.Tensor:
        """(C, D) unit vectors: each class's most voted sub-centre (the first one for a class without
        votes; ties go to the lower index)."""
        self._check_votes(votes)
        best = votes.argmax(dim=1).to(self.weight.device)
        return self.head.unit_centres()[torch.arange(self.num_classes, device=best.device), best]

    def _check_votes(self, votes: torch.Tensor) -> None:
        expected = (self.num_classes, self.head.num_subcenters)
        if not isinstance(votes, torch.Tensor) or tuple(votes.shape) != expected:
            got = tuple(votes.shape) if isinstance(votes, torch.Tensor) else type(votes).__name__
            raise ValueError(f"votes must be a tensor of shape {expected} from subcentre_votes, got {got}")

    @torch.no_grad()
    def keep_mask(self, embeddings: torch.Tensor, labels: torch.Tensor, *, max_angle: float = math.radians(75),
                  votes: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) bool: True for samples within ``max_angle`` radians of their class's dominant
        sub-centre. ``votes`` (from ``subcentre_votes`` over the training set) picks the dominant
        sub-centres; None uses the votes of this batch."""
        max_angle = check_in_range("max_angle", max_angle, 0, math.pi)
        if votes is None:
            votes = self.subcentre_votes(embeddings, labels)
        self._check_votes(votes)
        labels = labels.to(embeddings.device).long()
        dominant = votes.to(labels.device).argmax(dim=1)[labels]
        cosines = self._subcentre_cosines(embeddings, labels)
        to_dominant = cosines[torch.arange(labels.numel(), device=labels.device), dominant]
        return to_dominant >= math.cos(max_angle)


# class_counts fixes the number of classes, so this example names it too.
@register("loss", "dynamic_margin_arcface", example={"num_classes": 5, "class_counts": [50, 20, 10, 5, 1]})
class DynamicMarginArcFaceLoss(ArcFaceLoss):
    r"""ArcFace with per-class dynamic margins (Ha et al. 2020, Google Landmark Recognition 2020, 3rd
    place): rarer classes get larger margins,

    .. math:: m_c = a \, n_c^{-\lambda} + b,

    with ``n_c`` the number of training samples of class ``c``; the target logit is
    ``s cos(theta + m_{y_i})`` (same monotonic fallback as ArcFace).

    Args:
        class_counts: ``n_c >= 1`` for every class, length ``num_classes``.
        margin_scale: ``a`` (0.5), margin_offset: ``b`` (0.05), margin_power: ``lambda`` (0.25).
        scale, num_subcenters (their solution combined this with sub-centres), embedding_dim,
        num_classes, head, sample_rate, chunk_size: see ``ArcFaceLoss``.

    Example:
        >>> loss = DynamicMarginArcFaceLoss(embedding_dim=8, num_classes=3, class_counts=[100, 10, 1])
        >>> value = loss(torch.randn(4, 8), torch.tensor([0, 1, 1, 2]))
    """

    def __init__(self, *, embedding_dim: int, num_classes: int, class_counts: Sequence[int] | torch.Tensor,
                 margin_scale: float = 0.5, margin_offset: float = 0.05, margin_power: float = 0.25,
                 scale: float = 64.0, num_subcenters: int = 1, head: str = "full", sample_rate: float = 0.1,
                 chunk_size: int | None = None) -> None:
        super().__init__(embedding_dim=embedding_dim, num_classes=num_classes, margin=0.0, scale=scale,
                         num_subcenters=num_subcenters, head=head, sample_rate=sample_rate, chunk_size=chunk_size)
        counts = torch.as_tensor(class_counts, dtype=torch.float64)
        if counts.dim() != 1 or counts.numel() != num_classes:
            raise ValueError(f"class_counts must have one count per class (num_classes={num_classes}), "
                             f"got shape {tuple(counts.shape)}")
        if not bool((counts >= 1).all()) or not bool(torch.isfinite(counts).all()):
            raise ValueError(f"class_counts must all be >= 1, got minimum {float(counts.min())}")
        self.margin_scale = check_non_negative_float("margin_scale", margin_scale)
        self.margin_offset = check_non_negative_float("margin_offset", margin_offset)
        self.margin_power = check_non_negative_float("margin_power", margin_power)
        margins = self.margin_scale * counts.pow(-self.margin_power) + self.margin_offset
        if float(margins.max()) >= math.pi:
            raise ValueError(f"dynamic margins reach {float(margins.max()):.3f} rad >= pi; lower margin_scale "
                             f"or margin_offset")
        self.register_buffer("class_margins", margins.to(torch.float32))

    def margin(self, cosine, labels):
        return arc_margin(cosine, self.class_margins[labels].to(cosine.dtype))
