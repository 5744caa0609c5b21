"""A short demonstration of the loss library, used as the main job until the training pipeline lands."""

from __future__ import annotations

import torch

from deepmetric import registry


def run_demo() -> None:
    torch.manual_seed(0)
    embeddings = torch.randn(32, 16, requires_grad=True)
    labels = torch.arange(8).repeat_interleave(4)
    print(f"{'loss':<28} value")
    for name in registry.names("loss"):
        loss = registry.build({"name": name, "args": registry.example("loss", name)},
                              embedding_dim=16, num_classes=8)
        value = loss(embeddings, labels)
        value.backward()
        print(f"{name:<28} {value.item():.4f}")
