"""Every backend against brute-force search: recall, score conventions, ids, removal, restriction, range."""

import numpy as np
import pytest

from deepmetric.index import build_index
from index_reference import brute_force

# (spec, backend, knobs, minimum 10-recall@10 on the clustered test data)
CASES = [
    ("Flat", "exact", None, 1.0),
    ("Flat,bf16", "exact", None, 1.0),
    ("Flat", "faiss", None, 1.0),
    ("IVF16,Flat", "faiss", "nprobe=16", 1.0),
    ("IVF16,PQ4x4", "faiss", "nprobe=16", 0.2),
    ("IVF16,PQ4x4,Refine(Flat)", "faiss", "nprobe=16,k_factor=32", 0.95),
    ("HNSW16", "faiss", "efSearch=64", 0.95),
    ("HNSW16", "hnswlib", "efSearch=64", 0.95),
    ("Annoy10", "annoy", "search_k=2000", 0.9),
]
METRICS = ["cosine", "dot", "euclidean"]


def built(spec, backend, knobs, metric, database, ids):
    index = build_index(spec, database.shape[1], metric=metric, backend=backend)
    # A few hundred points train a 16-list quantiser and 4-bit codebooks; more only slows the test.
    index.train(database[:800])
    index.add(database, ids)
    if knobs:
        index.set_params(knobs)
    return index


def recall(found, expected):
    return np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, expected)])


# Score conversions differ per library and metric; PQ training is slow, so PQ runs with cosine only.
METRIC_CASES = [(*case, metric) for case in CASES for metric in METRICS if metric == "cosine" or "PQ" not in case[0]]


@pytest.mark.parametrize("spec,backend,knobs,minimum,metric", METRIC_CASES)
def test_backend_matches_brute_force(data, spec, backend, knobs, minimum, metric):
    database, queries, ids = data
    scale = np.linspace(0.5, 2.0, database.shape[0], dtype=np.float32)[:, None]  # dot and euclidean see the norms
    database = database * scale
    index = built(spec, backend, knobs, metric, database, ids)
    result = index.search(queries, k=10)
    ref_scores, ref_positions = brute_force(database, queries, metric, 10)
    assert result.ids.dtype == np.int64 and result.scores.shape == (queries.shape[0], 10)
    assert recall(result.ids, ids[ref_positions]) >= minimum
    # Higher = closer for every metric: sorted in decreasing order.
    assert np.all(np.diff(result.scores, axis=1) <= 1e-5)
    exact_top = result.ids[:, 0] == ids[ref_positions[:, 0]]
    if "PQ" not in spec or "Refine" in spec:
        np.testing.assert_allclose(result.scores[exact_top, 0], ref_scores[exact_top, 0], rtol=1e-3, atol=1e-3)
    assert len(index) == database.shape[0]


@pytest.mark.parametrize("spec,backend,knobs,minimum", CASES)
def test_remove_restrict_and_range(data, spec, backend, knobs, minimum):
    database, queries, ids = data
    index = built(spec, backend, knobs, "cosine", database, ids)
    removed = ids[::3]
    assert index.remove(np.concatenate([removed, [-5]])) == removed.size
    assert len(index) == ids.size - removed.size and removed[0] not in index
    result = index.search(queries, k=10)
    assert not np.isin(result.ids, removed).any()
    kept = ~np.isin(ids, removed)
    _, positions = brute_force(database[kept], queries, "cosine", 10)
    assert recall(result.ids, ids[kept][positions]) >= minimum - 0.05

    # Restricted search: a small subset is answered exactly, a large one through the backend.
    for subset in (ids[kept][:50], ids[kept][: 3 * ids[kept].size // 4]):
        restricted = index.search(queries, k=5, subset=subset)
        assert np.isin(restricted.ids[restricted.ids >= 0], subset).all()
        allowed = np.isin(ids, subset)
        _, positions = brute_force(database[allowed], queries, "cosine", 5)
        assert recall(restricted.ids, ids[allowed][positions]) >= minimum - 0.1

    # Range search against brute force (the threshold keeps a few dozen items per query).
    threshold = 0.9
    ranged = index.range_search(queries[:10], threshold)
    scores, positions = brute_force(database[kept], queries[:10], "cosine", int(kept.sum()))
    for row in range(10):
        expected = set(ids[kept][positions[row][scores[row] >= threshold]].tolist())
        found_ids, found_scores = ranged[row]
        assert np.all(found_scores >= threshold - 1e-6) and np.all(np.diff(found_scores) <= 1e-6)
        if expected:
            assert len(set(found_ids.tolist()) & expected) / len(expected) >= minimum - 0.1
        assert set(found_ids.tolist()) <= set(ids[kept].tolist())


def test_k_larger_than_index_pads_with_missing():
    index = build_index("HNSW8", 4, backend="hnswlib")
    index.add(np.eye(4, dtype=np.float32), ids=[10, 20, 30, 40])
    result = index.search(np.eye(4, dtype=np.float32)[:2], k=6)
    assert (result.ids[:, 4:] == -1).all() and np.isneginf(result.scores[:, 4:]).all()
    assert result.ids[0, 0] == 10 and result.ids[1, 0] == 20


@pytest.mark.parametrize("spec,backend", [("HNSW16", "faiss"), ("Annoy5", "annoy")])
def test_compaction_after_many_removals_keeps_ids(data, spec, backend):
    database, _, ids = data
    index = built(spec, backend, None, "cosine", database, ids)
    index.remove(ids[:1000])  # over the compaction threshold: the library index is rebuilt
    assert index.num_tombstones == 0 and len(index) == 1000
    result = index.search(database[1000:1010], k=1)
    np.testing.assert_array_equal(result.ids[:, 0], ids[1000:1010])


def test_annoy_add_after_build_is_searchable(data):
    database, _, ids = data
    index = build_index("Annoy10", database.shape[1], backend="annoy")
    index.add(database[:1500], ids[:1500])
    index.search(database[:1], k=1)  # builds the forest
    index.add(database[1500:], ids[1500:])  # waits in the exactly searched buffer
    result = index.search(database[1500:1600], k=1)
    np.testing.assert_array_equal(result.ids[:, 0], ids[1500:1600])
    assert len(index) == database.shape[0]


def test_default_ids_and_duplicate_ids(data):
    database, _, _ = data
    index = build_index("Flat", database.shape[1], backend="exact")
    index.add(database[:10])
    index.add(database[10:20])
    np.testing.assert_array_equal(index.ids, np.arange(20))
    with pytest.raises(ValueError, match="already in the index"):
        index.add(database[:1], ids=[3])
    with pytest.raises(ValueError, match="duplicates"):
        index.add(database[:2], ids=[100, 100])
    index.remove([3])
    index.add(database[:1], ids=[3])  # a removed id can come back
    assert index.search(database[:1], k=1).ids[0, 0] in (0, 3)
