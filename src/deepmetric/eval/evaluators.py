"""Evaluators: ``evaluator(embeddings, labels) -> dict[str, float]`` with keys like "retrieval/map@r" and a
``primary_metric``; the curves behind the numbers stay in ``evaluator.details`` for plots and reports.

Unavailable rates (e.g. TAR at a FAR with fewer than 1/FAR impostor pairs) are reported as NaN with a
companion key ".../available" = 0.0, never silently omitted.
"""

from __future__ import annotations

import math

import numpy as np

from deepmetric.eval import retrieval as R
from deepmetric.eval import verification as V
from deepmetric.index.topk import as_embeddings, as_labels


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
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"{name} must be a non-empty sequence of positive integers, got {values!r}")
    return values


class RetrievalEvaluator(Evaluator):
    """Recall@K, Precision@K, R-Precision, MAP@R, mAP@K and mP@10 from one exact blocked search (k = max of
    the cut-offs and the largest class), leave-one-out when no gallery is given.

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
        self.map_at_k = None if map_at_k is None else _check_ks("map_at_k", [map_at_k])[0]
        self.full_map, self.metric, self.index = full_map, metric, index
        self.query_block_size, self.gallery_block_size = query_block_size, gallery_block_size

    def evaluate(self, embeddings, labels, *, gallery_embeddings=None, gallery_labels=None) -> dict[str, float]:
        max_r = R._max_r(labels, gallery_embeddings, gallery_labels)
        k = max(max(self.ks), 10, self.map_at_k or 1, max_r)
        gallery_size = len(embeddings) - 1 if gallery_embeddings is None else len(gallery_embeddings)
        k = max(1, min(k, gallery_size)) if gallery_size > 0 else k
        exact = R.search_neighbours(embeddings, labels, gallery_embeddings, gallery_labels, k=k, metric=self.metric,
                                    query_block_size=self.query_block_size,
                                    gallery_block_size=self.gallery_block_size)
        self.details = {"neighbours": exact}
        out = self._metrics(exact, k)
        if self.full_map:
            out["map"] = R.mean_average_precision(embeddings, labels, gallery_embeddings, gallery_labels,
                                                  metric=self.metric)
        if self.index is not None:
            approx = R.search_neighbours(embeddings, labels, gallery_embeddings, gallery_labels, k=k,
                                         metric=self.metric, index=self.index)
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
        self.fars = tuple(float(f) for f in fars)
        for far in self.fars:
            V._check_far(far)
        self.folds, self.num_bootstrap, self.metric, self.seed = folds, num_bootstrap, metric, seed
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
        if not 0 <= unknown_fraction < 1:
            raise ValueError(f"unknown_fraction must be in [0, 1), got {unknown_fraction!r}")
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


class ClusteringEvaluator(Evaluator):
    """NMI and AMI of k-means clusters (k = number of classes unless given) against the labels."""

    name = "clustering"
    primary_metric = "clustering/nmi"

    def __init__(self, *, num_clusters: int | None = None, seed: int = 0) -> None:
        super().__init__()
        self.num_clusters, self.seed = num_clusters, seed

    def evaluate(self, embeddings, labels) -> dict[str, float]:
        from deepmetric.eval.clustering import ami, kmeans_assignments, nmi

        count = len(np.unique(labels)) if self.num_clusters is None else self.num_clusters
        assignments = kmeans_assignments(embeddings, count, seed=self.seed)
        self.details = {"clusters": assignments}
        return {"nmi": nmi(embeddings, labels, cluster_assignments=assignments),
                "ami": ami(embeddings, labels, cluster_assignments=assignments)}


EVALUATORS = {"retrieval": RetrievalEvaluator, "verification": VerificationEvaluator,
              "identification": IdentificationEvaluator, "fewshot": FewShotEvaluator,
              "clustering": ClusteringEvaluator}


def build_evaluator(protocol: str, **options) -> Evaluator:
    """The evaluator of ``protocol`` ("retrieval", "verification", "identification", "fewshot",
    "clustering") built with ``options``."""
    if protocol not in EVALUATORS:
        raise ValueError(f"protocol must be one of {sorted(EVALUATORS)}, got {protocol!r}")
    return EVALUATORS[protocol](**options)
