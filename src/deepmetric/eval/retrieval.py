r"""Retrieval metrics from exact (or ANN) neighbour lists: Recall@K, Precision@K, R-Precision, MAP@R, mAP,
mAP@K, the revisited Oxford/Paris protocol and Global Average Precision.

Conventions shared by every function here: when ``gallery_embeddings`` is None the query set is the
gallery and each query is removed from its own results (with a separate gallery, ``own_ids`` names the
gallery item that is the query itself, for rows that are both); the relevant items of a query are the
other gallery items with its label, ``R`` is their number; queries with ``R = 0`` have no defined value and are left
out of the averages (as in pytorch-metric-learning); ties in score are ranked by gallery index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepmetric.index.topk import as_embeddings, as_labels, knn
from deepmetric.types import SearchResult
from deepmetric.validation import check_positive_int


@dataclass(frozen=True)
class Neighbours:
    """Ranked neighbours of every query: ``ids`` (Q, k) gallery positions (-1 = none), ``scores`` (Q, k),
    ``matches`` (Q, k) bool (same label as the query) and ``num_relevant`` (Q,) = R."""

    ids: np.ndarray
    scores: np.ndarray
    matches: np.ndarray
    num_relevant: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """Queries with at least one relevant gallery item."""
        return self.num_relevant > 0


def relevant_counts(query_labels: np.ndarray, gallery_labels: np.ndarray, *, same_set: bool,
                    own_ids: np.ndarray | None = None) -> np.ndarray:
    """R per query: gallery items sharing its label, the query itself not counted (when the query set is the
    gallery, or where ``own_ids`` >= 0)."""
    values, counts = np.unique(gallery_labels, return_counts=True)
    pos = np.searchsorted(values, query_labels)
    pos = np.clip(pos, 0, max(len(values) - 1, 0))
    found = (values[pos] == query_labels) if len(values) else np.zeros(len(query_labels), bool)
    r = np.where(found, counts[pos] if len(values) else 0, 0).astype(np.int64)
    if same_set:
        return r - 1
    return r if own_ids is None else r - (own_ids >= 0)


def check_own_ids(own_ids, num_queries: int, num_gallery: int) -> np.ndarray:
    """``own_ids`` as an int64 array (Q,) of gallery positions or -1, or a ValueError naming what is wrong."""
    own = np.asarray(own_ids)
    if own.shape != (num_queries,) or not np.issubdtype(own.dtype, np.integer):
        raise ValueError(f"own_ids must be an integer array of shape ({num_queries},), one gallery position (or "
                         f"-1) per query, got {own.dtype} array of shape {own.shape}")
    if own.size and (own.min() < -1 or own.max() >= num_gallery):
        raise ValueError(f"own_ids must be -1 or a gallery position in [0, {num_gallery}), got values in "
                         f"[{own.min()}, {own.max()}]")
    return own.astype(np.int64, copy=False)


def drop_own(result: SearchResult, own_ids: np.ndarray) -> SearchResult:
    """``result`` with each query's own item (``own_ids[i]``, -1: none) taken out of its list: the later results
    move up one place and the freed last place holds id -1 and score -inf."""
    is_own = (result.ids == own_ids[:, None]) & (own_ids[:, None] >= 0)
    order = np.argsort(is_own, axis=1, kind="stable")
    ids = np.where(is_own, -1, result.ids)
    scores = np.where(is_own, -np.inf, result.scores).astype(np.float32, copy=False)
    return SearchResult(np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1))


def search_neighbours(
    query_embeddings,
    query_labels,
    gallery_embeddings=None,
    gallery_labels=None,
    *,
    k: int,
    metric: str = "cosine",
    index=None,
    own_ids=None,
    query_block_size: int = 1024,
    gallery_block_size: int = 65536,
    precision: str = "auto",
) -> Neighbours:
    """Top-``k`` neighbours with their label matches, exactly (blocked matmul) or through ``index``.
    ``precision``: the exact search's candidate pass (``deepmetric.index.topk.knn``; results do not depend on it).

    ``index`` is any object with ``search(queries, k) -> SearchResult`` holding the gallery under ids
    0..N-1 (e.g. a ``deepmetric.index`` VectorIndex). ``own_ids`` (Q,), with a separate gallery: the
    gallery position of each query's own item (-1: none), for data sets whose rows may be both query and
    gallery; a query never matches its own item, and it is not counted in its R. When the queries are the
    gallery, or some have an own item, ``k + 1`` results are asked for and each query's own id is dropped.
    """
    queries = as_embeddings("query_embeddings", query_embeddings)
    query_labels = as_labels("query_labels", query_labels, len(queries))
    same_set = gallery_embeddings is None
    if same_set:
        if gallery_labels is not None:
            raise ValueError("gallery_labels given without gallery_embeddings; pass both or neither")
        gallery, gallery_labels = queries, query_labels
    else:
        if gallery_labels is None:
            raise ValueError("gallery_embeddings given without gallery_labels; pass both or neither")
        gallery = as_embeddings("gallery_embeddings", gallery_embeddings, dim=queries.shape[1])
        gallery_labels = as_labels("gallery_labels", gallery_labels, len(gallery))
    if own_ids is not None:
        if same_set:
            raise ValueError("own_ids needs gallery_embeddings: without a gallery every query is its own item")
        own_ids = check_own_ids(own_ids, len(queries), len(gallery))
    own = np.arange(len(queries)) if same_set else own_ids
    # One more result when a query may find itself, which is then dropped.
    wanted = k + 1 if own is not None and (own >= 0).any() else k
    if index is not None:
        result = index.search(queries, wanted)
        if not isinstance(result, SearchResult):
            raise TypeError(f"index.search must return a SearchResult, got {type(result).__name__}")
        result = SearchResult(np.asarray(result.scores, np.float32), np.asarray(result.ids, np.int64))
    elif same_set:  # the symmetric search leaves each query out of its own list itself
        own, result = None, knn(queries, None, k=k, metric=metric, query_block_size=query_block_size,
                                gallery_block_size=gallery_block_size, precision=precision)
    else:
        result = knn(queries, gallery, k=wanted, metric=metric, exclude_self=False,
                     query_block_size=query_block_size, gallery_block_size=gallery_block_size, precision=precision)
    if own is not None:
        result = drop_own(result, own)
    result = SearchResult(result.scores[:, :k], result.ids[:, :k])
    ids = result.ids
    found = ids >= 0
    retrieved = np.where(found, gallery_labels[np.where(found, ids, 0)] if len(gallery_labels) else 0, 0)
    matches = found & (retrieved == query_labels[:, None])
    return Neighbours(ids, result.scores, matches,
                      relevant_counts(query_labels, gallery_labels, same_set=same_set, own_ids=own_ids))


def _mean(values: np.ndarray, valid: np.ndarray) -> float:
    return float(values[valid].mean()) if valid.any() else float("nan")


def _check_k(k: int, available: int, name: str = "k") -> int:
    k = check_positive_int(name, k)
    # Not a bound on the argument but on the search behind the neighbour lists, hence its own message.
    if k > available:
        raise ValueError(f"{name}={k} needs {k} neighbours but only {available} were searched")
    return k


# -- metrics from neighbour lists ------------------------------------------------------------------

def recall_from_neighbours(nb: Neighbours, k: int) -> float:
    k = _check_k(k, nb.matches.shape[1])
    return _mean(nb.matches[:, :k].any(1).astype(np.float64), nb.valid)


def precision_from_neighbours(nb: Neighbours, k: int) -> float:
    k = _check_k(k, nb.matches.shape[1])
    return _mean(nb.matches[:, :k].sum(1) / k, nb.valid)


def _within_r(nb: Neighbours) -> np.ndarray:
    if nb.num_relevant.max(initial=0) > nb.matches.shape[1]:
        raise ValueError(f"R-based metrics need k >= the largest R ({nb.num_relevant.max()}), "
                         f"got k={nb.matches.shape[1]}")
    return np.arange(nb.matches.shape[1])[None, :] < nb.num_relevant[:, None]


def r_precision_from_neighbours(nb: Neighbours) -> float:
    hits = (nb.matches & _within_r(nb)).sum(1)
    return _mean(hits / np.maximum(nb.num_relevant, 1), nb.valid)


def _precision_at_hits(matches: np.ndarray) -> np.ndarray:
    ranks = np.arange(1, matches.shape[1] + 1)[None, :]
    return np.where(matches, np.cumsum(matches, 1) / ranks, 0.0)


def map_at_r_from_neighbours(nb: Neighbours) -> float:
    precision = _precision_at_hits(nb.matches & _within_r(nb))
    return _mean(precision.sum(1) / np.maximum(nb.num_relevant, 1), nb.valid)


def map_at_k_from_neighbours(nb: Neighbours, k: int | None) -> float:
    """AP@K divided by min(R, K); with ``k=None`` the neighbour lists must hold the whole gallery (full AP)."""
    if k is None:
        matches = nb.matches
        if (matches.sum(1) < nb.num_relevant).any():
            raise ValueError("full mAP needs every relevant item in the neighbour lists; search k = gallery size")
        denominator = nb.num_relevant
    else:
        k = _check_k(k, nb.matches.shape[1])
        matches = nb.matches[:, :k]
        denominator = np.minimum(nb.num_relevant, k)
    precision = _precision_at_hits(matches)
    return _mean(precision.sum(1) / np.maximum(denominator, 1), nb.valid)


# -- public pure functions ---------------------------------------------------------------------------

def recall_at_k(query_embeddings, query_labels, gallery_embeddings=None, gallery_labels=None, *, k: int = 1,
                metric: str = "cosine", index=None) -> float:
    r"""Recall@K as used in metric learning (Song et al. 2016, "Deep Metric Learning via Lifted Structured
    Feature Embedding"): the fraction of queries with at least one same-label item among their K nearest
    gallery items, :math:`\frac{1}{|Q|}\sum_q [\exists i \le K: y_{\pi_q(i)} = y_q]`.

    Args:
        query_embeddings: (Q, D); query_labels: (Q,).
        gallery_embeddings: (N, D) or None (queries are the gallery, each query excluded from its own list).
        gallery_labels: (N,) or None.
        k: cut-off K.
        metric: "cosine", "dot" or "euclidean". index: optional ANN index (see ``search_neighbours``).

    Example:
        >>> import numpy as np
        >>> x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
        >>> recall_at_k(x, [0, 0, 1, 1], k=1)
        1.0
    """
    nb = search_neighbours(query_embeddings, query_labels, gallery_embeddings, gallery_labels, k=k,
                           metric=metric, index=index)
    return recall_from_neighbours(nb, k)


def precision_at_k(query_embeddings, query_labels, gallery_embeddings=None, gallery_labels=None, *, k: int = 1,
                   metric: str = "cosine", index=None) -> float:
    r"""Precision@K: mean over queries of (same-label items among the K nearest) / K. With K = 10 this is
    the mP@10 of the revisited Oxford/Paris benchmark (Radenovic et al. 2018). Arguments as ``recall_at_k``.

    Example:
        >>> import numpy as np
        >>> x = np.array([[1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1]], dtype=np.float32)
        >>> precision_at_k(x, [0, 0, 0, 1], k=2)  # the three class-0 items: 2/2 each; item 3: R = 0, left out
        1.0
        >>> precision_at_k(x, [0, 0, 1, 1], k=2)  # 1/2, 1/2, 0/2, 1/2
        0.375
    """
    nb = search_neighbours(query_embeddings, query_labels, gallery_embeddings, gallery_labels, k=k,
                           metric=metric, index=index)
    return precision_from_neighbours(nb, k)


def _max_r(query_labels, gallery_embeddings, gallery_labels) -> int:
    same_set = gallery_embeddings is None
    query_labels = np.asarray(query_labels)
    gallery_labels = query_labels if same_set else np.asarray(gallery_labels)
    return max(int(relevant_counts(query_labels, gallery_labels, same_set=same_set).max(initial=0)), 1)


def r_precision(query_embeddings, query_labels, gallery_embeddings=None, gallery_labels=None, *,
                metric: str = "cosine", index=None) -> float:
    r"""R-Precision (Musgrave et al. 2020, "A Metric Learning Reality Check"): for a query with R relevant
    gallery items, the fraction of its R nearest neighbours that are relevant; averaged over queries.
    The search always uses k = max R, so no query is cut short. Arguments as ``recall_at_k``.

    Example:
        >>> import numpy as np
        >>> x = np.array([[1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1]], dtype=np.float32)
        >>> r_precision(x, [0, 0, 1, 1])  # R = 1 each: query 2's nearest is item 1 (class 0), the others hit
        0.75
    """
    nb = search_neighbours(query_embeddings, query_labels, gallery_embeddings, gallery_labels,
                           k=_max_r(query_labels, gallery_embeddings, gallery_labels), metric=metric, index=index)
    return r_precision_from_neighbours(nb)


def map_at_r(query_embeddings, query_labels, gallery_embeddings=None, gallery_labels=None, *,
             metric: str = "cosine", index=None) -> float:
    r"""MAP@R (Musgrave et al. 2020, "A Metric Learning Reality Check"):

    .. math:: \mathrm{MAP@R} = \frac{1}{|Q|}\sum_q \frac{1}{R_q}\sum_{i=1}^{R_q} P_q(i)\,\mathrm{rel}_q(i)

    where :math:`P_q(i)` is the precision among the first i neighbours and :math:`\mathrm{rel}_q(i)` is 1
    when the i-th neighbour is relevant. R is the full class size (minus the query itself), never capped:
    the search uses k = max R. Arguments as ``recall_at_k``.

    Example:
        >>> import numpy as np
        >>> x = np.array([[1, 0], [0.9, 0.1], [0.8, 0.2], [0, 1]], dtype=np.float32)
        >>> round(map_at_r(x, [0, 0, 1, 1]), 4)  # query 2's nearest neighbour is from class 0: it scores 0
        0.75
    """
    nb = search_neighbours(query_embeddings, query_labels, gallery_embeddings, gallery_labels,
                           k=_max_r(query_labels, gallery_embeddings, gallery_labels), metric=metric, index=index)
    return map_at_r_from_neighbours(nb)


def mean_average_precision(query_embeddings, query_labels, gallery_embeddings=None, gallery_labels=None, *,
                           k: int | None = None, metric: str = "cosine", own_ids=None,
                           query_block_size: int = 256) -> float:
    r"""Mean average precision (mAP), or mAP@K when ``k`` is given.

    .. math:: \mathrm{AP}_q = \frac{1}{R_q}\sum_{i=1}^{N} P_q(i)\,\mathrm{rel}_q(i), \qquad
              \mathrm{AP@K}_q = \frac{1}{\min(R_q, K)}\sum_{i=1}^{K} P_q(i)\,\mathrm{rel}_q(i)

    Full AP divides by R (all relevant items, wherever they rank) -- dividing by the number of relevant
    items *retrieved* is a known error that inflates scores. AP@K divides by min(R, K) as in the Google
    Landmarks retrieval challenge (Weyand et al. 2020). Full AP ranks the whole gallery, one block of
    ``query_block_size`` queries at a time (memory ``query_block_size x N``). ``own_ids`` as in
    ``search_neighbours``.

    Example:
        >>> import numpy as np
        >>> g = np.array([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1]], dtype=np.float32)
        >>> q = np.array([[1, 0]], dtype=np.float32)  # ranking 0, 1, 2, 3; relevant: 0 and 2
        >>> round(mean_average_precision(q, [0], g, [0, 1, 0, 1]), 4)  # (1/1 + 2/3) / 2
        0.8333
        >>> round(mean_average_precision(q, [0], g, [0, 1, 0, 1], k=2), 4)  # (1/1) / min(R=2, K=2)
        0.5
    """
    queries = as_embeddings("query_embeddings", query_embeddings)
    query_labels = as_labels("query_labels", query_labels, len(queries))
    if k is not None:
        nb = search_neighbours(queries, query_labels, gallery_embeddings, gallery_labels, k=k, metric=metric,
                               own_ids=own_ids)
        return map_at_k_from_neighbours(nb, k)
    same_set = gallery_embeddings is None
    if same_set:
        if own_ids is not None:
            raise ValueError("own_ids needs gallery_embeddings: without a gallery every query is its own item")
        gallery, labels_g, own = queries, query_labels, np.arange(len(queries))
    else:
        gallery = as_embeddings("gallery_embeddings", gallery_embeddings, dim=queries.shape[1])
        labels_g = as_labels("gallery_labels", gallery_labels, len(gallery))
        own = None if own_ids is None else check_own_ids(own_ids, len(queries), len(gallery))
    total, count = 0.0, 0
    for start in range(0, len(queries), query_block_size):
        stop = min(start + query_block_size, len(queries))
        # the whole gallery ranked; a query's own item, if any, leaves its list
        result = knn(queries[start:stop], gallery, k=max(len(gallery), 1), metric=metric, exclude_self=False,
                     query_block_size=query_block_size)
        block_own = None if own is None else own[start:stop]
        if block_own is not None:
            result = drop_own(result, block_own)
        found = result.ids >= 0
        matches = found & (labels_g[np.where(found, result.ids, 0)] == query_labels[start:stop, None])
        nb = Neighbours(result.ids, result.scores, matches,
                        relevant_counts(query_labels[start:stop], labels_g, same_set=False, own_ids=block_own))
        valid = nb.valid
        if valid.any():
            total += map_at_k_from_neighbours(nb, None) * valid.sum()
            count += int(valid.sum())
    return float(total / count) if count else float("nan")


def global_average_precision(query_embeddings, query_labels, gallery_embeddings, gallery_labels, *,
                             non_landmark_label=-1, metric: str = "cosine") -> float:
    r"""Global Average Precision (GAP, micro-AP) of the Google Landmarks recognition challenges (Weyand et al.
    2020, "Google Landmarks Dataset v2") for the plainest recognizer: each query predicts the label of its
    nearest gallery item with that similarity as confidence (a gallery item labelled ``non_landmark_label``,
    a distractor, predicts nothing). The formula is ``gap_from_predictions``'s; a full recognition pipeline
    (kNN voting, non-landmark suppression) hands its own (label, confidence) pairs to that function.

    Example:
        >>> import numpy as np
        >>> g = np.eye(3, dtype=np.float32)
        >>> q = np.array([[1, 0.3, 0], [0, 0.2, 1]], dtype=np.float32)  # query 1 is not a landmark
        >>> global_average_precision(q, [0, -1], g, [0, 1, 2])  # its wrong guess (0.98) outranks the right (0.96)
        0.5
    """
    nb_result = knn(query_embeddings, gallery_embeddings, k=1, metric=metric, exclude_self=False)
    gallery_labels = as_labels("gallery_labels", gallery_labels, len(as_embeddings("gallery_embeddings",
                                                                                 gallery_embeddings)))
    query_labels = as_labels("query_labels", query_labels, nb_result.ids.shape[0])
    predicted = gallery_labels[np.maximum(nb_result.ids[:, 0], 0)]
    return gap_from_predictions(predicted, nb_result.scores[:, 0], query_labels,
                                non_landmark_label=non_landmark_label)


def _truth_sets(true_labels, num_queries: int, non_landmark_label) -> list[frozenset]:
    """Per query the set of correct labels (empty: not a landmark), from a 1-D label array or a sequence of
    collections (GLDv2 test images may show several landmarks)."""
    if isinstance(true_labels, np.ndarray) and true_labels.ndim == 1 and true_labels.dtype != object:
        return [frozenset() if t == non_landmark_label else frozenset((t,)) for t in true_labels.tolist()]
    true_labels = list(true_labels)
    if len(true_labels) != num_queries:
        raise ValueError(f"true_labels must have one entry per query ({num_queries}), got {len(true_labels)}")
    out = []
    for truth in true_labels:
        if isinstance(truth, (str, bytes)) or not hasattr(truth, "__iter__"):
            out.append(frozenset() if truth == non_landmark_label else frozenset((truth,)))
        else:
            out.append(frozenset(t for t in truth if t != non_landmark_label))
    return out


def gap_from_predictions(predicted_labels, confidences, true_labels, *, non_landmark_label=-1,
                         ignore_non_landmark_queries: bool = False) -> float:
    r"""Global Average Precision (GAP, micro-AP; Weyand et al. 2020, "Google Landmarks Dataset v2", the
    Kaggle landmark recognition challenges 2018-2021) from at most one (label, confidence) prediction per query:

    .. math:: \mathrm{GAP} = \frac{1}{M}\sum_{i=1}^{N} P(i)\,\mathrm{rel}(i)

    with the N predictions of all queries sorted by confidence (descending; ties keep the query order, as the
    challenge's stable sort does), M the number of queries that show a landmark, P(i) the precision over the
    first i predictions and rel(i) = 1 when the i-th prediction is one of its query's true labels. A query
    predicted ``non_landmark_label`` (or with a NaN confidence) made no prediction: it is not among the N, so
    abstaining on a non-landmark costs nothing while a confident guess on one lowers every later precision.
    With ``ignore_non_landmark_queries`` the predictions on non-landmark queries are left out as well (the
    challenge code's ``ignore_non_gt_test_images``).

    Args:
        predicted_labels: (Q,) one label per query (``non_landmark_label``: none).
        confidences: (Q,) floats, higher = surer.
        true_labels: (Q,) labels (``non_landmark_label``: not a landmark), or a sequence of Q collections of
            labels (empty: not a landmark).

    Example:
        >>> # sorted: right (0.9), a guess on a non-landmark (0.8), right (0.7), wrong (0.6); M = 3
        >>> round(gap_from_predictions([1, 5, 2, 9], [0.9, 0.8, 0.7, 0.6], [1, -1, 2, 3]), 4)  # (1 + 2/3) / 3
        0.5556
        >>> round(gap_from_predictions([1, -1, 2, 9], [0.9, 0.8, 0.7, 0.6], [1, -1, 2, 3]), 4)  # abstained
        0.6667
    """
    predicted_labels = np.asarray(predicted_labels)
    confidences = np.asarray(confidences, dtype=np.float64)
    if predicted_labels.ndim != 1 or confidences.shape != predicted_labels.shape:
        raise ValueError(f"predicted_labels {predicted_labels.shape} and confidences {confidences.shape} must be "
                         f"1-D and the same length")
    truths = _truth_sets(np.asarray(true_labels) if not isinstance(true_labels, (list, tuple)) else true_labels,
                         len(predicted_labels), non_landmark_label)
    if len(truths) != len(predicted_labels):
        raise ValueError(f"true_labels has {len(truths)} entries but there are {len(predicted_labels)} predictions")
    num_landmark = sum(1 for t in truths if t)
    if num_landmark == 0:
        return float("nan")
    made = (predicted_labels != non_landmark_label) & ~np.isnan(confidences)
    if ignore_non_landmark_queries:
        made &= np.array([bool(t) for t in truths])
    order = np.flatnonzero(made)[np.argsort(-confidences[made], kind="stable")]
    as_python = predicted_labels.tolist()  # numpy scalars -> Python values, comparable with the truth sets
    correct = np.array([as_python[i] in truths[i] for i in order], dtype=bool)
    precision = np.cumsum(correct) / np.arange(1, len(correct) + 1)
    return float((precision * correct).sum() / num_landmark)


def gap_from_solution(predictions, solution, *, ignore_non_landmark_queries: bool = False) -> float:
    """GAP (see ``gap_from_predictions``) in the challenge's own terms: ``predictions`` maps a query id to
    ``(label, confidence)`` (a query missing from it, or mapped to None, made no prediction) and ``solution``
    maps every scored query id to the collection of its landmark ids (empty: not a landmark). A prediction for
    a query the solution does not score is a ValueError, as in the challenge code.

    Example:
        >>> solution = {"q1": {"7"}, "q2": set(), "q3": {"4", "5"}}
        >>> round(gap_from_solution({"q1": ("7", 0.5), "q2": ("3", 0.9), "q3": ("5", 0.2)}, solution), 4)
        0.5833
    """
    unknown = [key for key in predictions if key not in solution]
    if unknown:
        raise ValueError(f"{len(unknown)} predicted query id(s) are not in the solution, e.g. {unknown[:3]}")
    keys = list(solution)
    labels, confidences = [], []
    for key in keys:
        prediction = predictions.get(key)
        if prediction is None:
            labels.append(None)
            confidences.append(np.nan)
        else:
            label, confidence = prediction
            labels.append(label)
            confidences.append(float(confidence))
    predicted = np.empty(len(keys), dtype=object)
    predicted[:] = labels
    return gap_from_predictions(predicted, confidences, [solution[key] for key in keys], non_landmark_label=None,
                                ignore_non_landmark_queries=ignore_non_landmark_queries)


def map_at_k_from_predictions(predictions, solution, *, k: int = 100) -> float:
    r"""The Google Landmarks retrieval challenges' mAP@K (Weyand et al. 2020; K = 100):

    .. math:: \mathrm{mAP@K} = \frac{1}{Q}\sum_{q=1}^{Q} \frac{1}{\min(m_q, K)}\sum_{i=1}^{\min(n_q, K)} P_q(i)\,
              \mathrm{rel}_q(i)

    over the Q queries of ``solution`` (query id -> collection of relevant index ids, ``m_q`` of them),
    ``predictions`` mapping a query id to its ranked index ids (``n_q``; a query missing from it scores 0). A
    repeated id is skipped but keeps its rank, as in the challenge code. Queries whose solution is empty are a
    ValueError (the challenge scores only queries with relevant images).

    Example:
        >>> solution = {"q1": ["a", "c"], "q2": ["b"]}
        >>> predictions = {"q1": ["a", "b", "c"], "q2": ["c", "b"]}
        >>> round(map_at_k_from_predictions(predictions, solution, k=100), 4)  # ((1 + 2/3) / 2 + 1/2) / 2
        0.6667
    """
    k = check_positive_int("k", k)
    unknown = [key for key in predictions if key not in solution]
    if unknown:
        raise ValueError(f"{len(unknown)} predicted query id(s) are not in the solution, e.g. {unknown[:3]}")
    if not solution:
        return float("nan")
    total = 0.0
    for key, relevant in solution.items():
        relevant = set(relevant)
        if not relevant:
            raise ValueError(f"query {key!r} has no relevant index image; mAP@{k} scores only queries that have some")
        seen: set = set()
        hits, ap = 0, 0.0
        for rank, item in enumerate(list(predictions.get(key, ()))[:k], start=1):
            if item in seen:
                continue
            seen.add(item)
            if item in relevant:
                hits += 1
                ap += hits / rank
        total += ap / min(len(relevant), k)
    return total / len(solution)


def revisited_ap(ranked_ids, positive_ids, junk_ids) -> float:
    r"""AP of one query in the revisited Oxford/Paris protocol (Radenovic et al. 2018, "Revisiting Oxford and
    Paris"): junk images are removed from the ranking, then precision is averaged over recall steps with
    the trapezoid rule, as in the benchmark's evaluation code: for the j-th positive (0-based) at rank
    r_j (0-based, junk removed),

    .. math:: \mathrm{AP} = \frac{1}{|P|}\sum_j \frac{1}{2}\Big(\frac{j}{r_j} + \frac{j + 1}{r_j + 1}\Big)

    with j / r_j taken as 1 when r_j = 0. A positive missing from ``ranked_ids`` adds nothing.

    Example:
        >>> revisited_ap([7, 1, 5, 2], positive_ids=[1, 2], junk_ids=[7])  # ranks 0 and 2 once 7 is gone
        0.7916666666666666
    """
    positive, junk = set(np.asarray(positive_ids).tolist()), set(np.asarray(junk_ids).tolist())
    if not positive:
        return float("nan")
    ranked = [i for i in np.asarray(ranked_ids).tolist() if i not in junk]
    ranks = [r for r, i in enumerate(ranked) if i in positive]
    ap = 0.0
    for j, r in enumerate(ranks):
        before = 1.0 if r == 0 else j / r
        ap += (before + (j + 1) / (r + 1)) / 2
    return ap / len(positive)


REVISITED_SETTINGS = {"easy": (("easy",), ("junk", "hard")), "medium": (("easy", "hard"), ("junk",)),
                      "hard": (("hard",), ("junk", "easy"))}


def revisited_from_rankings(ranking, ground_truth, *, ks=(1, 5, 10)) -> dict[str, float]:
    """The revisited Oxford/Paris scores of given rankings (Radenovic et al. 2018): ``ranking`` (Q, n) gallery
    indices per query, best first (e.g. after query expansion or DBA); ``ground_truth`` as in
    ``revisited_oxford_paris``. Easy: positives = easy, ignored = junk + hard. Medium: positives = easy + hard,
    ignored = junk. Hard: positives = hard, ignored = junk + easy. Queries without positives in a setting are
    skipped; mP@k counts positives among the first k non-ignored images.

    Example:
        >>> gt = [{"easy": [0], "hard": [2], "junk": [1]}]
        >>> out = revisited_from_rankings([[2, 1, 0, 3]], gt, ks=(1,))
        >>> out["easy/map"], out["hard/map"], round(out["medium/map"], 4)  # medium: positives at ranks 0, 1
        (1.0, 1.0, 1.0)
    """
    ranking = np.asarray(ranking)
    if ranking.ndim != 2:
        raise ValueError(f"ranking must be (queries, ranked gallery indices), got shape {ranking.shape}")
    if len(ground_truth) != len(ranking):
        raise ValueError(f"ground_truth must have one entry per query ({len(ranking)}), got {len(ground_truth)}")
    ks = [check_positive_int("ks", k) for k in ks]
    out: dict[str, float] = {}
    for name, (pos_keys, junk_keys) in REVISITED_SETTINGS.items():
        aps, precisions = [], {k: [] for k in ks}
        for row, gt in zip(ranking, ground_truth):
            positive = [i for key in pos_keys for i in gt.get(key, [])]
            if not positive:
                continue
            junk = {i for key in junk_keys for i in gt.get(key, [])}
            aps.append(revisited_ap(row, positive, junk))
            kept = [i for i in row.tolist() if i not in junk]
            for k in ks:
                precisions[k].append(len(set(kept[:k]) & set(positive)) / k)
        out[f"{name}/map"] = float(np.mean(aps)) if aps else float("nan")
        for k in ks:
            out[f"{name}/mp@{k}"] = float(np.mean(precisions[k])) if precisions[k] else float("nan")
    return out


def revisited_oxford_paris(query_embeddings, gallery_embeddings, ground_truth, *, ks=(1, 5, 10),
                           metric: str = "cosine") -> dict[str, float]:
    """The revisited Oxford/Paris easy / medium / hard protocol (Radenovic et al. 2018) on embeddings: the
    whole gallery is ranked exactly, then scored by ``revisited_from_rankings``.

    ``ground_truth`` has one dict per query with gallery-index lists ``"easy"``, ``"hard"`` and ``"junk"``.
    Returns ``{"<setting>/map": ..., "<setting>/mp@k": ...}``.

    Example:
        >>> import numpy as np
        >>> g = np.eye(4, dtype=np.float32)
        >>> q = np.array([[1, 0.5, 0.2, 0]], dtype=np.float32)  # ranking 0, 1, 2, 3
        >>> out = revisited_oxford_paris(q, g, [{"easy": [0], "hard": [2], "junk": [1]}], ks=(1,))
        >>> out["easy/map"], out["hard/map"], out["medium/map"]
        (1.0, 1.0, 1.0)
    """
    gallery = as_embeddings("gallery_embeddings", gallery_embeddings)
    queries = as_embeddings("query_embeddings", query_embeddings, dim=gallery.shape[1])
    if len(ground_truth) != len(queries):
        raise ValueError(f"ground_truth must have one entry per query ({len(queries)}), got {len(ground_truth)}")
    ranking = knn(queries, gallery, k=len(gallery), metric=metric, exclude_self=False).ids
    return revisited_from_rankings(ranking, ground_truth, ks=ks)
