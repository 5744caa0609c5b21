"""Brute-force references for the miners: plain Python loops over a numpy distance table, written
independently of the package (no masks, no sorting tricks)."""

from __future__ import annotations

import numpy as np
import torch

# "raw_euclidean": Euclidean distance without normalising the embeddings (the miners' generic path).
DISTANCES = ("euclidean", "squared_euclidean", "cosine", "dot", "raw_euclidean")


def build_distance(name: str):
    from deepmetric.distances import EuclideanDistance, get_distance

    return EuclideanDistance(normalize_embeddings=False) if name == "raw_euclidean" else get_distance(name)


def table(name: str, embeddings: torch.Tensor, ref_embeddings: torch.Tensor | None = None) -> np.ndarray:
    """(B, R) values of the named distance / similarity, computed pair by pair."""
    x = embeddings.double().numpy()
    y = x if ref_embeddings is None else ref_embeddings.double().numpy()
    if name not in ("dot", "raw_euclidean"):  # the package's defaults: dot is not normalised, the others are
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        y = y / np.linalg.norm(y, axis=1, keepdims=True)
    out = np.empty((len(x), len(y)))
    for i in range(len(x)):
        for j in range(len(y)):
            if name in ("euclidean", "raw_euclidean"):
                out[i, j] = np.sqrt(np.sum((x[i] - y[j]) ** 2))
            elif name == "squared_euclidean":
                out[i, j] = np.sum((x[i] - y[j]) ** 2)
            else:
                out[i, j] = np.dot(x[i], y[j])
    return out


def is_similarity(name: str) -> bool:
    return name in ("cosine", "dot")


def relations(labels: torch.Tensor, ref_labels: torch.Tensor | None = None):
    """Lists of positive and negative partners per anchor (self excluded when there is no ref set)."""
    a = labels.tolist()
    r = a if ref_labels is None else ref_labels.tolist()
    positives, negatives = [], []
    for i, label in enumerate(a):
        positives.append([j for j, other in enumerate(r) if other == label and (ref_labels is not None or j != i)])
        negatives.append([j for j, other in enumerate(r) if other != label])
    return positives, negatives


def harder(name: str, first: float, second: float) -> bool:
    """``first`` is a harder negative (closer) than ``second``."""
    return first > second if is_similarity(name) else first < second


def hardest(name, values, candidates, k, *, farthest):
    """Per anchor, the k hardest of its candidates by repeated selection: the farthest (positives) or the
    closest (negatives)."""
    out = []
    for row, options in zip(values, candidates):
        remaining, chosen = list(options), []
        while remaining and len(chosen) < k:
            best = remaining[0]
            for c in remaining[1:]:
                if (harder(name, row[best], row[c]) if farthest else harder(name, row[c], row[best])):
                    best = c
            chosen.append(best)
            remaining.remove(best)
        out.append(chosen)
    return out


def semi_hard(name, values, positives, negatives, margin, fallback):
    """FaceNet semi-hard triplets, one per positive pair, by scanning all negatives."""
    triplets = set()
    for a, (pos, neg) in enumerate(zip(positives, negatives)):
        for p in pos:
            dap = values[a, p]
            best = None
            for n in neg:
                dan = values[a, n]
                inside = (dap > dan > dap - margin) if is_similarity(name) else (dap < dan < dap + margin)
                if inside and (best is None or harder(name, dan, values[a, best])):
                    best = n
            if best is None and fallback and neg:
                best = hardest(name, values[a:a + 1], [neg], 1, farthest=False)[0][0]
            if best is not None:
                triplets.add((a, p, best))
    return triplets


def triplet_set(triplets) -> set[tuple[int, int, int]]:
    return set(zip(triplets.anchor.tolist(), triplets.positive.tolist(), triplets.negative.tolist()))


def pair_sets(pairs) -> tuple[set, set]:
    return (set(zip(pairs.anchor_positive.tolist(), pairs.positive.tolist())),
            set(zip(pairs.anchor_negative.tolist(), pairs.negative.tolist())))
