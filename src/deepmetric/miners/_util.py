"""Helpers shared by the miners: one "closeness" convention for distances and similarities, and seeded
random sampling that is reproducible on any device."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from deepmetric.distances import (CosineSimilarity, Distance, DotProductSimilarity, EuclideanDistance,
                                  SquaredEuclideanDistance)
from deepmetric.validation import check_positive_int  # noqa: F401  (re-exported for the miners)


def distance_like(distance: Distance, embeddings: torch.Tensor, ref_embeddings: torch.Tensor) -> torch.Tensor:
    """(B, R) values where *smaller means closer* for every distance: a similarity is negated.

    Writing each miner once against this convention makes "hardest negative" always the row minimum and
    "hardest positive" the row maximum, and turns ``s(a,p) - m < s(a,n) < s(a,p)`` into
    ``d(a,p) < d(a,n) < d(a,p) + m``.
    """
    values = distance(embeddings, ref_embeddings)
    return -values if distance.is_similarity else values


def _unit_squared_euclidean(negative_cosine: torch.Tensor) -> torch.Tensor:
    return (2.0 + 2.0 * negative_cosine).clamp_min(0.0)


def _unit_euclidean(negative_cosine: torch.Tensor) -> torch.Tensor:
    return _unit_squared_euclidean(negative_cosine).sqrt()


def closeness_ranking(distance: Distance, embeddings: torch.Tensor, ref_embeddings: torch.Tensor
                      ) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor] | None]:
    """A (B, R) matrix ordered exactly like ``distance_like`` and a function mapping its entries to
    ``distance_like`` values (None: they already are).

    Mining only compares values, so for the built-in distances on L2-normalised embeddings the matrix is
    :math:`-x^T y` from a single matrix product: :math:`\|x - y\|^2 = 2 - 2 x^T y` for unit vectors, and
    cosine / dot similarities are bilinear. Every (B, R) elementwise pass saved matters at B = 1024 and
    more; the few values a miner tests against a margin are mapped back with the function.
    """
    kind = type(distance)
    bilinear_similarity = kind in (CosineSimilarity, DotProductSimilarity)
    unit_euclidean = kind in (EuclideanDistance, SquaredEuclideanDistance) and distance.normalize_embeddings
    if not (bilinear_similarity or unit_euclidean):
        return distance_like(distance, embeddings, ref_embeddings), None
    x = distance.prepare(embeddings)
    y = x if ref_embeddings is embeddings else distance.prepare(ref_embeddings)
    ranking = (-x) @ y.T
    if bilinear_similarity:
        return ranking, None
    return ranking, (_unit_euclidean if kind is EuclideanDistance else _unit_squared_euclidean)


def positive_pairs(labels: torch.Tensor, ref_labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchor, positive) indices of every same-label pair (an item is not its own positive when there is
    no reference set), in row-major order like ``mask.nonzero()``.

    The reference labels are sorted once and each anchor's positives are the run of its label, so this
    costs O(B log R + P) instead of building and scanning a (B, R) mask.
    """
    ref = labels if ref_labels is None else ref_labels
    sorted_ref, order = torch.sort(ref, stable=True)
    start = torch.searchsorted(sorted_ref, labels)
    counts = torch.searchsorted(sorted_ref, labels, right=True) - start
    anchor = torch.repeat_interleave(torch.arange(labels.shape[0], device=labels.device), counts)
    offset = torch.arange(anchor.numel(), device=labels.device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    positive = order[torch.repeat_interleave(start, counts) + offset]
    if ref_labels is None:
        not_self = anchor != positive
        anchor, positive = anchor[not_self], positive[not_self]
    return anchor, positive


def negatives_only(closeness: torch.Tensor, anchor: torch.Tensor, positive: torch.Tensor, same_set: bool) -> torch.Tensor:
    """``closeness`` with every positive pair (and the diagonal for a batch against itself) set to +inf,
    in place: O(P + B) writes instead of a (B, R) mask."""
    closeness[anchor, positive] = float("inf")
    if same_set:
        closeness.fill_diagonal_(float("inf"))
    return closeness


def check_positive_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_seed(seed: int | None) -> int | None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}: {seed!r}")
    return seed


class SeededRandom:
    """A ``torch.Generator`` per device, seeded with ``seed``; with ``seed=None`` the global RNG is used so
    that ``torch.manual_seed`` controls the draws."""

    def __init__(self, seed: int | None) -> None:
        self.seed = check_seed(seed)
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator | None:
        if self.seed is None:
            return None
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[key]

    def manual_seed(self, seed: int) -> None:
        """Restart the random stream (also used to replay a step exactly)."""
        self.seed = check_seed(seed)
        self._generators.clear()
