"""Test-time embedding for landmarks: multi-scale embedding through ``Embedder.encode`` and PCA whitening
learnt on the index embeddings."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from deepmetric.io import load_weights, save_weights
from deepmetric.models.embedder import Embedder
from deepmetric.validation import check_embeddings, check_non_negative_float, check_positive_float, check_positive_int

#: The scales of the 2019-2020 Google Landmarks solutions (and of Radenovic et al.'s multi-scale GeM).
DEFAULT_SCALES = (1 / math.sqrt(2), 1.0, math.sqrt(2))


def at_scale(embedder: Embedder, scale: float) -> Embedder:
    """The same network (weights shared, nothing copied) whose preprocessing resizes images to ``scale`` times
    the trained input size, so ``Embedder.encode`` embeds at that scale. Needs a global pooling (avg, max,
    GeM): a model whose pooling keeps the spatial layout only takes its trained size."""
    scale = check_positive_float("scale", scale)
    preprocessing = embedder.preprocessing
    if preprocessing is None or embedder.input_kind != "image":
        raise ValueError("multi-scale embedding needs an image model with a preprocessing section")
    if scale == 1.0:
        return embedder
    scaled = copy.copy(embedder)  # a shallow copy shares the sub-modules, hence the weights
    size = [max(8, int(round(side * scale))) for side in preprocessing["image_size"]]
    scaled.config = {**embedder.config, "preprocessing": {**preprocessing, "image_size": size}}
    scaled.__dict__.pop("_eval_transform", None)  # the cached resize of the original size
    return scaled


class RawImages(Sequence):
    """A data set's stored images (``raw_image(i)``, uint8), so ``Embedder.encode`` resizes them itself."""

    def __init__(self, dataset: Any, positions: Sequence[int] | np.ndarray | None = None) -> None:
        if not hasattr(dataset, "raw_image"):
            raise TypeError(f"{type(dataset).__name__} has no raw_image(i); pass a list of images or paths instead")
        self.dataset = dataset
        self.positions = np.arange(len(dataset)) if positions is None else np.asarray(positions, np.int64)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.dataset.raw_image(int(self.positions[index]))


def multiscale_encode(embedder: Embedder, images: Any, *, scales: Sequence[float] = DEFAULT_SCALES,
                      batch_size: int = 256, progress: bool = False) -> np.ndarray:
    r"""Embed ``images`` at several scales and average: :math:`e = \mathrm{normalise}(\sum_s f(\mathrm{resize}_s(x)))`
    (the multi-scale descriptor of Radenovic et al. 2018, "Fine-tuning CNN Image Retrieval with No Human
    Annotation", used by the Google Landmarks 2019-2020 winners with scales 1/sqrt(2), 1, sqrt(2)).

    Args:
        embedder: an image ``Embedder`` with a global pooling.
        images: what ``Embedder.encode`` takes (uint8 arrays, paths, PIL images) or a ``RawImages``.
        scales: resize factors of the trained input size; ``(1.0,)`` is plain ``encode``.

    Returns:
        float32 (N, embedding_dim), unit rows.
    """
    if not scales:
        raise ValueError("scales must name at least one scale, e.g. (0.707, 1.0, 1.414)")
    total = None
    for scale in scales:
        try:
            part = at_scale(embedder, scale).encode(images, batch_size=batch_size, progress=progress)
        except RuntimeError as error:
            raise ValueError(f"the model cannot embed at scale {scale:g} ({error}); multi-scale needs a global "
                             f"pooling such as gem or avg") from error
        total = part.astype(np.float64) if total is None else total + part
    norms = np.linalg.norm(total, axis=1, keepdims=True)
    return (total / np.maximum(norms, 1e-12)).astype(np.float32)


class PCAWhitening:
    r"""PCA whitening learnt on the index embeddings (Jegou & Chum 2012, "Negative evidences and
    co-occurrences in image retrieval"; the unsupervised whitening of Radenovic et al. 2018):

    .. math:: \hat x = \mathrm{normalise}\big(\Lambda_d^{-1/2} U_d^\top (x - \mu)\big), \qquad
              \Sigma = \frac{1}{N}\sum_i (x_i - \mu)(x_i - \mu)^\top = U \Lambda U^\top

    keeping the ``dim`` leading eigenvectors; ``shrinkage`` adds that share of the mean eigenvalue to every
    eigenvalue before the inverse square root (regularises directions with almost no variance).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> x = rng.normal(size=(500, 4)) * [5.0, 1.0, 0.5, 0.1]
        >>> white = PCAWhitening().fit(x)
        >>> z = (x - white.mean) @ white.projection.T  # before the final normalisation
        >>> np.allclose(np.cov(z.T, bias=True), np.eye(4), atol=1e-6)
        True
    """

    def __init__(self, *, dim: int | None = None, shrinkage: float = 0.0) -> None:
        self.dim = check_positive_int("dim", dim, allow_none=True)
        self.shrinkage = check_non_negative_float("shrinkage", shrinkage)
        self.mean: np.ndarray | None = None
        self.projection: np.ndarray | None = None

    def fit(self, embeddings: Any) -> PCAWhitening:
        x = np.asarray(check_embeddings("embeddings", embeddings), np.float64)
        if len(x) < 2:
            raise ValueError(f"whitening needs at least 2 embeddings to learn from, got {len(x)}")
        dim = x.shape[1] if self.dim is None else self.dim
        if dim > x.shape[1]:
            raise ValueError(f"dim={dim} is more than the embedding dimension {x.shape[1]}")
        mean = x.mean(axis=0)
        covariance = (x - mean).T @ (x - mean) / len(x)
        values, vectors = np.linalg.eigh(covariance)
        order = np.argsort(values)[::-1][:dim]
        values, vectors = values[order], vectors[:, order]
        values = np.maximum(values, 0) + self.shrinkage * max(float(values.mean()), 0.0)
        if (values <= 1e-12 * max(float(values.max()), 1e-300)).any():
            raise ValueError(f"the embeddings span fewer than {dim} directions; lower dim or add shrinkage")
        self.mean = mean
        self.projection = vectors.T / np.sqrt(values)[:, None]
        return self

    @property
    def fitted(self) -> bool:
        return self.projection is not None

    def transform(self, embeddings: Any) -> np.ndarray:
        """Whitened, unit-length rows (N, dim)."""
        if self.projection is None or self.mean is None:
            raise ValueError("PCAWhitening.transform before fit: fit it on the index embeddings first")
        x = np.asarray(check_embeddings("embeddings", embeddings, dim=self.projection.shape[1]), np.float64)
        z = (x - self.mean) @ self.projection.T
        return (z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def save(self, path: str | os.PathLike) -> None:
        if self.projection is None or self.mean is None:
            raise ValueError("cannot save a whitening that was never fitted")
        save_weights(path, {"mean": torch.from_numpy(self.mean), "projection": torch.from_numpy(self.projection)},
                     metadata={"format": "deepmetric-pca-whitening", "shrinkage": str(self.shrinkage)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> PCAWhitening:
        tensors = load_weights(path)
        if set(tensors) != {"mean", "projection"}:
            raise ValueError(f"{path}: not a whitening file (tensors {sorted(tensors)})")
        white = cls(dim=int(tensors["projection"].shape[0]))
        white.mean = tensors["mean"].numpy().astype(np.float64)
        white.projection = tensors["projection"].numpy().astype(np.float64)
        return white
