"""Embedding models: backbones, pooling, the embedding neck, the ``Embedder`` and its model folder, and
Siamese / triplet wrappers. Importing this package registers the "backbone" and "pooling" components."""

from deepmetric.models import backbones, pooling  # noqa: F401  (registration)
from deepmetric.models.embedder import (Embedder, build_embedder, read_model_config, update_model_config,
                                        validate_model_config)
from deepmetric.models.neck import EmbeddingNeck
from deepmetric.models.siamese import PairDataset, SiameseNetwork, TripletDataset, TripletNetwork, pair_batch

__all__ = ["Embedder", "EmbeddingNeck", "PairDataset", "SiameseNetwork", "TripletDataset", "TripletNetwork",
           "build_embedder", "pair_batch", "read_model_config", "update_model_config", "validate_model_config"]
