"""Helpers shared by the miners: one "closeness" convention for distances and similarities, and seeded
random sampling that is reproducible on any device."""

from __future__ import annotations

import math

import torch

from deepmetric.distances import Distance


def distance_like(distance: Distance, embeddings: torch.Tensor, ref_embeddings: torch.Tensor) -> torch.Tensor:
    """(B, R) values where *smaller means closer* for every distance: a similarity is negated.

    Writing each miner once against this convention makes "hardest negative" always the row minimum and
    "hardest positive" the row maximum, and turns ``s(a,p) - m < s(a,n) < s(a,p)`` into
    ``d(a,p) < d(a,n) < d(a,p) + m``.
    """
    values = distance(embeddings, ref_embeddings)
    return -values if distance.is_similarity else values


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


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
