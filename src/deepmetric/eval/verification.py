r"""Verification (1:1) on scored pairs: ROC, AUC, EER, TAR at a FAR, the LFW 10-fold accuracy, bootstrap
confidence intervals. A pair is accepted as "same" when its similarity score is >= the threshold.
"""

from __future__ import annotations

import math

import numpy as np

from deepmetric.distances import canonical_metric
from deepmetric.validation import check_embeddings, check_in_range, check_int, check_non_negative_int, check_probability

FARS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def as_pairs(scores, same) -> tuple[np.ndarray, np.ndarray]:
    """Validate pair ``scores`` (P,) finite floats and ``same`` (P,) booleans."""
    scores = np.asarray(scores, dtype=np.float64)
    same = np.asarray(same)
    if scores.ndim != 1:
        raise ValueError(f"scores must be a 1-D array of pair scores, got shape {scores.shape}")
    if same.shape != scores.shape:
        raise ValueError(f"same must have one flag per score ({scores.shape}), got shape {same.shape}")
    if same.dtype != bool:
        if not np.isin(same, (0, 1)).all():
            raise ValueError("same must hold booleans or 0/1 flags")
        same = same.astype(bool)
    if not np.isfinite(scores).all():
        raise ValueError("scores contains NaN or infinite values")
    return scores, same


def _require_both(same: np.ndarray) -> None:
    if same.all() or not same.any():
        raise ValueError(f"same must contain both genuine and impostor pairs, got {int(same.sum())} genuine "
                         f"of {same.size}")


def pair_scores(embeddings_a, embeddings_b, *, metric: str = "cosine") -> np.ndarray:
    """Similarity of row i of ``embeddings_a`` (P, D) with row i of ``embeddings_b`` (P, D): cosine, dot or
    negative Euclidean distance.

    >>> pair_scores([[1.0, 0.0], [0.0, 2.0]], [[1.0, 1.0], [0.0, 1.0]]).round(4).tolist()
    [0.7071, 1.0]
    >>> pair_scores([[1.0, 0.0]], [[4.0, 4.0]], metric="euclidean").tolist()
    [-5.0]
    """
    # The scores are checked for NaN by ``as_pairs``, so the rows are not scanned here.
    a = check_embeddings("embeddings_a", np.asarray(embeddings_a, np.float64), finite=False)
    b = check_embeddings("embeddings_b", np.asarray(embeddings_b, np.float64), dim=a.shape[1], finite=False)
    if len(a) != len(b):
        raise ValueError(f"embeddings_b must have one row per row of embeddings_a ({len(a)}), got {len(b)}")
    metric = canonical_metric(metric)
    if metric == "cosine":
        a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        return (a * b).sum(1)
    if metric == "dot":
        return (a * b).sum(1)
    return -np.linalg.norm(a - b, axis=1)  # euclidean


def roc(scores, same) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""ROC curve: for every distinct score t (descending) the false accept rate
    :math:`\mathrm{FAR}(t) = |\{\text{impostor} \ge t\}| / N_{imp}` and true accept rate
    :math:`\mathrm{TAR}(t) = |\{\text{genuine} \ge t\}| / N_{gen}`, starting at (0, 0) with t = +inf
    (Fawcett 2006, "An introduction to ROC analysis"; the same points as scikit-learn's ``roc_curve`` with
    ``drop_intermediate=False``).

    Returns:
        (far, tar, thresholds), each (T,).

    Example: three genuine pairs (0.9, 0.8, 0.6) and three impostors (0.7, 0.4, 0.3):

    >>> far, tar, thresholds = roc([0.9, 0.8, 0.7, 0.6, 0.4, 0.3], [1, 1, 0, 1, 0, 0])
    >>> [round(float(x), 3) for x in far], [round(float(x), 3) for x in tar]
    ([0.0, 0.0, 0.0, 0.333, 0.333, 0.667, 1.0], [0.0, 0.333, 0.667, 0.667, 1.0, 1.0, 1.0])
    """
    scores, same = as_pairs(scores, same)
    _require_both(same)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_same = scores[order], same[order]
    last_of_value = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(sorted_scores) - 1]
    true_accepts = np.cumsum(sorted_same)[last_of_value]
    false_accepts = (last_of_value + 1) - true_accepts
    far = np.r_[0.0, false_accepts / (~same).sum()]
    tar = np.r_[0.0, true_accepts / same.sum()]
    thresholds = np.r_[np.inf, sorted_scores[last_of_value]]
    return far, tar, thresholds


def auc(scores, same) -> float:
    """Area under the ROC curve (trapezoid rule over ``roc``), equal to the probability that a random
    genuine pair outscores a random impostor pair (ties count one half).

    Example: of the 3 x 3 genuine-impostor pairings only 0.6 < 0.7 is out of order, so AUC = 8/9:

    >>> round(auc([0.9, 0.8, 0.7, 0.6, 0.4, 0.3], [1, 1, 0, 1, 0, 0]), 4)
    0.8889
    """
    far, tar, _ = roc(scores, same)
    return float(np.trapezoid(tar, far) if hasattr(np, "trapezoid") else np.trapz(tar, far))


def eer(scores, same) -> tuple[float, float]:
    r"""Equal error rate: the rate where FAR equals FRR = 1 - TAR, found by linear interpolation between the
    two ROC points where FAR - FRR changes sign (ISO/IEC 19795-1).

    Returns:
        (eer, threshold) -- the threshold is interpolated the same way.

    Example: at t = 0.7 one impostor of three is accepted and one genuine pair of three rejected:

    >>> rate, threshold = eer([0.9, 0.8, 0.7, 0.6, 0.4, 0.3], [1, 1, 0, 1, 0, 0])
    >>> round(rate, 4), threshold
    (0.3333, 0.7)
    """
    far, tar, thresholds = roc(scores, same)
    frr = 1.0 - tar
    diff = far - frr  # increases from -1 to +1 along the curve
    i = int(np.argmax(diff >= 0))
    if diff[i] == 0 or i == 0:
        return float(far[i]), float(thresholds[i])
    w = -diff[i - 1] / (diff[i] - diff[i - 1])
    rate = far[i - 1] + w * (far[i] - far[i - 1])
    low, high = thresholds[i - 1], thresholds[i]
    threshold = high if not np.isfinite(low) else low + w * (high - low)
    return float(rate), float(threshold)


def threshold_at_far(scores, same, far: float) -> float:
    r"""The lowest threshold whose false accept rate is <= ``far``: with impostor scores sorted descending
    :math:`s_{(1)} \ge s_{(2)} \ge ...`, and :math:`a = \lfloor far \cdot N_{imp} \rfloor` allowed false
    accepts, the threshold is the next float above :math:`s_{(a+1)}` (NaN when ``far`` is not supported:
    fewer than 1/far impostor pairs)."""
    scores, same = as_pairs(scores, same)
    far = check_rate("far", far)
    impostor = np.sort(scores[~same])[::-1]
    if impostor.size < math.ceil(1.0 / far - 1e-9):
        return float("nan")
    allowed = int(math.floor(far * impostor.size + 1e-9))
    if allowed >= impostor.size:
        return float(impostor[-1])
    return float(np.nextafter(impostor[allowed], np.inf))


def check_rate(name: str, value: object) -> float:
    """A false accept (or false positive identification) rate: a number strictly between 0 and 1."""
    return check_probability(name, value, allow_zero=False, allow_one=False)


def tar_at_far(scores, same, far: float) -> float:
    r"""True accept rate at the threshold from ``threshold_at_far``:
    :math:`\mathrm{TAR} = |\{\text{genuine} \ge t\}| / N_{gen}`. NaN (unavailable) when there are fewer than
    1/far impostor pairs, since such a FAR cannot be measured (one false accept already exceeds it).

    Example: with 3 impostors, FAR <= 0.34 allows one false accept, so the threshold lies just above the second
    impostor score (0.4) and every genuine pair (0.9, 0.8, 0.6) is accepted:

    >>> tar_at_far([0.9, 0.8, 0.7, 0.6, 0.4, 0.3], [1, 1, 0, 1, 0, 0], far=0.34)
    1.0
    """
    scores, same = as_pairs(scores, same)
    _require_both(same)
    threshold = threshold_at_far(scores, same, far)
    if math.isnan(threshold):
        return float("nan")
    return float((scores[same] >= threshold).mean())


def _accuracy_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate thresholds (midpoints between distinct scores, plus one below and one above all) and the
    accuracy of "same iff score >= t" at each."""
    values = np.unique(scores)
    mids = (values[:-1] + values[1:]) / 2
    thresholds = np.r_[values[0] - 1.0, mids, values[-1] + 1.0]
    order = np.argsort(scores, kind="stable")
    sorted_scores, sorted_same = scores[order], same[order]
    below = np.searchsorted(sorted_scores, thresholds, side="left")  # rejected: scores < t
    genuine_below = np.r_[0, np.cumsum(sorted_same)][below]
    impostor_below = below - genuine_below
    correct = impostor_below + (same.sum() - genuine_below)
    return thresholds, correct / len(scores)


def best_threshold(scores, same) -> tuple[float, float]:
    """The threshold with the highest accuracy of "same iff score >= t" (midpoints between distinct scores;
    the lowest one wins ties). Returns (threshold, accuracy).

    Example: t = (0.9 + 0.8) / 2 and t = (0.7 + 0.6) / 2 would each get 4 of 6 right; t = (0.6 + 0.4) / 2 = 0.5
    gets 5 (only the impostor at 0.7 is wrong):

    >>> best_threshold([0.9, 0.8, 0.7, 0.6, 0.4, 0.3], [1, 1, 0, 1, 0, 0])
    (0.5, 0.8333333333333334)
    """
    scores, same = as_pairs(scores, same)
    thresholds, accuracy = _accuracy_curve(scores, same)
    i = int(np.argmax(accuracy))
    return float(thresholds[i]), float(accuracy[i])


def verification_kfold(scores, same, *, folds: int = 10, fold_ids=None) -> dict[str, float]:
    r"""The LFW protocol (Huang et al. 2007, "Labeled Faces in the Wild"): pairs are split, in the given
    order, into ``folds`` contiguous folds (LFW's pairs.txt lists 10 sets of 300 + 300); for each fold the
    best threshold (``best_threshold``) is chosen on the other folds and the accuracy measured on it.

    ``fold_ids`` (P,), when given, names the fold of each pair instead (e.g. the folds a pairs file lists).

    Returns:
        {"accuracy": mean, "accuracy_std": population std over folds, "threshold": mean threshold}.
    """
    scores, same = as_pairs(scores, same)
    if fold_ids is not None:
        fold_ids = np.asarray(fold_ids)
        if fold_ids.shape != scores.shape:
            raise ValueError(f"fold_ids must have one fold per pair ({scores.shape}), got shape {fold_ids.shape}")
        return _kfold([fold_ids == f for f in np.unique(fold_ids)], scores, same)
    folds = check_int("folds", folds, low=2, high=len(scores))  # high: the number of pairs
    bounds = np.linspace(0, len(scores), folds + 1).round().astype(int)
    positions = np.arange(len(scores))
    return _kfold([(positions >= bounds[f]) & (positions < bounds[f + 1]) for f in range(folds)], scores, same)


def _kfold(test_masks, scores: np.ndarray, same: np.ndarray) -> dict[str, float]:
    if len(test_masks) < 2:
        raise ValueError(f"the k-fold protocol needs at least 2 folds, got {len(test_masks)}")
    accuracies, thresholds = [], []
    for test in test_masks:
        threshold, _ = best_threshold(scores[~test], same[~test])
        accuracies.append(((scores[test] >= threshold) == same[test]).mean())
        thresholds.append(threshold)
    return {"accuracy": float(np.mean(accuracies)), "accuracy_std": float(np.std(accuracies)),
            "threshold": float(np.mean(thresholds))}


def bootstrap_ci(scores, same, statistic, *, num_bootstrap: int = 200, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron & Tibshirani 1993) of ``statistic(scores, same)``: genuine and
    impostor pairs are resampled with replacement separately (stratified), ``num_bootstrap`` times."""
    scores, same = as_pairs(scores, same)
    confidence = check_in_range("confidence", confidence, 0, 1, low_inclusive=False, high_inclusive=False)
    num_bootstrap = check_non_negative_int("num_bootstrap", num_bootstrap)  # 0: no interval, (NaN, NaN)
    rng = np.random.default_rng(seed)
    genuine, impostor = np.nonzero(same)[0], np.nonzero(~same)[0]
    values = []
    for _ in range(num_bootstrap):
        pick = np.r_[rng.choice(genuine, genuine.size), rng.choice(impostor, impostor.size)]
        values.append(statistic(scores[pick], same[pick]))
    values = np.asarray(values, dtype=np.float64)
    if np.isnan(values).all():
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)


def far_key(far: float) -> str:
    """``1e-3`` -> ``"1e-3"`` for metric names."""
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def far_supported(num_impostor: int, far: float) -> bool:
    """A FAR is measurable with at least 1/far impostor pairs (10/far is better)."""
    return num_impostor >= math.ceil(1.0 / far - 1e-9)
