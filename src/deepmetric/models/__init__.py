"""Embedding models: backbones, pooling, the embedding neck, the ``Embedder`` and its model folder, Siamese /
triplet wrappers, and the model protocol. Names load on first use, so importing the protocol costs no torch;
the registry imports the "backbone" and "pooling" modules when one is looked up."""

from __future__ import annotations

from deepmetric import lazy_exports

_EXPORTS = {
    "Embedder": "embedder", "build_embedder": "embedder", "read_model_config": "embedder",
    "update_model_config": "embedder", "validate_model_config": "embedder",
    "EmbeddingNeck": "neck",
    "PairDataset": "siamese", "SiameseNetwork": "siamese", "TripletDataset": "siamese", "TripletNetwork": "siamese",
    "pair_batch": "siamese",
    "EmbeddingModel": "protocol", "FaceModel": "protocol", "load_model": "protocol", "model_fingerprint": "protocol",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
