"""Losses: pair, triplet and batch losses, and classification heads with angular margins.

Every loss is an ``nn.Module`` called as ``loss(embeddings, labels, *, mined=None, ref_embeddings=None,
ref_labels=None)`` and registered under the key used in configs.
"""

from deepmetric.losses.base import BaseLoss, MetricLoss, check_embeddings

__all__ = ["BaseLoss", "MetricLoss", "check_embeddings"]
from deepmetric.losses.pair import ContrastiveLoss, QuadrupletLoss, TripletLoss  # noqa: E402,F401
from deepmetric.losses.batch import (LiftedStructureLoss, MultiSimilarityLoss, NPairLoss, NTXentLoss,  # noqa: E402,F401
                                     ProxyAnchorLoss)
from deepmetric.losses.magnet import MagnetLoss  # noqa: E402,F401
from deepmetric.losses.classification import (AdaCosLoss, ArcFaceLoss, CenterLoss, CombinedMarginLoss, CosFaceLoss, DynamicMarginArcFaceLoss, NormalizedSoftmaxLoss, SoftmaxLoss, SphereFaceLoss, SubCenterArcFaceLoss)  # noqa: E402,F401
