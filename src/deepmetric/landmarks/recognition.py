"""Landmark recognition: one (label, confidence) per query from its nearest index images, by similarity-
weighted kNN voting, with the confidence lowered for queries that look like known non-landmarks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepmetric.index import build_index
from deepmetric.index.topk import as_embeddings, as_labels
from deepmetric.types import SearchResult
from deepmetric.validation import check_bool, check_non_negative_float, check_positive_int

#: The label of "no landmark", in predictions and in ground truth.
NON_LANDMARK = -1


@dataclass(frozen=True)
class Recognition:
    """Per query the predicted landmark (``NON_LANDMARK``: none) and its confidence (higher = surer); the
    neighbours behind them are kept for inspection (grids, error analysis)."""

    labels: np.ndarray
    confidences: np.ndarray
    neighbours: SearchResult

    def predictions(self, query_ids) -> dict[str, tuple[int, float] | None]:
        """``{query id: (landmark, confidence) or None}``: what a GLDv2 submission file holds."""
        return {str(key): None if label == NON_LANDMARK else (int(label), float(conf))
                for key, label, conf in zip(query_ids, self.labels.tolist(), self.confidences.tolist())}


def vote(neighbour_labels: np.ndarray, neighbour_scores: np.ndarray, *, k: int, power: float = 1.0
         ) -> tuple[np.ndarray, np.ndarray]:
    r"""Similarity-weighted kNN voting: over a query's ``k`` nearest index images (labels :math:`y_i`, similarities
    :math:`s_i`), each label scores

    .. math:: v(l) = \frac{1}{k}\sum_{i \le k} [y_i = l] \max(s_i, 0)^{p},

    and the query predicts :math:`\arg\max_l v(l)` with confidence :math:`\max_l v(l)` (ties: the label met
    first in the ranking). Missing neighbours (label -1 or id -1 lists) vote for nothing. With ``k = 1`` this
    is the nearest neighbour's label and similarity. (The kNN step of the Google Landmark Recognition 2019-2020
    winning solutions, e.g. Henkel & Singer 2020.)

    Args:
        neighbour_labels: (Q, >= k) labels of the ranked neighbours (-1: none).
        neighbour_scores: (Q, >= k) their similarities.
        k: neighbours that vote; power: ``p``.

    Example:
        >>> labels = np.array([[3, 5, 5]]); scores = np.array([[0.9, 0.8, 0.7]])
        >>> vote(labels, scores, k=3)  # label 5: (0.8 + 0.7) / 3 beats label 3: 0.9 / 3
        (array([5]), array([0.5]))
    """
    k = check_positive_int("k", k)
    power = check_non_negative_float("power", power)
    labels, scores = np.asarray(neighbour_labels)[:, :k], np.asarray(neighbour_scores, np.float64)[:, :k]
    if labels.shape != scores.shape:
        raise ValueError(f"neighbour_labels {labels.shape} and neighbour_scores {scores.shape} must match")
    weights = np.where(labels >= 0, np.maximum(np.nan_to_num(scores, neginf=0.0), 0.0) ** power, 0.0)
    # per row: the summed weight of each position's label, by comparing every pair of positions (k is small)
    same = labels[:, :, None] == labels[:, None, :]
    totals = (same * weights[:, None, :]).sum(axis=2)
    best = np.argmax(totals, axis=1)  # first position reaching the maximum: the label met first
    rows = np.arange(len(labels))
    predicted = np.where(totals[rows, best] > 0, labels[rows, best], NON_LANDMARK)
    return predicted.astype(np.int64), totals[rows, best] / k


def non_landmark_penalty(distractor_scores: np.ndarray, *, k: int, power: float = 1.0) -> np.ndarray:
    r"""How much a query resembles the known non-landmarks: the mean of :math:`\max(d_j, 0)^p` over its ``k`` most
    similar distractors (similarities :math:`d_j`), in the same units as ``vote``'s confidence.

    Example:
        >>> non_landmark_penalty(np.array([[0.8, 0.4, 0.1]]), k=2)
        array([0.6])
    """
    k = check_positive_int("k", k)
    scores = np.asarray(distractor_scores, np.float64)[:, :k]
    return (np.maximum(np.nan_to_num(scores, neginf=0.0), 0.0) ** check_non_negative_float("power", power)).mean(1)


class Recognizer:
    r"""kNN landmark recognition over an index set, each stage switchable:

    - ``voting=False``: the nearest index image's label, its similarity as confidence (plain top-1);
    - ``voting=True``: ``vote`` over the ``k`` nearest (similarity-weighted, exponent ``power``);
    - ``suppression=True``: confidence :math:`c' = c - w \cdot \mathrm{penalty}(q)` with ``non_landmark_penalty``
      over the ``suppression_k`` nearest distractors (known non-landmark images) and ``w`` =
      ``suppression_weight``, so queries that look like non-landmarks sink to the end of the GAP ranking.

    Neighbours come from ``deepmetric.index.build_index(spec)`` (``"Flat"``: the exact top-k engine).

    Example:
        >>> index = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0]], np.float32)
        >>> recognizer = Recognizer(index, [7, 7, 8], k=2)
        >>> recognizer.recognize(np.array([[1, 0.05, 0]], np.float32)).labels
        array([7])
    """

    def __init__(self, index_embeddings, index_labels, *, distractor_embeddings=None, k: int = 5,
                 voting: bool = True, power: float = 1.0, suppression: bool = False, suppression_k: int = 5,
                 suppression_weight: float = 1.0, metric: str = "cosine", spec: str = "Flat") -> None:
        index_embeddings = as_embeddings("index_embeddings", index_embeddings)
        self.index_labels = as_labels("index_labels", index_labels, len(index_embeddings))
        self.k = check_positive_int("k", k)
        self.voting = check_bool("voting", voting)
        self.power = check_non_negative_float("power", power)
        self.suppression = check_bool("suppression", suppression)
        self.suppression_k = check_positive_int("suppression_k", suppression_k)
        self.suppression_weight = check_non_negative_float("suppression_weight", suppression_weight)
        self.index = build_index(spec, index_embeddings.shape[1], metric)
        self.index.add(index_embeddings)
        self.distractors = None
        if self.suppression:
            if distractor_embeddings is None or len(distractor_embeddings) == 0:
                raise ValueError("suppression=True needs distractor_embeddings (known non-landmark images)")
            distractor_embeddings = as_embeddings("distractor_embeddings", distractor_embeddings,
                                                  dim=index_embeddings.shape[1])
            self.distractors = build_index(spec, index_embeddings.shape[1], metric)
            self.distractors.add(distractor_embeddings)

    def recognize(self, query_embeddings) -> Recognition:
        queries = as_embeddings("query_embeddings", query_embeddings, dim=self.index.dim)
        k = self.k if self.voting else 1
        found = self.index.search(queries, min(k, len(self.index)))
        labels = np.where(found.ids >= 0, self.index_labels[np.maximum(found.ids, 0)], NON_LANDMARK)
        if self.voting:
            predicted, confidence = vote(labels, found.scores, k=k, power=self.power)
        else:
            predicted = labels[:, 0].astype(np.int64)
            confidence = found.scores[:, 0].astype(np.float64)
        if self.suppression and self.distractors is not None:
            near = self.distractors.search(queries, min(self.suppression_k, len(self.distractors)))
            confidence = confidence - self.suppression_weight * non_landmark_penalty(
                near.scores, k=self.suppression_k, power=self.power if self.voting else 1.0)
        return Recognition(predicted, confidence, found)
