"""Query-time knob sweeps and the tuner: the cheapest knob setting that reaches a target recall, measured
against exact search on sample queries.

Recall is ``1-Recall@k``: the share of queries whose true nearest neighbour is among the k returned
(``k=1`` is the seeds' 1-Recall@1).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from deepmetric.index.base import VectorIndex, as_ids, format_knobs

POWERS = [2 ** i for i in range(13)]
# Graph search lists grow by factors of ~1.5 (16, 24, 32, 48, ...): recall moves fast at small efSearch.
EF_SEARCH = [e for p in POWERS for e in (p, 3 * p // 2) if 16 <= e <= 1024]


@dataclass(frozen=True)
class SweepPoint:
    """One knob setting: recall against exact search, wall time for all queries, queries per second."""

    knobs: str
    recall: float
    seconds: float
    qps: float


@dataclass(frozen=True)
class TuneResult:
    """The chosen setting (None when no setting reaches the target) and every setting tried."""

    knobs: str | None
    recall: float
    qps: float
    tried: list[SweepPoint] = field(default_factory=list)


def knob_grid(index: VectorIndex, k: int = 1) -> list[str]:
    """Knob settings in increasing cost for ``index``'s backend; empty string = no knob."""
    names = index.knob_names()
    if index.backend == "faiss":
        axes: list[list[str]] = []
        if "nprobe" in names:
            nlist = max(int(ivf.nlist) for ivf in index._ivf())
            axes.append([f"nprobe={p}" for p in POWERS if p <= nlist])
        if "efSearch" in names:
            axes.append([f"efSearch={e}" for e in EF_SEARCH if e >= k])
        if "k_factor" in names:
            axes.insert(0, [f"k_factor={f}" for f in (1, 4, 16, 64)])  # 4-bit fast-scan codes need 64
        grid = [""]
        for axis in axes:
            grid = [",".join(filter(None, (a, b))) for a in grid for b in axis]
        return grid
    if index.backend == "hnswlib":
        return [f"efSearch={e}" for e in EF_SEARCH if e >= k]
    if index.backend == "annoy":
        return [f"search_k={index.trees * k * p}" for p in POWERS]
    return [""]


def exact_neighbours(database: np.ndarray, queries: np.ndarray, *, metric: str, k: int = 1) -> np.ndarray:
    """Positions (Q, k) of the true nearest neighbours, by the exact engine (ties to the lowest position)."""
    from deepmetric.index.topk import knn

    return knn(queries, database, k=k, metric=metric, exclude_self=False).ids


def sweep(index: VectorIndex, queries: Any, true_ids: np.ndarray, settings: list[str], *, k: int = 1,
          stop_at: float | None = None, patience: int | None = None,
          max_seconds: float | None = None) -> list[SweepPoint]:
    """Measure every setting in order, stopping after the first one whose recall reaches ``stop_at``,
    once ``patience`` settings in a row gained less than 0.001 recall (a plateau: costlier settings of a
    compressed index cannot recover what its codes lost), or after a setting slower than ``max_seconds``
    (e.g. exact search's time: costlier settings are pointless). ``true_ids`` (Q,) holds each query's
    true nearest neighbour id."""
    true_ids = as_ids(true_ids, None, "true_ids")
    points = []
    for knobs in settings:
        if knobs:
            index.set_params(knobs)
        start = time.perf_counter()
        found = index.search(queries, k).ids
        seconds = time.perf_counter() - start
        recall = float((found == true_ids[:, None]).any(axis=1).mean())
        points.append(SweepPoint(knobs or format_knobs(index.knobs), recall, seconds, len(true_ids) / seconds))
        if (stop_at is not None and recall >= stop_at) or (max_seconds is not None and seconds > max_seconds):
            break
        if patience and len(points) > patience and \
                recall - points[-1 - patience].recall < 0.001:
            break
    return points


def tune(index: VectorIndex, queries: Any, *, target_recall: float, database: Any = None,
         database_ids: Any = None, k: int = 1, grid: list[str] | None = None) -> TuneResult:
    """Set and return the fastest knob setting whose 1-Recall@k on ``queries`` reaches ``target_recall``.

    Ground truth is exact search over ``database`` (with ``database_ids``; default: the vectors stored in
    the index, exact for flat and graph indexes, approximate for PQ codes, so pass them for IVF-PQ).
    When no setting reaches the target, the index keeps the most accurate setting and ``knobs`` is None.
    """
    if not 0 < target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall!r}")
    if database is None:
        database_ids = index.ids
        labels = index._labels_of(database_ids)
        database = index._reconstruct(labels)
    else:
        database = index._prepare(database, "database")
        database_ids = as_ids(database_ids if database_ids is not None else np.arange(database.shape[0]),
                              database.shape[0], "database_ids")
    queries = index._prepare(queries, "queries")
    positions = exact_neighbours(database, queries, metric=index.metric, k=1)[:, 0]
    true_ids = database_ids[positions]
    settings = grid if grid is not None else knob_grid(index, k)
    points = sweep_runs(index, queries, true_ids, settings, k=k, stop_at=target_recall)
    reaching = [p for p in points if p.recall >= target_recall]
    chosen = max(reaching, key=lambda p: p.qps) if reaching else max(points, key=lambda p: (p.recall, p.qps))
    if chosen.knobs:
        index.set_params(chosen.knobs)
    return TuneResult(chosen.knobs if reaching else None, chosen.recall, chosen.qps, points)


def sweep_runs(index: VectorIndex, queries: np.ndarray, true_ids: np.ndarray, settings: list[str], *, k: int = 1,
               stop_at: float | None = None, patience: int | None = None,
               max_seconds: float | None = None) -> list[SweepPoint]:
    """Settings sharing every knob but the last form a cost-ordered run; each run stops on its own."""
    runs: dict[str, list[str]] = {}
    for setting in settings:
        head = setting.rpartition(",")[0] if "," in setting else ""
        runs.setdefault(head, []).append(setting)
    points: list[SweepPoint] = []
    for run in runs.values():
        points += sweep(index, queries, true_ids, run, k=k, stop_at=stop_at, patience=patience,
                        max_seconds=max_seconds)
    return points
