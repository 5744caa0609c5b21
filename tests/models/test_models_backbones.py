import pytest
import torch

from deepmetric import registry
from deepmetric.models import build_embedder
from deepmetric.models.pooling import GeMPooling

SMALL = {"image_size": [32, 32], "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}


def preprocessing_for(name, args):
    if registry.get(name, "backbone").input_kind == "vector":
        return None
    # 32 px keeps the test fast; face networks run at their native 112 px in the shape test below.
    return {**SMALL, "channels": args.get("in_channels", 3), "mean": [0.5] * args.get("in_channels", 3),
            "std": [0.5] * args.get("in_channels", 3)}


@pytest.mark.parametrize("name", registry.names("backbone"))
def test_every_backbone_embeds_to_unit_vectors(name):
    args = registry.example("backbone", name)
    pre = preprocessing_for(name, args)
    model = build_embedder({"backbone": {"name": name, "args": args}, "embedding_dim": 12, "preprocessing": pre})
    inputs = torch.randn(3, args["input_dim"]) if pre is None else torch.randn(3, pre["channels"], *pre["image_size"])
    model.train()
    out = model(inputs)
    assert out.shape == (3, 12)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name, size, channels, spatial", [
    ("small_cnn", 28, 32 * 4, 3), ("small_cnn", 64, 32 * 4, 8),
    ("resnet18", 224, 512, 7), ("resnet50", 64, 2048, 2),
    ("iresnet50", 112, 512, 7), ("mobilefacenet", 112, 512, 7),
])
def test_feature_map_shapes_at_full_width(name, size, channels, spatial):
    backbone = registry.build({"name": name, "args": {"in_channels": 1 if name == "small_cnn" else 3}}, "backbone")
    backbone.eval()
    with torch.no_grad():
        out = backbone(torch.zeros(1, backbone_in(backbone), size, size))
    assert out.shape == (1, channels, spatial, spatial) and backbone.out_channels == channels


def backbone_in(backbone):
    first_conv = next(m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d))
    return first_conv.in_channels


def test_resnet_parameter_counts_match_the_paper_architectures():
    # torchvision's ResNet-18/50 have 11,176,512 / 23,508,032 parameters without the classifier.
    counts = {n: sum(p.numel() for p in registry.build({"name": n}, "backbone").parameters())
              for n in ("resnet18", "resnet50")}
    assert counts == {"resnet18": 11_176_512, "resnet50": 23_508_032}


def test_gem_matches_its_formula_and_limits():
    features = torch.rand(2, 3, 4, 5) + 0.1
    gem = GeMPooling(p=3.0, learnable=False)
    expected = (features ** 3).mean(dim=(2, 3)) ** (1 / 3)
    torch.testing.assert_close(gem(features), expected)
    torch.testing.assert_close(GeMPooling(p=1.0)(features), features.mean(dim=(2, 3)))
    assert torch.allclose(GeMPooling(p=200.0)(features), features.amax(dim=(2, 3)), rtol=0.05)


def test_gem_gradcheck():
    features = (torch.rand(2, 2, 3, 3, dtype=torch.float64) + 0.1).requires_grad_()
    gem = GeMPooling(p=2.5).double()
    assert torch.autograd.gradcheck(gem, (features,))


def test_pooling_shape_errors_are_clear():
    with pytest.raises(ValueError, match="identity"):
        registry.build({"name": "avg"}, "pooling")(torch.zeros(2, 5))
    gdc = registry.build({"name": "gdc", "args": {"in_channels": 4, "feature_size": [3, 3]}}, "pooling")
    with pytest.raises(ValueError, match="built for 3x3"):
        gdc(torch.zeros(2, 4, 5, 5))


def test_mlp_is_identity_without_hidden_layers_so_neck_is_a_linear_metric():
    model = build_embedder({"backbone": {"name": "mlp", "args": {"input_dim": 5}}, "embedding_dim": 3,
                            "neck": {"batch_norm": False}})
    vectors = torch.randn(4, 5)
    weight = model.neck.linear.weight
    expected = torch.nn.functional.normalize(vectors @ weight.T + model.neck.linear.bias, dim=1)
    torch.testing.assert_close(model(vectors), expected)
    with pytest.raises(ValueError, match=r"^vectors must be a matrix of shape \(N, 5\), got shape \(4, 6\)$"):
        model(torch.randn(4, 6))


@pytest.mark.skipif("timm" not in registry.names("backbone"), reason="timm extra not installed")
def test_timm_adapter():
    model = build_embedder({"backbone": {"name": "timm", "args": registry.example("backbone", "timm")},
                            "embedding_dim": 8, "preprocessing": SMALL})
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 8)


@pytest.mark.parametrize("name, head, published", [
    # insightface arcface_torch model zoo: r50 43.6M, r100 65.2M. Head: flatten 512x7x7 -> linear 512 -> BN.
    ("iresnet50", 512 * 49 * 512 + 2 * 512, 43.6e6),
    ("iresnet100", 512 * 49 * 512 + 2 * 512, 65.2e6),
    # Chen et al. 2018, Table 2: 0.99M. Head: GDC 7x7 depthwise + BN, linear 512 -> 128 + BN.
    ("mobilefacenet", 512 * 49 + 2 * 512 + 512 * 128 + 2 * 128, 0.99e6),
])
def test_face_networks_have_their_published_sizes(name, head, published):
    backbone = registry.build({"name": name}, "backbone")
    count = sum(p.numel() for p in backbone.parameters()) + head
    assert abs(count - published) / published < 0.015, count


def test_face_head_sizes_used_above_match_the_built_embedder():
    model = build_embedder({"backbone": {"name": "mobilefacenet", "args": {"width_multiplier": 0.25}},
                            "embedding_dim": 128, "preprocessing": {**SMALL, "image_size": [112, 112]}})
    head = sum(p.numel() for p in model.pooling.parameters()) + sum(p.numel() for p in model.neck.parameters())
    channels = model.backbone.out_channels
    assert head == channels * 49 + 2 * channels + channels * 128 + 2 * 128
