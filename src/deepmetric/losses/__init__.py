"""Losses: pair, triplet and batch losses, and classification heads with angular margins.

Every loss is an ``nn.Module`` called as ``loss(embeddings, labels, *, mined=None, ref_embeddings=None,
ref_labels=None)`` and registered under the key used in configs.
"""

from deepmetric.losses.base import BaseLoss, MetricLoss
from deepmetric.losses.batch import LiftedStructureLoss, MultiSimilarityLoss, NPairLoss, NTXentLoss, ProxyAnchorLoss
from deepmetric.losses.classification import (
                                              AdaCosLoss,
                                              ArcFaceLoss,
                                              CenterLoss,
                                              CombinedMarginLoss,
                                              CosFaceLoss,
                                              DynamicMarginArcFaceLoss,
                                              NormalizedSoftmaxLoss,
                                              SoftmaxLoss,
                                              SphereFaceLoss,
                                              SubCenterArcFaceLoss,
)
from deepmetric.losses.magnet import MagnetLoss
from deepmetric.losses.pair import ContrastiveLoss, QuadrupletLoss, TripletLoss

__all__ = [
    "AdaCosLoss", "ArcFaceLoss", "BaseLoss", "CenterLoss", "CombinedMarginLoss", "ContrastiveLoss", "CosFaceLoss",
    "DynamicMarginArcFaceLoss", "LiftedStructureLoss", "MagnetLoss", "MetricLoss", "MultiSimilarityLoss",
    "NPairLoss", "NTXentLoss", "NormalizedSoftmaxLoss", "ProxyAnchorLoss", "QuadrupletLoss", "SoftmaxLoss",
    "SphereFaceLoss", "SubCenterArcFaceLoss", "TripletLoss",
]
