"""Shared by the service tests: the base URL a test client uses (the service answers loopback Host names only,
against DNS rebinding), a small whole-image model's config, random PNGs, and a model that holds its encode."""

from __future__ import annotations

import io
import threading

import numpy as np

LOCAL = "http://localhost"
#: A whole-image model small enough to build in a test: the service decodes, the model embeds.
MODEL_CONFIG = {"backbone": {"name": "small_cnn", "args": {"width": 8}}, "embedding_dim": 16,
                "preprocessing": {"image_size": [32, 32], "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}}


def png(side: int, seed: int = 0) -> bytes:
    """A ``side`` x ``side`` PNG of random colours."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


class GatedModel:
    """A real whole-image model whose ``encode`` says when it starts, then waits to be let go (or raises)."""

    def __init__(self, model, *, crash: bool = False) -> None:
        self.model, self.embedding_dim, self.config = model, model.embedding_dim, model.config
        self.entered, self.release, self.crash = threading.Event(), threading.Event(), crash

    def encode(self, inputs, *, batch_size=256, device=None, progress=False):
        if self.crash:
            raise RuntimeError("the model fell over")
        self.entered.set()
        if not self.release.wait(timeout=60):
            raise RuntimeError("never released")
        return self.model.encode(inputs, batch_size=batch_size, device=device, progress=progress)
