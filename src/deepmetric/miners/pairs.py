"""Pair miners: every positive and negative pair, or all positives with a capped number of negatives."""

from __future__ import annotations

import math

import torch

from deepmetric.distances import Distance
from deepmetric.masks import label_masks
from deepmetric.miners._util import SeededRandom, closeness_ranking
from deepmetric.miners.base import BaseMiner
from deepmetric.registry import register
from deepmetric.types import Pairs
from deepmetric.validation import check_choice, check_positive_float


def _pairs_from_masks(positive: torch.Tensor, negative: torch.Tensor) -> Pairs:
    anchor_positive, positive_idx = positive.nonzero(as_tuple=True)
    anchor_negative, negative_idx = negative.nonzero(as_tuple=True)
    return Pairs(anchor_positive, positive_idx, anchor_negative, negative_idx)


@register("miner", "all_pairs", example={})
class AllPairsMiner(BaseMiner):
    r"""Every positive pair :math:`\{(a, p): y_a = y_p, a \ne p\}` and every negative pair
    :math:`\{(a, n): y_a \ne y_n\}` (the pairs of the contrastive loss, Hadsell et al. 2006).

    Shapes: embeddings (B, D), labels (B,); optional ref_embeddings (R, D), ref_labels (R,). Returns
    ``Pairs`` indexing anchors in ``embeddings`` and partners in ``ref_embeddings`` (the batch when not
    given, in which case an item is never paired with itself). Memory O(B R).

    Example:
        >>> import torch
        >>> pairs = AllPairsMiner()(torch.randn(4, 8), torch.tensor([0, 0, 1, 1]))
        >>> pairs.num_positive, pairs.num_negative
        (4, 8)
    """

    def __init__(self, *, distance: Distance | str | None = None) -> None:
        super().__init__(distance=distance)

    def mine(self, embeddings, labels, ref_embeddings, ref_labels) -> Pairs:
        return _pairs_from_masks(*label_masks(labels, ref_labels))


_NEGATIVE_STRATEGIES = ("hardest", "random")


@register("miner", "pair_ratio", example={"ratio": 3.0})
class PairRatioMiner(BaseMiner):
    r"""All positive pairs plus at most ``ratio`` x as many negative pairs (e.g. 3:1).

    With :math:`P` positive pairs the miner keeps :math:`\lfloor r P \rfloor` of the negative pairs
    :math:`\{(a, n): y_a \ne y_n\}` over the whole batch: the hardest ones (smallest distance / largest
    similarity) with ``strategy="hardest"`` (online hard negative mining as in Shrivastava et al. 2016,
    OHEM, at a fixed negative:positive ratio), or a uniform random subset with ``strategy="random"``. When
    there are fewer negatives than the cap, all are kept; with no positive pair the result is empty.

    Args:
        ratio: negatives per positive, > 0.
        strategy: ``"hardest"`` or ``"random"``.
        distance: distance or similarity used to rank negatives (default euclidean).
        seed: seed for ``strategy="random"`` (None: the global torch RNG).

    Shapes: embeddings (B, D), labels (B,); optional ref_embeddings (R, D), ref_labels (R,). Returns
    ``Pairs``. Memory O(B R).

    Example:
        >>> import torch
        >>> miner = PairRatioMiner(ratio=1.0)
        >>> pairs = miner(torch.randn(6, 8), torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> pairs.num_positive, pairs.num_negative
        (6, 6)
    """

    def __init__(self, *, ratio: float = 3.0, strategy: str = "hardest", distance: Distance | str | None = None,
                 seed: int | None = None) -> None:
        super().__init__(distance=distance)
        self.ratio = check_positive_float("ratio", ratio)
        self.strategy = check_choice("strategy", strategy, _NEGATIVE_STRATEGIES)
        self.random = SeededRandom(seed)

    def mine(self, embeddings, labels, ref_embeddings, ref_labels) -> Pairs:
        positive, negative = label_masks(labels, ref_labels)
        anchor_positive, positive_idx = positive.nonzero(as_tuple=True)
        cap = math.floor(self.ratio * anchor_positive.numel())
        num_negative = int(negative.sum())
        if num_negative <= cap:
            anchor_negative, negative_idx = negative.nonzero(as_tuple=True)
        elif self.strategy == "hardest":
            closeness, _ = closeness_ranking(self.distance, embeddings,
                                             embeddings if ref_labels is None else ref_embeddings)
            closeness = closeness.masked_fill_(~negative, float("inf")).flatten()
            flat = torch.topk(closeness, cap, largest=False, sorted=True).indices
            anchor_negative, negative_idx = flat // negative.shape[1], flat % negative.shape[1]
        else:
            anchor_negative, negative_idx = negative.nonzero(as_tuple=True)
            generator = self.random.generator(embeddings.device)
            keep = torch.randperm(num_negative, generator=generator, device=embeddings.device)[:cap]
            anchor_negative, negative_idx = anchor_negative[keep], negative_idx[keep]
        return Pairs(anchor_positive, positive_idx, anchor_negative, negative_idx)
