"""Helpers shared by the gallery tests."""

from __future__ import annotations

import io

import numpy as np
import torch


class PixelProjectionModel(torch.nn.Module):
    """A real (tiny) whole-image embedding model for gallery tests: 8 x 8 grayscale pixels -> linear -> L2.
    Different seeds give different weights, hence different fingerprints."""

    def __init__(self, *, embedding_dim: int = 6, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.projection = torch.nn.Linear(64, embedding_dim, bias=False)
        with torch.no_grad():
            self.projection.weight.copy_(torch.randn(embedding_dim, 64, generator=generator))
        self.embedding_dim = embedding_dim
        self.config = {"name": "pixel_projection", "embedding_dim": embedding_dim,
                       "calibration": {"metric": "cosine", "threshold": 0.8}}

    def encode(self, inputs, **_: object) -> np.ndarray:
        from PIL import Image

        from deepmetric.data.images import load_image

        rows = [np.asarray(Image.fromarray(load_image(image)).convert("L").resize((8, 8)), dtype=np.float32)
                .reshape(-1) / 255.0 - 0.5 for image in inputs]
        with torch.no_grad():
            out = torch.nn.functional.normalize(self.projection(torch.from_numpy(np.stack(rows))), dim=1)
        return out.numpy()


def png_bytes(seed: int, size: int = 16) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def random_unit(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    vectors = rng.normal(size=(count, dim))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
