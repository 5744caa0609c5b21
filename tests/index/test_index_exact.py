"""The exact index (``Flat``) is the exact engine behind the VectorIndex contract: for every metric and alias,
every candidate-pass precision, subsets (small: the brute-force path; large: the allowed mask), removed ids
and range search, its ids and scores equal an independent numpy computation of the engine's float32
arithmetic, ties going to the item added first; and a float64 brute force agrees wherever scores are apart."""

import sys

import numpy as np
import pytest

from deepmetric.index import build_index, load_index
from deepmetric.index.base import SMALL_SUBSET
from deepmetric.index.exact import ExactIndex
from index_reference import brute_force, clustered, lane_scores, ranked

METRICS = ["cosine", "dot", "euclidean"]
CANONICAL = {"ip": "dot", "l2": "euclidean"}


def tied_database(n=900, dim=12, seed=3):
    """Clustered vectors of varying norms, a third of them exact copies of others: many exactly tied scores."""
    rng = np.random.default_rng(seed)
    x = clustered(n, dim, seed=seed) * np.linspace(0.5, 2, n, dtype=np.float32)[:, None]
    copies = rng.integers(0, n, size=n // 3)
    x[rng.choice(n, size=n // 3, replace=False)] = x[copies]
    return np.ascontiguousarray(x)


def prepared(x, metric):
    """The vectors as the index stores them: cosine divides by the float32 norms, the others are unchanged."""
    return x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cosine" else x


def reference(database, queries, metric, k, labels=None):
    """Ids (positions in ``database``) and scores by the engine's arithmetic among ``labels`` (default all)."""
    metric = CANONICAL.get(metric, metric)
    scores = lane_scores(prepared(queries, metric), prepared(database, metric),
                         "euclidean" if metric == "euclidean" else "dot")
    if labels is not None:
        blocked = np.ones(database.shape[0], bool)
        blocked[labels] = False
        scores[:, blocked] = -np.inf
    return ranked(scores, k)


@pytest.mark.parametrize("metric", [*METRICS, "ip", "l2"])
@pytest.mark.parametrize("precision", ["auto", "float32", "bfloat16"])
@pytest.mark.parametrize("k", [1, 7, 60])
def test_exact_index_is_the_engine_arithmetic_with_ties(metric, precision, k):
    database, queries = tied_database(), clustered(40, 12, seed=4)
    queries = np.concatenate([queries, database[:10]])  # queries that equal stored items (and their copies)
    ids = np.arange(database.shape[0], dtype=np.int64) * 7 + 3
    index = ExactIndex(dim=12, metric=metric, precision=precision, query_block=16, database_block=100)
    index.add(database, ids)
    assert index.metric == CANONICAL.get(metric, metric)
    result = index.search(queries, k)
    positions, scores = reference(database, queries, metric, k)
    np.testing.assert_array_equal(result.ids, ids[positions])
    np.testing.assert_array_equal(result.scores, scores)
    # an independent float64 brute force agrees wherever neighbouring scores are clearly apart
    ref_scores, ref_positions = brute_force(database, queries, metric, k + 1)
    np.testing.assert_allclose(result.scores, ref_scores[:, :k], rtol=1e-5, atol=1e-5)
    gaps = np.minimum(np.abs(np.diff(ref_scores, axis=1, prepend=np.inf)[:, :k]), -np.diff(ref_scores, axis=1))
    clear = gaps > 1e-4
    np.testing.assert_array_equal(result.ids[clear], ids[ref_positions[:, :k][clear]])


@pytest.mark.parametrize("metric", METRICS)
def test_subsets_and_removed_ids_are_exact(metric):
    database, queries = tied_database(n=SMALL_SUBSET + 600, seed=5), clustered(30, 12, seed=6)
    ids = np.random.default_rng(7).permutation(10 * database.shape[0])[: database.shape[0]].astype(np.int64)
    index = build_index("Flat", 12, metric=metric)
    assert isinstance(index, ExactIndex)  # "Flat" is our engine: no optional library needed
    index.add(database, ids)
    rng = np.random.default_rng(8)
    small = rng.choice(database.shape[0], size=300, replace=False)  # the brute-force path of the base class
    large = rng.choice(database.shape[0], size=SMALL_SUBSET + 100, replace=False)  # the allowed mask
    for subset in (small, large):
        result = index.search(queries, 9, subset=ids[subset])
        positions, scores = reference(database, queries, metric, 9, labels=subset)
        np.testing.assert_array_equal(result.ids, ids[positions])
        np.testing.assert_array_equal(result.scores, scores)
    removed = rng.choice(database.shape[0], size=database.shape[0] // 5, replace=False)  # tombstones, no compaction
    index.remove(ids[removed])
    assert index.num_tombstones == removed.size
    kept = np.setdiff1d(np.arange(database.shape[0]), removed)
    result = index.search(queries, 9)
    positions, scores = reference(database, queries, metric, 9, labels=kept)
    np.testing.assert_array_equal(result.ids, ids[positions])
    np.testing.assert_array_equal(result.scores, scores)


@pytest.mark.parametrize("metric", METRICS)
def test_range_search_is_exact(metric):
    database, queries = tied_database(n=600, seed=9), clustered(12, 12, seed=10)
    index = build_index("Flat", 12, metric=metric)
    index.add(database)
    index.remove([0, 5, 11])
    positions, scores = reference(database, queries, metric, database.shape[0],
                                  labels=np.setdiff1d(np.arange(600), [0, 5, 11]))
    threshold = float(np.median(scores[:, 40]))
    found = index.range_search(queries, threshold)
    for row in range(len(queries)):
        keep = scores[row] >= threshold
        found_ids, found_scores = found[row]
        np.testing.assert_array_equal(found_ids, positions[row][keep])
        np.testing.assert_array_equal(found_scores, scores[row][keep])


def test_empty_and_k_beyond_the_index():
    index = ExactIndex(dim=4)
    result = index.search(np.eye(4, dtype=np.float32), k=2)
    assert (result.ids == -1).all() and np.isneginf(result.scores).all()
    index.add(np.eye(4, dtype=np.float32)[:3], ids=[5, 6, 7])
    result = index.search(np.eye(4, dtype=np.float32)[:1], k=5)
    assert result.ids[0].tolist() == [5, 6, 7, -1, -1]  # ties (0.0) to the item added first


@pytest.mark.parametrize("spec,precision", [("Flat", "auto"), ("Flat,bf16", "bfloat16"), ("Flat,float32", "float32")])
def test_spec_precision_survives_save_and_load(tmp_path, spec, precision):
    database = tied_database(n=300, seed=11)
    index = build_index(spec, 12, metric="l2")
    assert index.precision == precision and index.metric == "euclidean"
    index.add(database)
    index.save(tmp_path / "index")
    loaded = load_index(tmp_path / "index", mmap=True)
    assert loaded.precision == precision and loaded.metric == "euclidean"
    np.testing.assert_array_equal(loaded.search(database[:20], 5).ids, index.search(database[:20], 5).ids)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="precision must be one of"):
        ExactIndex(dim=4, precision="bf8")
    with pytest.raises(ValueError, match="query_block must be a positive integer"):
        ExactIndex(dim=4, query_block=0)
    with pytest.raises(ValueError, match="exact backend spec"):
        build_index("Flat,fp8", 4)
    with pytest.raises(TypeError, match="metric must be a string"):
        ExactIndex(dim=4, metric=None)


def test_flat_needs_no_optional_library(monkeypatch):
    # the gallery's exact path builds "Flat": it must work where faiss (the [index] extra) is not installed
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes "import faiss" raise ImportError
    index = build_index("Flat", 4)
    index.add(np.eye(4, dtype=np.float32), ids=[9, 8, 7, 6])
    index.remove([8])
    assert index.search(np.eye(4, dtype=np.float32)[1:2], k=2).ids.tolist() == [[9, 7]]
    with pytest.raises(ImportError):
        build_index("Flat", 4, backend="faiss")
