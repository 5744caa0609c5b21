"""Backbones: networks that map an input batch to a feature map (B, C, h, w) (images) or features (B, F)
(vectors). Pooling and the embedding neck come after (see ``deepmetric.models.embedder``).

Every backbone sets ``default_pooling`` (the pooling its architecture was designed with) and
``input_kind`` (``"image"`` or ``"vector"``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import torch
from torch import nn

from deepmetric.registry import register
from deepmetric.validation import check_embeddings, check_in_range, check_positive_float, check_positive_int


def _conv_bn(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, groups: int = 1,
             activation: type[nn.Module] | None = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups,
                                         bias=False), nn.BatchNorm2d(out_channels)]
    if activation is nn.PReLU:
        layers.append(nn.PReLU(out_channels))
    elif activation is not None:
        layers.append(activation(inplace=True))
    return nn.Sequential(*layers)


class Backbone(nn.Module):
    default_pooling = "avg"
    input_kind = "image"


@register("backbone", "small_cnn", example={"in_channels": 1, "width": 8})
class SmallCNN(Backbone):
    """A VGG-style CNN for 28-64 px images: ``stages`` blocks of two 3x3 conv-BN-ReLU layers, each block
    followed by 2x2 max pooling and doubling the width. Output (B, width * 2^(stages-1), H / 2^stages, ...).

    Args:
        in_channels: 1 (grey) or 3 (RGB).
        width: channels of the first block.
        stages: number of blocks (3 for 28-32 px, 4 for 64 px).
    """

    def __init__(self, *, in_channels: int = 1, width: int = 32, stages: int = 3) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("width", width)
        check_positive_int("stages", stages)
        layers: list[nn.Module] = []
        channels = in_channels
        for stage in range(stages):
            out = width * 2 ** stage
            layers += [_conv_bn(channels, out), _conv_bn(out, out), nn.MaxPool2d(2)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(in_channels, channels, 3, stride),
                                  _conv_bn(channels, channels, 3, 1, activation=None))
        self.shortcut = _shortcut(in_channels, channels, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        out = channels * self.expansion
        # Stride on the 3x3 convolution ("ResNet v1.5"), which is the common torch variant.
        self.body = nn.Sequential(_conv_bn(in_channels, channels, 1), _conv_bn(channels, channels, 3, stride),
                                  _conv_bn(channels, out, 1, activation=None))
        self.shortcut = _shortcut(in_channels, out, stride)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return _conv_bn(in_channels, out_channels, 1, stride, activation=None)


class ResNet(Backbone):
    """ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), without the classifier.

    Args:
        in_channels: input channels.
        small_input: replace the 7x7/2 stem and max pooling by a 3x3/1 stem, for 28-64 px images.
        width: channels of the first stage (64 in the paper).
    """

    block: type[nn.Module] = _BasicBlock
    layers: tuple[int, ...] = (2, 2, 2, 2)

    def __init__(self, *, in_channels: int = 3, small_input: bool = False, width: int = 64) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("width", width)
        if small_input:
            self.stem = _conv_bn(in_channels, width, 3, 1)
        else:
            self.stem = nn.Sequential(_conv_bn(in_channels, width, 7, 2), nn.MaxPool2d(3, 2, 1))
        stages: list[nn.Module] = []
        channels = width
        for index, blocks in enumerate(self.layers):
            out = width * 2 ** index
            for block_index in range(blocks):
                stride = 2 if index > 0 and block_index == 0 else 1
                stages.append(self.block(channels, out, stride))
                channels = out * self.block.expansion
        self.stages = nn.Sequential(*stages)
        self.out_channels = channels
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(images))


@register("backbone", "resnet18", example={"in_channels": 3, "small_input": True, "width": 8})
class ResNet18(ResNet):
    __doc__ = ResNet.__doc__
    layers = (2, 2, 2, 2)


@register("backbone", "resnet34", example={"in_channels": 3, "small_input": True, "width": 8})
class ResNet34(ResNet):
    __doc__ = ResNet.__doc__
    layers = (3, 4, 6, 3)


@register("backbone", "resnet50", example={"in_channels": 3, "small_input": True, "width": 8})
class ResNet50(ResNet):
    __doc__ = ResNet.__doc__
    block = _Bottleneck
    layers = (3, 4, 6, 3)


class _IBasicBlock(nn.Module):
    """BN-conv-BN-PReLU-conv-BN with an identity (or 1x1 conv) shortcut, as in ArcFace's IResNet."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_channels, eps=1e-5),
            nn.Conv2d(in_channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels, eps=1e-5),
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, 3, stride, 1, bias=False), nn.BatchNorm2d(channels, eps=1e-5))
        self.shortcut = _shortcut(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class IResNet(Backbone):
    """Improved ResNet for face recognition (Deng et al., "ArcFace", CVPR 2019; Duta et al. 2020): a 3x3
    stem with PReLU, pre-activation blocks, every stage downsampling, and a final BatchNorm. At 112x112
    input it gives a 7x7x512 map, which the insightface recipe flattens (pooling ``"flatten"``) into
    dropout, a linear layer and BatchNorm (the neck).

    Args:
        in_channels: input channels (3).
        width: channels of the first stage (64).
    """

    default_pooling = "flatten"
    layers: tuple[int, ...] = (3, 4, 14, 3)

    def __init__(self, *, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("width", width)
        self.stem = _conv_bn(in_channels, width, 3, 1, activation=nn.PReLU)
        blocks: list[nn.Module] = []
        channels = width
        for index, count in enumerate(self.layers):
            out = width * 2 ** index
            for block_index in range(count):
                blocks.append(_IBasicBlock(channels, out, 2 if block_index == 0 else 1))
                channels = out
        self.stages = nn.Sequential(*blocks)
        self.final_norm = nn.BatchNorm2d(channels, eps=1e-5)
        self.out_channels = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.final_norm(self.stages(self.stem(images)))


@register("backbone", "iresnet50", example={"in_channels": 3, "width": 8})
class IResNet50(IResNet):
    __doc__ = IResNet.__doc__
    layers = (3, 4, 14, 3)


@register("backbone", "iresnet100", example={"in_channels": 3, "width": 4})
class IResNet100(IResNet):
    __doc__ = IResNet.__doc__
    layers = (3, 13, 30, 3)


class _InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.body = nn.Sequential(
            _conv_bn(in_channels, hidden, 1, activation=nn.PReLU),
            _conv_bn(hidden, hidden, 3, stride, groups=hidden, activation=nn.PReLU),
            _conv_bn(hidden, out_channels, 1, activation=None))
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


@register("backbone", "mobilefacenet", example={"in_channels": 3, "width_multiplier": 0.25})
class MobileFaceNet(Backbone):
    """MobileFaceNet (Chen et al., "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification
    on Mobile Devices", 2018): a MobileNetV2-style network with PReLU, ending in a 1x1 conv to 512
    channels. The paper's head, a global depthwise convolution, is pooling ``"gdc"``; the final linear
    1x1 conv to 128 is the neck.

    Args:
        in_channels: input channels (3).
        width_multiplier: scales every layer's channels (1.0 is the paper's network).
    """

    default_pooling = "gdc"
    # (expansion, channels, repeats, stride) as in Table 1 of the paper.
    settings = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))

    def __init__(self, *, in_channels: int = 3, width_multiplier: float = 1.0) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_float("width_multiplier", width_multiplier)

        def scaled(channels: int) -> int:
            return max(8, int(round(channels * width_multiplier)))

        first = scaled(64)
        layers: list[nn.Module] = [_conv_bn(in_channels, first, 3, 2, activation=nn.PReLU),
                                   _conv_bn(first, first, 3, 1, groups=first, activation=nn.PReLU)]
        channels = first
        for expansion, out, repeats, stride in self.settings:
            out = scaled(out)
            for index in range(repeats):
                layers.append(_InvertedResidual(channels, out, stride if index == 0 else 1, expansion))
                channels = out
        last = scaled(512)
        layers.append(_conv_bn(channels, last, 1, activation=nn.PReLU))
        self.features = nn.Sequential(*layers)
        self.out_channels = last

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


@register("backbone", "mlp", example={"input_dim": 6, "hidden_dims": [8]})
class MLP(Backbone):
    r"""A multi-layer perceptron for fixed feature vectors (B, input_dim) -> (B, F).

    With ``hidden_dims=[]`` it is the identity and the embedding neck's linear layer ``L`` is the whole
    model: cosine similarity of ``Lx`` and ``Ly`` is the angular form of the Mahalanobis metric
    :math:`d_M(x, y)^2 = (x - y)^T M (x - y)` with :math:`M = L^T L` (Xing et al., "Distance metric learning
    with application to clustering with side-information", NIPS 2002), learned by any loss.

    Args:
        input_dim: length of the input vectors.
        hidden_dims: sizes of the hidden layers (Linear-BatchNorm-ReLU each).
        dropout: dropout before each hidden linear layer.
    """

    default_pooling = "identity"
    input_kind = "vector"

    def __init__(self, *, input_dim: int, hidden_dims: Sequence[int] = (), dropout: float = 0.0) -> None:
        super().__init__()
        check_positive_int("input_dim", input_dim)
        check_in_range("dropout", dropout, 0, 1, high_inclusive=False)
        layers: list[nn.Module] = []
        width = input_dim
        for hidden in hidden_dims:
            check_positive_int("hidden_dims entry", hidden)
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            layers += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            width = hidden
        self.layers = nn.Sequential(*layers)
        self.input_dim = input_dim
        self.out_channels = width

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        check_embeddings("vectors", vectors, dim=self.input_dim, finite=False, require_tensor=True)
        return self.layers(vectors)


def _timm_installed() -> bool:
    return importlib.util.find_spec("timm") is not None


class TimmBackbone(Backbone):
    """Any timm model (``timm.list_models()``) as a backbone, randomly initialised: weights are never
    downloaded; train it, or load a deepmetric model folder. Output is timm's unpooled feature map.

    Args:
        model_name: a timm architecture name, e.g. ``"resnet18"`` or ``"convnext_atto"``.
        in_channels: input channels.
    """

    def __init__(self, *, model_name: str, in_channels: int = 3) -> None:
        super().__init__()
        import timm

        if model_name not in timm.list_models():
            raise ValueError(f"timm has no model {model_name!r}; see timm.list_models()")
        self.model = timm.create_model(model_name, pretrained=False, num_classes=0, global_pool="",
                                       in_chans=in_channels)
        self.out_channels = int(self.model.num_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(images)


if _timm_installed():  # only offered when the optional extra is installed
    register("backbone", "timm", example={"model_name": "resnet10t", "in_channels": 3})(TimmBackbone)
