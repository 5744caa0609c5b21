"""Small models of every shipped backbone for the export tests: the smallest widths and inputs each architecture
allows while staying itself (IResNet-100 keeps all 49 blocks and downsamples 32 px to a valid 2x2 map)."""

from __future__ import annotations

import torch

from deepmetric.data.transforms import build_transforms
from deepmetric.deploy.parity import glyph_test_set
from deepmetric.models import build_embedder

GREY = {"image_size": [32, 32], "channels": 1, "mean": [0.5], "std": [0.5]}
COLOUR = {"image_size": [32, 32], "channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}

#: backbone name -> (backbone args, preprocessing); the test checks this covers every registered backbone.
SMALL_MODELS = {
    "small_cnn": ({"width": 4}, GREY),
    "resnet18": ({"width": 4, "small_input": True}, GREY),
    "resnet34": ({"width": 4, "small_input": True}, COLOUR),
    "resnet50": ({"width": 4, "small_input": True}, GREY),
    "iresnet50": ({"width": 4}, COLOUR),
    "iresnet100": ({"width": 4}, COLOUR),
    "mobilefacenet": ({"width_multiplier": 0.125}, COLOUR),
    "mlp": ({"input_dim": 12, "hidden_dims": [16]}, None),
    "timm": ({"model_name": "resnet10t"}, COLOUR),
}


def small_model(name: str, *, embedding_dim: int = 16, seed: int = 0):
    args, preprocessing = SMALL_MODELS[name]
    torch.manual_seed(seed)
    model = build_embedder({"backbone": {"name": name, "args": args}, "embedding_dim": embedding_dim,
                            "preprocessing": preprocessing})
    # BatchNorm statistics of real data, as a trained model has (not the identity of a fresh one), so the folded
    # graph is really exercised and the embeddings spread out instead of sharing one direction.
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a plain average over the batches below
    if preprocessing is None:
        batches = [torch.randn(64, args["input_dim"])]
    else:
        transform = build_transforms(preprocessing, train=False)
        images, _ = glyph_test_set(128)
        batches = [torch.stack([transform(image) for image in images[:128]])]
    model.train()
    with torch.no_grad():
        for batch in batches:
            model(batch)
    return model.eval()
