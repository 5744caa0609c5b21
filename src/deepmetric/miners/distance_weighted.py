"""Distance-weighted negative sampling (Wu et al. 2017): negatives drawn uniformly over distances rather
than over the sphere, which would concentrate them near sqrt(2)."""

from __future__ import annotations

import torch

from deepmetric.distances import Distance, SquaredEuclideanDistance
from deepmetric.masks import label_masks
from deepmetric.miners._util import SeededRandom
from deepmetric.miners.base import BaseMiner
from deepmetric.registry import register
from deepmetric.types import Triplets
from deepmetric.validation import check_positive_float

# Keeps log(1 - d^2/4) finite for antipodal points.
_MAX_DISTANCE = 2.0 - 1e-4


def log_inverse_density(distances: torch.Tensor, dim: int) -> torch.Tensor:
    r""":math:`-\log q(d)` for points uniform on the unit sphere in :math:`\mathbb{R}^n`,
    :math:`q(d) \propto d^{n-2} (1 - d^2/4)^{(n-3)/2}` (up to a constant)."""
    distances = distances.clamp(max=_MAX_DISTANCE)
    return -(dim - 2) * torch.log(distances) - ((dim - 3) / 2) * torch.log1p(-distances.pow(2) / 4)


def _unit_sphere_distance(distance: Distance, embeddings: torch.Tensor, ref_embeddings: torch.Tensor) -> torch.Tensor:
    values = distance(embeddings, ref_embeddings)
    if distance.is_similarity:  # cosine of unit vectors: |x - y|^2 = 2 - 2 cos
        return (2.0 - 2.0 * values).clamp_min(0.0).sqrt()
    if type(distance) is SquaredEuclideanDistance:
        return values.sqrt()
    return values


@register("miner", "distance_weighted", example={"cutoff": 0.5, "nonzero_loss_cutoff": 1.4, "seed": 0})
class DistanceWeightedMiner(BaseMiner):
    r"""Distance-weighted sampling (Wu, Manmatha, Smola & Krähenbühl 2017, "Sampling Matters in Deep
    Embedding Learning").

    For n-dimensional embeddings on the unit sphere, pairwise distances of uniform points have density
    :math:`q(d) \propto d^{n-2} \left(1 - \tfrac{d^2}{4}\right)^{\frac{n-3}{2}}`. For every positive pair
    :math:`(a, p)` one negative is drawn with

    .. math::
        \Pr(n \mid a) \propto q\big(\max(d_{an}, \tau)\big)^{-1}\
        \mathbb{1}[y_n \ne y_a]\ \mathbb{1}[d_{an} < \delta]

    with ``cutoff`` :math:`\tau` (0.5 in the paper; clipping the distance bounds the weight of very close,
    often noisy negatives, the role of the paper's :math:`\lambda`) and ``nonzero_loss_cutoff``
    :math:`\delta` (1.4: farther negatives give no loss with the paper's margin). Weights are normalised per
    anchor in log space, so large n does not overflow. Anchors whose negatives are all beyond
    :math:`\delta` give no triplet.

    The density assumes L2-normalised embeddings and Euclidean distance. Other distances are mapped to
    it: a cosine / dot similarity s becomes :math:`\sqrt{2 - 2s}`, a squared distance its square root.

    Args:
        cutoff: :math:`\tau`, > 0.
        nonzero_loss_cutoff: :math:`\delta`, in (cutoff, 2].
        distance: default euclidean on normalised embeddings.
        seed: seed of the miner's own generator (None: the global torch RNG), so a run is reproducible.

    Shapes: embeddings (B, D), labels (B,); optional ref_embeddings (R, D), ref_labels (R,). Returns
    ``Triplets``, one per positive pair with an eligible negative. Memory O(B R).

    Example:
        >>> import torch
        >>> miner = DistanceWeightedMiner(seed=0)
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2])
        >>> triplets = miner(torch.randn(6, 16), labels)
        >>> bool((labels[triplets.anchor] != labels[triplets.negative]).all())
        True
    """

    def __init__(self, *, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4,
                 distance: Distance | str | None = None, seed: int | None = None) -> None:
        super().__init__(distance=distance)
        check_positive_float("cutoff", cutoff)
        check_positive_float("nonzero_loss_cutoff", nonzero_loss_cutoff)
        if not cutoff < nonzero_loss_cutoff <= 2.0:
            raise ValueError(f"need cutoff < nonzero_loss_cutoff <= 2 (distances on the unit sphere), "
                             f"got cutoff={cutoff!r}, nonzero_loss_cutoff={nonzero_loss_cutoff!r}")
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)
        self.random = SeededRandom(seed)

    def sampling_weights(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_embeddings: torch.Tensor,
                         ref_labels: torch.Tensor | None) -> torch.Tensor:
        """(B, R) probabilities of drawing each reference item as the negative of each anchor (rows sum
        to 1, or are all 0 when the anchor has no eligible negative)."""
        _, negative = label_masks(labels, ref_labels)
        distances = _unit_sphere_distance(self.distance, embeddings, ref_embeddings)
        log_weights = log_inverse_density(distances.clamp_min(self.cutoff), embeddings.shape[1])
        eligible = negative & (distances < self.nonzero_loss_cutoff)
        log_weights = log_weights.masked_fill(~eligible, float("-inf"))
        row_max = log_weights.amax(1, keepdim=True)
        weights = (log_weights - row_max.masked_fill(~torch.isfinite(row_max), 0.0)).exp()
        return weights / weights.sum(1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)

    def mine(self, embeddings, labels, ref_embeddings, ref_labels) -> Triplets:
        positive, _ = label_masks(labels, ref_labels)
        if not bool(positive.any()):
            return Triplets.empty(embeddings.device)
        weights = self.sampling_weights(embeddings, labels, ref_embeddings, ref_labels)
        usable = weights.sum(1) > 0
        positive &= usable[:, None]
        per_anchor = positive.sum(1)
        draws = int(per_anchor.max()) if per_anchor.numel() else 0
        if draws == 0:
            return Triplets.empty(embeddings.device)
        # One draw per positive pair of an anchor, all anchors at once: (B, max positives), never (P, R).
        safe = torch.where(usable[:, None], weights, torch.ones_like(weights))
        generator = self.random.generator(embeddings.device)
        samples = torch.multinomial(safe, draws, replacement=True, generator=generator)
        anchor, positive_idx = positive.nonzero(as_tuple=True)
        rank = torch.arange(anchor.numel(), device=anchor.device) - (torch.cumsum(per_anchor, 0) - per_anchor)[anchor]
        return Triplets(anchor, positive_idx, samples[anchor, rank])
