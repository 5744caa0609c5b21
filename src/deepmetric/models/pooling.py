r"""Pooling: a feature map (B, C, h, w) -> a vector (B, F).

``avg`` and ``gem`` are global; ``flatten`` keeps the spatial layout (the insightface recipe for faces);
``gdc`` is MobileFaceNet's global depthwise convolution; ``identity`` passes vector features through.
Poolings that need the feature map's shape receive ``in_channels`` and ``feature_size`` from the
embedder when it is built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deepmetric.registry import register
from deepmetric.validation import check_positive_float, check_positive_int


def _check_map(name: str, features: torch.Tensor) -> None:
    if features.dim() != 4:
        raise ValueError(f"{name} pooling expects a feature map (B, C, h, w), got shape {tuple(features.shape)}; "
                         f"use pooling 'identity' for vector features")


class Pooling(nn.Module):
    """Base class: (B, C, h, w) or (B, F) -> (B, F')."""

    def __init__(self) -> None:  # explicit, so the registry sees that no argument is accepted
        super().__init__()


@register("pooling", "avg", example={})
class AvgPooling(Pooling):
    """Global average pooling: :math:`f_c = \\frac{1}{hw} \\sum_{i,j} x_{cij}`."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _check_map("avg", features)
        return features.mean(dim=(2, 3))


@register("pooling", "max", example={})
class MaxPooling(Pooling):
    """Global max pooling: :math:`f_c = \\max_{i,j} x_{cij}`."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _check_map("max", features)
        return features.amax(dim=(2, 3))


@register("pooling", "gem", example={"p": 3.0})
class GeMPooling(Pooling):
    r"""Generalised mean pooling (Radenović, Tolias, Chum, "Fine-tuning CNN Image Retrieval with No Human
    Annotation", TPAMI 2018): :math:`f_c = \big(\frac{1}{hw}\sum_{i,j} \max(x_{cij}, \epsilon)^p\big)^{1/p}`.
    ``p = 1`` is average pooling, ``p -> inf`` max pooling.

    Args:
        p: initial exponent (> 0).
        learnable: learn ``p`` by gradient descent.
        eps: clamp for non-positive activations.
    """

    def __init__(self, *, p: float = 3.0, learnable: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        value = torch.tensor(check_positive_float("p", p))
        if learnable:
            self.p = nn.Parameter(value)
        else:
            self.register_buffer("p", value)
        self.eps = check_positive_float("eps", eps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _check_map("gem", features)
        p = self.p.clamp_min(1e-2)
        return features.clamp_min(self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


@register("pooling", "flatten", example={})
class FlattenPooling(Pooling):
    """Keep every position: (B, C, h, w) -> (B, C*h*w). Ties the model to one input size."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _check_map("flatten", features)
        return features.flatten(1)


@register("pooling", "gdc", example={"in_channels": 4, "feature_size": [3, 3]})
class GlobalDepthwiseConv(Pooling):
    """Global depthwise convolution (MobileFaceNet, Chen et al. 2018): one h x w filter per channel without
    padding, then BatchNorm, so each position gets its own learned weight, unlike average pooling.

    Args:
        in_channels: channels of the feature map.
        feature_size: [h, w] of the feature map.
    """

    def __init__(self, *, in_channels: int, feature_size: Sequence[int]) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        if not isinstance(feature_size, (list, tuple)):
            raise TypeError(f"feature_size must be [h, w] of positive integers, got {type(feature_size).__name__}: "
                            f"{feature_size!r}")
        if len(feature_size) != 2:
            raise ValueError(f"feature_size must be [h, w] of positive integers, got {feature_size!r}")
        self.feature_size = (check_positive_int("feature_size[0]", feature_size[0]),
                             check_positive_int("feature_size[1]", feature_size[1]))
        self.conv = nn.Conv2d(in_channels, in_channels, self.feature_size, groups=in_channels, bias=False)
        self.norm = nn.BatchNorm2d(in_channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        _check_map("gdc", features)
        if tuple(features.shape[2:]) != self.feature_size:
            raise ValueError(f"gdc pooling was built for {self.feature_size[0]}x{self.feature_size[1]} feature "
                             f"maps, got {features.shape[2]}x{features.shape[3]}: use the image_size the model "
                             f"was built with")
        return self.norm(self.conv(features)).flatten(1)


@register("pooling", "identity", example={})
class IdentityPooling(Pooling):
    """No pooling, for backbones that already output vectors (B, F)."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 2:
            raise ValueError(f"identity pooling expects vectors (B, F), got shape {tuple(features.shape)}; "
                             f"choose a pooling such as 'avg' for feature maps")
        return features
