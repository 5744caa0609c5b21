"""Losses: pair, triplet and batch losses, and classification heads with angular margins.

Every loss is an ``nn.Module`` called as ``loss(embeddings, labels, *, mined=None, ref_embeddings=None,
ref_labels=None)`` and registered under the key used in configs.
"""

from deepmetric.losses.base import BaseLoss, MetricLoss, check_embeddings

__all__ = ["BaseLoss", "MetricLoss", "check_embeddings"]
