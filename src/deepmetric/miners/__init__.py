"""Miners choose informative pairs or triplets from a batch (and optionally a reference memory)."""

from deepmetric.miners.base import BaseMiner, label_masks, triplets_from_masks

__all__ = ["BaseMiner", "label_masks", "triplets_from_masks"]
