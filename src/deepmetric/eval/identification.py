r"""Identification (1:N): closed-set CMC, open-set DIR at FPIR (FNIR = 1 - DIR) with unknown probes, the
MegaFace-style rank-1 against the number of distractors, and identity templates.
"""

from __future__ import annotations

import numpy as np
import torch

from deepmetric.eval.verification import threshold_at_far
from deepmetric.index.topk import as_embeddings, as_labels, knn
from deepmetric.validation import check_non_negative_int

DISTRACTOR_COUNTS = (10, 100, 1_000, 10_000, 100_000, 1_000_000)


def make_templates(embeddings, labels, *, weights=None) -> tuple[np.ndarray, np.ndarray]:
    r"""One template per identity: the (optionally quality-weighted) mean of its L2-normalised embeddings,
    normalised again, :math:`t_c = \mathrm{norm}(\sum_{i: y_i = c} w_i\, \hat e_i)` (the template pooling of
    the IJB benchmarks, Whitelam et al. 2017).

    Args:
        embeddings: (N, D). labels: (N,). weights: (N,) non-negative quality scores or None (all 1).

    Returns:
        (templates (C, D) float32, template_labels (C,)) with labels sorted.

    Example: identity 7 has images along x and y, so its template is the diagonal; 9 has one image:

    >>> templates, ids = make_templates(np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0]]), [7, 7, 9])
    >>> templates.astype(float).round(4).tolist(), ids.tolist()
    ([[0.7071, 0.7071], [0.0, 1.0]], [7, 9])
    """
    x = as_embeddings("embeddings", embeddings).astype(np.float64)
    labels = as_labels("labels", labels, len(x))
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if weights is None:
        weights = np.ones(len(x))
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (len(x),) or (weights < 0).any() or not np.isfinite(weights).all():
        raise ValueError(f"weights must be {len(x)} finite non-negative numbers, got shape {weights.shape}")
    unique, inverse = np.unique(labels, return_inverse=True)
    sums = np.zeros((len(unique), x.shape[1]))
    np.add.at(sums, inverse, x * weights[:, None])
    if (np.bincount(inverse, weights=weights, minlength=len(unique)) == 0).any():
        raise ValueError("every identity needs at least one image with a positive weight")
    sums /= np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return sums.astype(np.float32), unique


def _mate_ranks(query_embeddings, query_labels, gallery_embeddings, gallery_labels, *, max_rank: int,
                metric: str):
    """(rank of the first mate, 1-based, 0 = not within max_rank; its score; top-1 score; has-mate flags)."""
    same_set = gallery_embeddings is None
    queries = as_embeddings("query_embeddings", query_embeddings)
    query_labels = as_labels("query_labels", query_labels, len(queries))
    if same_set:
        gallery_labels = query_labels
    else:
        gallery = as_embeddings("gallery_embeddings", gallery_embeddings, dim=queries.shape[1])
        gallery_labels = as_labels("gallery_labels", gallery_labels, len(gallery))
    result = knn(queries, None if same_set else gallery, k=max_rank, metric=metric)
    found = result.ids >= 0
    matches = found & (gallery_labels[np.where(found, result.ids, 0)] == query_labels[:, None])
    first = np.where(matches.any(1), matches.argmax(1) + 1, 0)
    mate_score = np.where(first > 0, result.scores[np.arange(len(first)), np.maximum(first - 1, 0)], -np.inf)
    counts = dict(zip(*np.unique(gallery_labels, return_counts=True)))
    needed = 2 if same_set else 1
    has_mate = np.array([counts.get(label, 0) >= needed for label in query_labels.tolist()], bool)
    return first, mate_score, result.scores[:, 0], has_mate


def cmc(query_embeddings, query_labels, gallery_embeddings=None, gallery_labels=None, *, max_rank: int = 10,
        metric: str = "cosine") -> np.ndarray:
    r"""Closed-set cumulative match characteristic (Grother, NIST FRVT; ISO/IEC 19795-1):
    :math:`\mathrm{CMC}(r) = |\{q : \mathrm{rank}_q \le r\}| / |Q_{mated}|`, where rank_q is the position of
    the first gallery item with the query's label. Probes without a mate in the gallery are left out.

    Returns:
        (max_rank,) array, entry r-1 = identification rate at rank r (NaN when no probe has a mate).

    Example: three enrolled identities 0, 1, 2; the first probe's mate is ranked first, the third's second
    (behind identity 2) and the second's last:

    >>> gallery = np.array([[1.0, 0.1], [0.1, 1.0], [-1.0, 0.0]])
    >>> probes = np.array([[1.0, 0.0], [0.2, 1.0], [-0.9, 0.1]])
    >>> cmc(probes, [0, 2, 1], gallery, [0, 1, 2], max_rank=3).round(4).tolist()
    [0.3333, 0.6667, 1.0]
    """
    first, _, _, has_mate = _mate_ranks(query_embeddings, query_labels, gallery_embeddings, gallery_labels,
                                        max_rank=max_rank, metric=metric)
    if not has_mate.any():
        return np.full(max_rank, np.nan)
    ranks = first[has_mate]
    return np.array([((ranks > 0) & (ranks <= r)).mean() for r in range(1, max_rank + 1)])


def open_set_scores(query_embeddings, query_labels, gallery_embeddings, gallery_labels, *, rank: int = 1,
                    metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """(mated: score of the mate when it is within ``rank`` else -inf, one per mated probe;
    non-mated: top-1 score of each probe whose identity is not enrolled)."""
    _, mate_score, top_score, has_mate = _mate_ranks(query_embeddings, query_labels, gallery_embeddings,
                                                         gallery_labels, max_rank=rank, metric=metric)
    return mate_score[has_mate], top_score[~has_mate]


def dir_at_far(query_embeddings, query_labels, gallery_embeddings, gallery_labels, *, far: float = 1e-2,
               rank: int = 1, metric: str = "cosine") -> float:
    r"""Open-set detection and identification rate at a false positive identification rate
    (Grother et al., NIST FRVT Part 2; ISO/IEC 19795-1). Probes whose label is not in the gallery are
    non-mated. The threshold t is the lowest with
    :math:`\mathrm{FPIR}(t) = |\{\text{non-mated}: s_{top1} \ge t\}| / N_{nm} \le` ``far``, and

    .. math:: \mathrm{DIR}(t, r) = |\{\text{mated}: \mathrm{rank} \le r,\ s_{mate} \ge t\}| / N_{m},
              \qquad \mathrm{FNIR} = 1 - \mathrm{DIR}.

    NaN when there are fewer than 1/far non-mated probes (the rate cannot be measured) or no mated probes.

    Example: two unknown probes (8, 9) score 0.74 and 0.63 against their nearest enrolled identity; FPIR <= 0.5
    allows one of them through, so t lies just above 0.63 and all three mated probes (scores >= 0.99) pass:

    >>> gallery = np.array([[1.0, 0.1], [0.1, 1.0], [-1.0, 0.0]])
    >>> probes = np.array([[1.0, 0.0], [0.2, 1.0], [0.9, 0.1], [-0.6, 0.8], [0.7, -0.7]])
    >>> dir_at_far(probes, [0, 1, 0, 8, 9], gallery, [0, 1, 2], far=0.5)
    1.0
    """
    mated, non_mated = open_set_scores(query_embeddings, query_labels, gallery_embeddings, gallery_labels,
                                       rank=rank, metric=metric)
    if len(mated) == 0 or len(non_mated) == 0:
        return float("nan")
    threshold = threshold_at_far(non_mated, np.zeros(len(non_mated), bool), far)
    return float("nan") if np.isnan(threshold) else float((mated >= threshold).mean())


def dir_curve(mated: np.ndarray, non_mated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DIR against FPIR at every distinct non-mated score (for plots)."""
    thresholds = np.unique(non_mated)[::-1]
    fpir = np.searchsorted(np.sort(non_mated), thresholds, side="left")
    fpir = (len(non_mated) - fpir) / len(non_mated)
    sorted_mated = np.sort(mated)
    dir_values = (len(mated) - np.searchsorted(sorted_mated, thresholds, side="left")) / max(len(mated), 1)
    return fpir, dir_values


def generate_distractors(count: int, dim: int, *, seed: int = 0, block_size: int = 65536):
    """Yield ``count`` synthetic distractors (isotropic Gaussian directions, unit norm) in blocks, reproducible
    from ``seed``, so a million of them never sit in memory at once."""
    generator = torch.Generator().manual_seed(seed)
    for start in range(0, count, block_size):
        block = torch.randn(min(block_size, count - start), dim, generator=generator)
        yield torch.nn.functional.normalize(block, dim=1).numpy()


def distractor_curve(probe_embeddings, probe_labels, gallery_embeddings, gallery_labels, distractor_embeddings=None,
                     *, counts=DISTRACTOR_COUNTS, seed: int = 0, metric: str = "cosine",
                     block_size: int = 65536) -> dict[int, float]:
    r"""MegaFace-style rank-1 identification rate against the number of distractors (Kemelmacher-Shlizerman
    et al. 2016, "The MegaFace Benchmark"): the first n distractors are added to the gallery, and a probe
    is correct at n when its top-1 gallery item is a mate that also scores >= every one of those n
    distractors (ties go to the enrolled item).

    Args:
        probe_embeddings, probe_labels: the probes (those without an enrolled mate are left out).
        gallery_embeddings, gallery_labels: the enrolled images or templates.
        distractor_embeddings: (M, D) array of distractors, or None to generate ``max(counts)`` synthetic
            ones (``generate_distractors``); an iterable of (m, D) blocks also works.
        counts: distractor counts n to report.

    Returns:
        {n: rank-1 rate}; counts above the number of distractors available are left out.
    """
    counts = sorted({check_non_negative_int(f"counts[{i}]", count) for i, count in enumerate(counts)})
    if not counts:
        raise ValueError("counts must name at least one distractor count, got none")
    _, mate_score, _, has_mate = _mate_ranks(probe_embeddings, probe_labels, gallery_embeddings,
                                                 gallery_labels, max_rank=1, metric=metric)
    probes = as_embeddings("probe_embeddings", probe_embeddings)[has_mate]
    mate_score = mate_score[has_mate]
    if distractor_embeddings is None:
        blocks = generate_distractors(counts[-1], probes.shape[1], seed=seed, block_size=block_size)
    elif isinstance(distractor_embeddings, (np.ndarray, torch.Tensor)):
        array = as_embeddings("distractor_embeddings", distractor_embeddings, dim=probes.shape[1])
        blocks = (array[i:i + block_size] for i in range(0, len(array), block_size))
    else:
        blocks = iter(distractor_embeddings)
    best = np.full(len(probes), -np.inf, dtype=np.float32)
    out: dict[int, float] = {}
    seen, pending = 0, list(counts)
    if pending and pending[0] == 0:
        out[0] = float((mate_score > -np.inf).mean())
        pending.pop(0)
    for block in blocks:
        block = as_embeddings("distractor_embeddings", block, dim=probes.shape[1])
        while pending and block.shape[0] > 0:
            take = min(pending[0] - seen, block.shape[0])
            if take > 0:
                top = knn(probes, block[:take], k=1, metric=metric, exclude_self=False,
                          gallery_block_size=block_size).scores[:, 0]
                best = np.maximum(best, top)
                seen += take
                block = block[take:]
            if seen == pending[0]:
                out[pending.pop(0)] = float(((mate_score > -np.inf) & (mate_score >= best)).mean())
        if not pending:
            break
    return out
