"""Miners choose informative pairs or triplets from a batch (and optionally a reference memory).

Each is registered as a ``"miner"`` and called as ``miner(embeddings, labels, ref_embeddings=None,
ref_labels=None) -> Pairs | Triplets``; a loss takes the result as ``loss(embeddings, labels, mined=...)``.
"""

from deepmetric.miners.base import BaseMiner
from deepmetric.miners.cross_batch import CrossBatchMemoryMiner
from deepmetric.miners.distance_weighted import DistanceWeightedMiner
from deepmetric.miners.pairs import AllPairsMiner, PairRatioMiner
from deepmetric.miners.triplets import AllTripletsMiner, BatchHardMiner, HardMiner, SemiHardMiner

__all__ = [
    "AllPairsMiner", "AllTripletsMiner", "BaseMiner", "BatchHardMiner", "CrossBatchMemoryMiner",
    "DistanceWeightedMiner", "HardMiner", "PairRatioMiner", "SemiHardMiner",
]
