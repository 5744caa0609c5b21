"""Helpers shared by the miners: one "closeness" convention for distances and similarities, and seeded
random sampling that is reproducible on any device."""

from __future__ import annotations

from collections.abc import Callable

import torch

from deepmetric.distances import (
    CosineSimilarity,
    Distance,
    DotProductSimilarity,
    EuclideanDistance,
    SquaredEuclideanDistance,
)
from deepmetric.validation import check_seed


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
    r"""A (B, R) matrix ordered exactly like ``distance_like`` and a function mapping its entries to
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


def negatives_only(closeness: torch.Tensor, anchor: torch.Tensor, positive: torch.Tensor,
                   same_set: bool) -> torch.Tensor:
    """``closeness`` with every positive pair (and the diagonal for a batch against itself) set to +inf,
    in place: O(P + B) writes instead of a (B, R) mask."""
    closeness[anchor, positive] = float("inf")
    if same_set:
        closeness.fill_diagonal_(float("inf"))
    return closeness


class SeededRandom:
    """A ``torch.Generator`` per device, seeded with ``seed``; with ``seed=None`` the global RNG is used so
    that ``torch.manual_seed`` controls the draws."""

    def __init__(self, seed: int | None) -> None:
        self.seed = check_seed("seed", seed)
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
        self.seed = check_seed("seed", seed)
        self._generators.clear()
