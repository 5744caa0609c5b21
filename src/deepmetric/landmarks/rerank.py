"""Retrieval re-ranking as a chain of stages over the index API: database-side augmentation (DBA) changes the
index vectors, alpha-query expansion (alpha-QE) the query vectors; each stage's time is measured."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from deepmetric.eval.retrieval import drop_own
from deepmetric.index import build_index
from deepmetric.index.topk import as_embeddings
from deepmetric.types import SearchResult
from deepmetric.validation import check_non_negative_float, check_positive_int


def search(queries: np.ndarray, database: np.ndarray, k: int, *, spec: str = "Flat", metric: str = "cosine",
           exclude_self: bool = False) -> SearchResult:
    """Top-``k`` of ``queries`` in ``database`` through ``build_index(spec)``; with ``exclude_self`` the queries
    are the database and each row's own item leaves its list."""
    index = build_index(spec, database.shape[1], metric)
    index.add(database)
    wanted = min(k + 1 if exclude_self else k, len(database))
    found = index.search(queries, wanted)
    if exclude_self:
        found = drop_own(found, np.arange(len(queries)))
    return SearchResult(found.scores[:, :k], found.ids[:, :k])


def weighted_neighbour_mean(vectors: np.ndarray, own: np.ndarray, neighbours: SearchResult, *, top_n: int,
                            alpha: float) -> np.ndarray:
    r""":math:`\mathrm{normalise}(x + \sum_{i \le n} \max(s_i, 0)^{\alpha} y_i)`: each row ``own[r]`` plus its
    ``top_n`` neighbours (rows of ``vectors``, similarities :math:`s_i`) weighted by similarity to the power
    alpha -- the update of both alpha-QE and alpha-DBA (Radenovic et al. 2018)."""
    ids, scores = neighbours.ids[:, :top_n], neighbours.scores[:, :top_n].astype(np.float64)
    weights = np.where(ids >= 0, np.maximum(np.nan_to_num(scores, neginf=0.0), 0.0) ** alpha, 0.0)
    total = own.astype(np.float64) + np.einsum("qn,qnd->qd", weights, vectors[np.maximum(ids, 0)].astype(np.float64))
    return (total / np.maximum(np.linalg.norm(total, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class _NeighbourStage:
    """What alpha-QE and alpha-DBA share: ``top_n`` neighbours weighted by similarity^``alpha``, found through
    ``build_index(spec)`` with ``metric``."""

    top_n: int = 2
    alpha: float = 3.0
    spec: str = "Flat"
    metric: str = "cosine"

    def __post_init__(self) -> None:
        check_positive_int("top_n", self.top_n)
        check_non_negative_float("alpha", self.alpha)


@dataclass(frozen=True)
class QueryExpansion(_NeighbourStage):
    r"""alpha-query expansion (alpha-QE; Radenovic, Tolias, Chum 2018, "Fine-tuning CNN Image Retrieval with No
    Human Annotation"): a query is replaced by

    .. math:: q' = \mathrm{normalise}\Big(q + \sum_{i=1}^{n} \max(s_i, 0)^{\alpha}\, x_i\Big)

    over its ``top_n`` nearest database vectors :math:`x_i` (similarities :math:`s_i`); ``alpha = 0`` is the
    average query expansion of Chum et al. 2007. Costs one extra search per query.

    Example:
        >>> db = np.array([[1, 0], [0.8, 0.6], [0, 1]], np.float32)
        >>> q, _ = QueryExpansion(top_n=1, alpha=0).apply(np.array([[0.6, 0.8]], np.float32), db)
        >>> np.round(q, 3)  # (q + its nearest, [0.8, 0.6]) normalised
        array([[0.707, 0.707]], dtype=float32)
    """

    name: str = field(default="alpha-QE", init=False)

    def apply(self, queries: np.ndarray, database: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = search(queries, database, self.top_n, spec=self.spec, metric=self.metric)
        return weighted_neighbour_mean(database, queries, found, top_n=self.top_n, alpha=self.alpha), database


@dataclass(frozen=True)
class DatabaseAugmentation(_NeighbourStage):
    r"""alpha-database-side augmentation (alpha-DBA; Arandjelovic & Zisserman 2012, "Three things everyone
    should know to improve object retrieval", with Radenovic et al. 2018's weights): every database vector is
    replaced by

    .. math:: x' = \mathrm{normalise}\Big(x + \sum_{i=1}^{n} \max(s_i, 0)^{\alpha}\, x_i\Big)

    over its ``top_n`` nearest other database vectors; done once, offline, before the index is built.

    Example:
        >>> db = np.array([[1, 0], [0.8, 0.6], [0, 1]], np.float32)
        >>> _, new = DatabaseAugmentation(top_n=1, alpha=0).apply(np.zeros((0, 2), np.float32), db)
        >>> np.round(new[2], 3)  # item 2 pulled towards its nearest, item 1
        array([0.447, 0.894], dtype=float32)
    """

    name: str = field(default="alpha-DBA", init=False)

    def apply(self, queries: np.ndarray, database: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(database) < 2:
            return queries, database
        found = search(database, database, min(self.top_n, len(database) - 1), spec=self.spec, metric=self.metric,
                       exclude_self=True)
        return queries, weighted_neighbour_mean(database, database, found, top_n=self.top_n, alpha=self.alpha)


@dataclass(frozen=True)
class Retrieval:
    """The final ranking (``SearchResult`` of database positions) and the wall-clock seconds of each stage by
    name, in order, the final search last."""

    result: SearchResult
    timings: dict[str, float]


def retrieve(queries, database, *, k: int = 100, stages=(), spec: str = "Flat", metric: str = "cosine") -> Retrieval:
    """Run ``stages`` in order (each maps ``(queries, database)`` to new vectors: DBA first, then QE, as in the
    published pipelines), then rank the database for every query through ``build_index(spec)``.

    Example:
        >>> db = np.eye(3, dtype=np.float32)
        >>> out = retrieve(np.array([[0.1, 1, 0]], np.float32), db, k=2, stages=[QueryExpansion(top_n=1)])
        >>> out.result.ids.tolist(), list(out.timings)
        ([[1, 0]], ['alpha-QE', 'search'])
    """
    queries = np.asarray(as_embeddings("queries", queries), np.float32)
    database = np.asarray(as_embeddings("database", database, dim=queries.shape[1]), np.float32)
    k = check_positive_int("k", k)
    timings: dict[str, float] = {}
    for stage in stages:
        start = time.perf_counter()
        queries, database = stage.apply(queries, database)
        timings[stage.name] = timings.get(stage.name, 0.0) + time.perf_counter() - start
    start = time.perf_counter()
    result = search(queries, database, min(k, len(database)), spec=spec, metric=metric)
    timings["search"] = time.perf_counter() - start
    return Retrieval(result, timings)
