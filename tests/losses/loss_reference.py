"""Independent references for the loss tests: plain numpy/python loops over explicit tuples."""

from __future__ import annotations

import numpy as np
import torch


def pk_batch(num_classes: int = 4, per_class: int = 3, dim: int = 5, *, seed: int = 0,
             dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(num_classes * per_class, dim, generator=generator, dtype=dtype)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return embeddings, labels


def normalized(x: torch.Tensor) -> np.ndarray:
    x = x.detach().double().numpy()
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def euclidean(x: torch.Tensor, y: torch.Tensor | None = None) -> np.ndarray:
    """(N, M) Euclidean distances of L2-normalised rows, by a double loop."""
    a = normalized(x)
    b = a if y is None else normalized(y)
    return np.array([[np.sqrt(((a[i] - b[j]) ** 2).sum()) for j in range(len(b))] for i in range(len(a))])


def cosine(x: torch.Tensor, y: torch.Tensor | None = None) -> np.ndarray:
    a = normalized(x)
    b = a if y is None else normalized(y)
    return np.array([[float(a[i] @ b[j]) for j in range(len(b))] for i in range(len(a))])


def pairs(labels, ref_labels=None):
    """Ordered positive and negative pairs (a, j); the batch never pairs an item with itself."""
    same_set = ref_labels is None
    ref = labels if same_set else ref_labels
    positives, negatives = [], []
    for a in range(len(labels)):
        for j in range(len(ref)):
            if same_set and a == j:
                continue
            (positives if int(labels[a]) == int(ref[j]) else negatives).append((a, j))
    return positives, negatives


def triplets(labels, ref_labels=None):
    positives, negatives = pairs(labels, ref_labels)
    return [(a, p, n) for a, p in positives for b, n in negatives if a == b]


def reduce(values, reduction: str) -> float:
    values = np.asarray(values, dtype=np.float64)
    if reduction == "sum":
        return float(values.sum())
    if reduction == "mean_nonzero":
        nonzero = values[values > 0]
        return float(nonzero.mean()) if nonzero.size else 0.0
    return float(values.mean()) if values.size else 0.0
