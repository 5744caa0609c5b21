"""Evaluators: ``evaluator(embeddings, labels) -> dict[str, float]`` with keys like "retrieval/map@r" and a
``primary_metric``; the curves behind the numbers stay in ``evaluator.details`` for plots and reports.
Each one is registered as an ``evaluator`` component, built by name: ``registry.build({"name": "retrieval",
"args": {"ks": [1, 5]}}, "evaluator")``.

Unavailable rates (e.g. TAR at a FAR with fewer than 1/FAR impostor pairs) are reported as NaN with a
companion key ".../available" = 0.0, never silently omitted.
"""

from __future__ import annotations

import math

import numpy as np

from deepmetric.eval import retrieval as R
from deepmetric.eval import verification as V
from deepmetric.index.topk import as_embeddings, as_labels
from deepmetric.registry import register
from deepmetric.validation import check_in_range, check_int, check_non_negative_int, check_positive_int


class Evaluator:
    """Base class: subclasses set ``name`` and ``primary_metric`` and implement ``evaluate``."""

    name = ""
    primary_metric = ""

    def __init__(self) -> None:
        self.details: dict = {}

    def __call__(self, embeddings, labels, **extra) -> dict[str, float]:
        embeddings = as_embeddings("embeddings", embeddings)
        labels = as_labels("labels", labels, len(embeddings))
        self.details = {}
        return {f"{self.name}/{key}": float(value) for key, value in self.evaluate(embeddings, labels, **extra).items()}

    def evaluate(self, embeddings: np.ndarray, labels: np.ndarray, **extra) -> dict[str, float]:  # pragma: no cover
        raise NotImplementedError


def _check_ks(name: str, values) -> tuple[int, ...]:
    """Cut-offs (``ks``, ``ranks``): a non-empty sequence of positive integers, returned as a tuple."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{name} must be a non-empty sequence of positive integers, got {type(values).__name__}: "
                        f"{values!r}")
    values = tuple(check_positive_int(f"{name}[{i}]", v) for i, v in enumerate(values))
    if not values:
        raise ValueError(f"{name} must be a non-empty sequence of positive integers, got ()")
    return values


def query_gallery_rows(is_query, is_gallery, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(query rows, gallery rows) of a data set from its ``is_query`` / ``is_gallery`` flags (N,) bool; a flag
    that is None marks every row."""
    rows = []
    for name, flags in (("is_query", is_query), ("is_gallery", is_gallery)):
        flags = np.ones(num_rows, bool) if flags is None else np.asarray(flags)
        if flags.shape != (num_rows,) or flags.dtype != bool:
            raise ValueError(f"{name} must be a bool array of shape ({num_rows},), one flag per row, got "
                             f"{flags.dtype} array of shape {flags.shape}")
        rows.append(np.flatnonzero(flags))
    if not len(rows[0]) or not len(rows[1]):
        raise ValueError(f"retrieval needs at least one query and one gallery row, got {len(rows[0])} rows with "
                         f"is_query and {len(rows[1])} with is_gallery")
    return rows[0], rows[1]


@register("evaluator", "retrieval", example={"ks": [1, 5], "map_at_k": 10})
class RetrievalEvaluator(Evaluator):
    """Recall@K, Precision@K, R-Precision, MAP@R, mAP@K and mP@10 from one exact blocked search (k = max of
    the cut-offs and the largest class), leave-one-out when no gallery is given.

    Called as ``evaluator(embeddings, labels, is_query=..., is_gallery=...)`` (the columns of a data-set
    table), the queries are the rows with ``is_query`` and the gallery the rows with ``is_gallery``; a row
    that is both never matches itself and does not count among its own relevant items.

    Args:
        ks: cut-offs for Recall@K and Precision@K.
        map_at_k: K of mAP@K (None to skip).
        full_map: also compute full mAP (ranks the whole gallery; slower).
        metric: "cosine", "dot" or "euclidean".
        index: optional ANN index (``search(q, k) -> SearchResult`` over the gallery, ids 0..N-1); the
            metrics are then computed from its results and the loss against exact search is reported
            ("retrieval/exact/..." and "retrieval/ann_neighbour_recall").
        query_block_size, gallery_block_size: memory knobs of the exact search (results do not change).
    """

    name = "retrieval"
    primary_metric = "retrieval/map@r"

    def __init__(self, *, ks=(1, 5, 10), map_at_k: int | None = 100, full_map: bool = False,
                 metric: str = "cosine", index=None, query_block_size: int = 1024,
                 gallery_block_size: int = 65536) -> None:
        super().__init__()
        self.ks = _check_ks("ks", ks)
        self.map_at_k = check_positive_int("map_at_k", map_at_k, allow_none=True)
        self.full_map, self.metric, self.index = full_map, metric, index
        self.query_block_size, self.gallery_block_size = query_block_size, gallery_block_size

    def evaluate(self, embeddings, labels, *, gallery_embeddings=None, gallery_labels=None, is_query=None,
                 is_gallery=None) -> dict[str, float]:
        """``index``, when set, holds the gallery: every row, the ``is_gallery`` rows, or ``gallery_embeddings``."""
        queries, query_labels, own = embeddings, labels, None
        rows = {"query_rows": None, "gallery_rows": None}
        if is_query is not None or is_gallery is not None:
            if gallery_embeddings is not None or gallery_labels is not None:
                raise ValueError("pass is_query/is_gallery (flags of one set of rows) or gallery_embeddings and "
                                 "gallery_labels (a separate gallery), not both")
            query_rows, gallery_rows = query_gallery_rows(is_query, is_gallery, len(embeddings))
            rows = {"query_rows": query_rows, "gallery_rows": gallery_rows}
            if len(query_rows) < len(embeddings) or len(gallery_rows) < len(embeddings):
                position = np.full(len(embeddings), -1, np.int64)
                position[gallery_rows] = np.arange(len(gallery_rows))
                queries, query_labels, own = embeddings[query_rows], labels[query_rows], position[query_rows]
                gallery_embeddings, gallery_labels = embeddings[gallery_rows], labels[gallery_rows]
        same_set = gallery_embeddings is None
        counts = R.relevant_counts(query_labels, labels if same_set else gallery_labels, same_set=same_set,
                                   own_ids=own)
        k = max(*self.ks, 10, self.map_at_k or 1, int(counts.max(initial=0)), 1)
        gallery_size = len(embeddings) - 1 if same_set else len(gallery_embeddings)
        k = max(1, min(k, gallery_size)) if gallery_size > 0 else k
        search = dict(k=k, metric=self.metric, own_ids=own)
        exact = R.search_neighbours(queries, query_labels, gallery_embeddings, gallery_labels, **search,
                                    query_block_size=self.query_block_size,
                                    gallery_block_size=self.gallery_block_size)
        self.details = {"neighbours": exact, **rows}
        out = self._metrics(exact, k)
        if self.full_map:
            out["map"] = R.mean_average_precision(queries, query_labels, gallery_embeddings, gallery_labels,
                                                  metric=self.metric, own_ids=own)
        if self.index is not None:
            approx = R.search_neighbours(queries, query_labels, gallery_embeddings, gallery_labels, **search,
                                         index=self.index)
            self.details["neighbours"] = approx
            exact_out = out
            out = self._metrics(approx, k)
            out.update({f"exact/{key}": value for key, value in exact_out.items()})
            out["ann_neighbour_recall"] = _neighbour_recall(exact.ids, approx.ids)
            out["ann_map@r_loss"] = exact_out["map@r"] - out["map@r"]
        return out

    def _metrics(self, nb: R.Neighbours, k: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for cut in self.ks:
            if cut <= k:
                out[f"recall@{cut}"] = R.recall_from_neighbours(nb, cut)
                out[f"precision@{cut}"] = R.precision_from_neighbours(nb, cut)
        out["r_precision"] = R.r_precision_from_neighbours(nb)
        out["map@r"] = R.map_at_r_from_neighbours(nb)
        if self.map_at_k is not None:
            out[f"map@{self.map_at_k}"] = R.map_at_k_from_neighbours(nb, min(self.map_at_k, k))
        if k >= 10:
            out["mp@10"] = R.precision_from_neighbours(nb, 10)
        out["num_queries"] = int(nb.valid.sum())
        out["num_queries_without_relevant"] = int((~nb.valid).sum())
        return out


def _neighbour_recall(exact_ids: np.ndarray, approx_ids: np.ndarray) -> float:
    """Fraction of the exact top-k neighbours that the ANN index also returned."""
    hits = total = 0
    for exact_row, approx_row in zip(exact_ids, approx_ids):
        wanted = exact_row[exact_row >= 0]
        hits += np.isin(wanted, approx_row).sum()
        total += wanted.size
    return float(hits / total) if total else float("nan")


def sample_pairs(labels: np.ndarray, *, max_genuine_pairs: int, max_impostor_pairs: int,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Genuine and impostor index pairs (i < j): all of them when they fit under the caps, else a uniform
    random sample (impostors drawn with replacement). Returned shuffled, as (first, second, same)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    if n * (n - 1) // 2 <= max_genuine_pairs + max_impostor_pairs:
        first, second = np.triu_indices(n, k=1)
        same = labels[first] == labels[second]
        keep = np.r_[_cap(np.nonzero(same)[0], max_genuine_pairs, rng), _cap(np.nonzero(~same)[0],
                                                                           max_impostor_pairs, rng)]
        first, second, same = first[keep], second[keep], same[keep]
    else:
        first_g, second_g = _genuine_pairs(labels, max_genuine_pairs, rng)
        first_i = rng.integers(0, n, size=2 * max_impostor_pairs + 16)
        second_i = rng.integers(0, n, size=first_i.size)
        differ = labels[first_i] != labels[second_i]
        first_i, second_i = first_i[differ][:max_impostor_pairs], second_i[differ][:max_impostor_pairs]
        first = np.r_[first_g, np.minimum(first_i, second_i)]
        second = np.r_[second_g, np.maximum(first_i, second_i)]
        same = np.r_[np.ones(first_g.size, bool), np.zeros(first_i.size, bool)]
    order = rng.permutation(first.size)
    return first[order], second[order], same[order]


def _cap(indices: np.ndarray, cap: int, rng) -> np.ndarray:
    return indices if indices.size <= cap else np.sort(rng.choice(indices, cap, replace=False))


def _genuine_pairs(labels: np.ndarray, cap: int, rng) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    total = int((counts * (counts - 1) // 2).sum())
    firsts, seconds = [], []
    keep_prob = min(1.0, cap / max(total, 1))
    for start, count in zip(starts, counts):
        if count < 2:
            continue
        a, b = np.triu_indices(count, k=1)
        if keep_prob < 1.0:
            pick = rng.random(a.size) < keep_prob
            a, b = a[pick], b[pick]
        members = order[start:start + count]
        firsts.append(members[a])
        seconds.append(members[b])
    if not firsts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    first, second = np.concatenate(firsts), np.concatenate(seconds)
    return np.minimum(first, second)[:cap], np.maximum(first, second)[:cap]


@register("evaluator", "verification", example={"num_bootstrap": 10})
class VerificationEvaluator(Evaluator):
    """1:1 verification on pairs: AUC (with bootstrap CI), EER, TAR at each FAR (with bootstrap CI), the
    10-fold accuracy of the LFW protocol, and the best threshold.

    Called on ``(embeddings, labels)`` it scores all genuine and impostor pairs (or a uniform sample beyond
    the caps); ``evaluate_pairs(scores, same)`` takes given pairs (e.g. LFW's pairs.txt, in file order).

    Keys: "auc", "auc_ci95_low/high", "eer", "eer_threshold", "accuracy", "accuracy_std", "best_threshold",
    "best_accuracy", "tar@far=1e-3" (+ "_ci95_low/high", "threshold@far=1e-3" and "tar@far=1e-3/available",
    1.0 when there are >= 1/FAR impostor pairs, else 0.0 with NaN values), "num_genuine", "num_impostor".
    """

    name = "verification"
    primary_metric = "verification/tar@far=1e-3"

    def __init__(self, *, fars=V.FARS, folds: int = 10, max_genuine_pairs: int = 1_000_000,
                 max_impostor_pairs: int = 1_000_000, num_bootstrap: int = 100, metric: str = "cosine",
                 seed: int = 0) -> None:
        super().__init__()
        self.fars = tuple(V.check_rate(f"fars[{i}]", far) for i, far in enumerate(fars))
        # The upper bound of folds (the number of pairs) is checked once the pairs are drawn.
        self.folds = check_int("folds", folds, low=2)
        self.num_bootstrap = check_non_negative_int("num_bootstrap", num_bootstrap)  # 0: no confidence intervals
        self.metric, self.seed = metric, seed
        self.max_genuine_pairs, self.max_impostor_pairs = max_genuine_pairs, max_impostor_pairs

    def evaluate(self, embeddings, labels) -> dict[str, float]:
        first, second, same = sample_pairs(labels, max_genuine_pairs=self.max_genuine_pairs,
                                           max_impostor_pairs=self.max_impostor_pairs, seed=self.seed)
        scores = np.concatenate([V.pair_scores(embeddings[first[i:i + 262144]], embeddings[second[i:i + 262144]],
                                               metric=self.metric) for i in range(0, max(first.size, 1), 262144)])
        return self._evaluate_scores(scores[:first.size], same)

    def evaluate_pairs(self, scores, same, *, fold_ids=None) -> dict[str, float]:
        """Metrics for given pair ``scores`` (P,) and ``same`` (P,) flags (and the listed ``fold_ids`` of the
        k-fold accuracy, if any), keys prefixed "verification/"."""
        self.details = {}
        out = self._evaluate_scores(*V.as_pairs(scores, same), fold_ids=fold_ids)
        return {f"{self.name}/{k}": float(v) for k, v in out.items()}

    def _evaluate_scores(self, scores: np.ndarray, same: np.ndarray, fold_ids=None) -> dict[str, float]:
        V._require_both(same)
        boot = dict(num_bootstrap=self.num_bootstrap, seed=self.seed)
        num_impostor = int((~same).sum())
        out: dict[str, float] = {"num_genuine": int(same.sum()), "num_impostor": num_impostor}
        out["auc"] = V.auc(scores, same)
        out["auc_ci95_low"], out["auc_ci95_high"] = V.bootstrap_ci(scores, same, V.auc, **boot)
        out["eer"], out["eer_threshold"] = V.eer(scores, same)
        folds = min(self.folds, len(scores))
        kfold = V.verification_kfold(scores, same, folds=folds, fold_ids=fold_ids)
        out["accuracy"], out["accuracy_std"] = kfold["accuracy"], kfold["accuracy_std"]
        out["best_threshold"], out["best_accuracy"] = V.best_threshold(scores, same)
        for far in self.fars:
            key = f"tar@far={V.far_key(far)}"
            available = V.far_supported(num_impostor, far)
            out[f"{key}/available"] = float(available)
            out[key] = V.tar_at_far(scores, same, far)
            out[f"threshold@far={V.far_key(far)}"] = V.threshold_at_far(scores, same, far)
            if available:
                out[f"{key}_ci95_low"], out[f"{key}_ci95_high"] = V.bootstrap_ci(
                    scores, same, lambda s, m, far=far: V.tar_at_far(s, m, far), **boot)
            else:
                out[f"{key}_ci95_low"] = out[f"{key}_ci95_high"] = math.nan
        self.details = {"scores": scores, "same": same, "threshold": out["best_threshold"],
                        "eer": out["eer"], "eer_threshold": out["eer_threshold"]}
        return out


@register("evaluator", "identification", example={"unknown_fraction": 0.25})
class IdentificationEvaluator(Evaluator):
    """1:N identification from one labelled set: identities are shuffled (seeded); ``unknown_fraction`` of
    them are not enrolled (their images become non-mated probes); each other identity enrols its first
    ``enroll_per_identity`` images (one template per identity, mean of normalised embeddings, when more
    than one) and its remaining images are mated probes.

    Keys: "rank@r" (closed-set CMC over mated probes), "dir@fpir=1e-2" / "fnir@fpir=1e-2" (open set, NaN
    with ".../available" = 0.0 when there are fewer than 1/FPIR non-mated probes) and, when
    ``distractor_counts`` is set, "rank1@distractors=n" (synthetic distractors unless given at call time).
    """

    name = "identification"
    primary_metric = "identification/rank@1"

    def __init__(self, *, ranks=(1, 5, 10), fpirs=(1e-1, 1e-2, 1e-3), unknown_fraction: float = 0.2,
                 enroll_per_identity: int = 1, distractor_counts=None, metric: str = "cosine",
                 seed: int = 0) -> None:
        super().__init__()
        self.ranks = _check_ks("ranks", ranks)
        self.fpirs = tuple(float(f) for f in fpirs)
        unknown_fraction = check_in_range("unknown_fraction", unknown_fraction, 0, 1, high_inclusive=False)
        self.unknown_fraction, self.enroll_per_identity = unknown_fraction, enroll_per_identity
        self.distractor_counts = None if distractor_counts is None else tuple(distractor_counts)
        self.metric, self.seed = metric, seed

    def split(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(enrolled item indices, probe item indices)."""
        rng = np.random.default_rng(self.seed)
        identities = rng.permutation(np.unique(labels))
        unknown = set(identities[: int(round(self.unknown_fraction * len(identities)))].tolist())
        enrolled, probes, seen = [], [], {}
        for i, label in enumerate(labels.tolist()):
            if label in unknown:
                probes.append(i)
            elif seen.get(label, 0) < self.enroll_per_identity:
                enrolled.append(i)
                seen[label] = seen.get(label, 0) + 1
            else:
                probes.append(i)
        return np.array(enrolled, np.int64), np.array(probes, np.int64)

    def evaluate(self, embeddings, labels, *, distractor_embeddings=None) -> dict[str, float]:
        from deepmetric.eval import identification as I

        enrolled, probes = self.split(labels)
        gallery, gallery_labels = embeddings[enrolled], labels[enrolled]
        if self.enroll_per_identity > 1:
            gallery, gallery_labels = I.make_templates(gallery, gallery_labels)
        if len(probes) == 0 or len(gallery) == 0:
            raise ValueError("identification needs identities with at least two images "
                             f"(enroll_per_identity={self.enroll_per_identity} plus a probe)")
        queries, query_labels = embeddings[probes], labels[probes]
        out: dict[str, float] = {}
        curve = I.cmc(queries, query_labels, gallery, gallery_labels, max_rank=max(self.ranks), metric=self.metric)
        for r in self.ranks:
            out[f"rank@{r}"] = curve[r - 1]
        mated, non_mated = I.open_set_scores(queries, query_labels, gallery, gallery_labels, metric=self.metric)
        out["num_mated_probes"], out["num_non_mated_probes"] = len(mated), len(non_mated)
        for fpir in self.fpirs:
            key = V.far_key(fpir)
            available = len(mated) > 0 and V.far_supported(len(non_mated), fpir)
            value = I.dir_at_far(queries, query_labels, gallery, gallery_labels, far=fpir,
                                 metric=self.metric) if available else math.nan
            out[f"dir@fpir={key}"], out[f"fnir@fpir={key}"] = value, 1.0 - value
            out[f"dir@fpir={key}/available"] = float(available)
        self.details = {"cmc": curve, "mated": mated, "non_mated": non_mated}
        if self.distractor_counts:
            distractors = I.distractor_curve(queries, query_labels, gallery, gallery_labels, distractor_embeddings,
                                             counts=self.distractor_counts, seed=self.seed, metric=self.metric)
            for count, value in distractors.items():
                out[f"rank1@distractors={count}"] = value
            self.details["distractors"] = distractors
        return out


@register("evaluator", "fewshot", example={"ways": 3, "queries_per_class": 5, "episodes": 20})
class FewShotEvaluator(Evaluator):
    """N-way K-shot prototype accuracy with its 95% interval (see ``fewshot.fewshot_accuracy``)."""

    name = "fewshot"

    def __init__(self, *, ways: int = 5, shots: int = 1, queries_per_class: int = 15, episodes: int = 600,
                 metric: str = "cosine", seed: int = 0) -> None:
        super().__init__()
        self.ways, self.shots, self.queries_per_class = ways, shots, queries_per_class
        self.episodes, self.metric, self.seed = episodes, metric, seed
        self.primary_metric = f"fewshot/{ways}way{shots}shot/accuracy"

    def evaluate(self, embeddings, labels) -> dict[str, float]:
        from deepmetric.eval.fewshot import fewshot_accuracy

        result = fewshot_accuracy(embeddings, labels, ways=self.ways, shots=self.shots,
                                  queries_per_class=self.queries_per_class, episodes=self.episodes,
                                  metric=self.metric, seed=self.seed)
        prefix = f"{self.ways}way{self.shots}shot"
        return {f"{prefix}/accuracy": result["accuracy"], f"{prefix}/ci95": result["ci95"],
                f"{prefix}/episodes": result["episodes"]}


@register("evaluator", "clustering", example={})
class ClusteringEvaluator(Evaluator):
    """NMI and AMI of k-means clusters (k = number of classes unless given) against the labels."""

    name = "clustering"
    primary_metric = "clustering/nmi"

    def __init__(self, *, num_clusters: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.num_clusters, self.seed = check_positive_int("num_clusters", num_clusters, allow_none=True), seed

    def evaluate(self, embeddings, labels) -> dict[str, float]:
        from deepmetric.eval.clustering import ami, kmeans_assignments, nmi

        count = len(np.unique(labels)) if self.num_clusters is None else self.num_clusters
        assignments = kmeans_assignments(embeddings, count, seed=self.seed)
        self.details = {"clusters": assignments}
        return {"nmi": nmi(embeddings, labels, cluster_assignments=assignments),
                "ami": ami(embeddings, labels, cluster_assignments=assignments)}
