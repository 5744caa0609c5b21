import numpy as np
import pytest
import torch

from deepmetric.eval import knn


def brute_force(queries, gallery, k, exclude_self):
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    scores = (torch.from_numpy(q) @ torch.from_numpy(g).T).numpy()
    ids = np.full((len(q), k), -1)
    for i, row in enumerate(scores):
        candidates = [j for j in range(len(g)) if not (exclude_self and j == i)]
        # score descending, then index ascending
        candidates.sort(key=lambda j: (-row[j], j))
        ids[i, :min(k, len(candidates))] = candidates[:k]
    return ids


@pytest.fixture
def tied_data():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(12, 8)).astype(np.float32)
    # many exact duplicates -> many exactly tied scores
    return base[rng.integers(0, 12, size=90)]


def test_matches_brute_force_with_ties(tied_data):
    result = knn(tied_data, k=7)
    np.testing.assert_array_equal(result.ids, brute_force(tied_data, tied_data, 7, exclude_self=True))


@pytest.mark.parametrize("query_block_size,gallery_block_size", [(1, 1), (2, 3), (7, 5), (64, 16), (90, 90)])
def test_block_size_independence(tied_data, query_block_size, gallery_block_size):
    reference = knn(tied_data, k=9, query_block_size=1000, gallery_block_size=1000)
    result = knn(tied_data, k=9, query_block_size=query_block_size, gallery_block_size=gallery_block_size)
    np.testing.assert_array_equal(result.ids, reference.ids)
    np.testing.assert_array_equal(result.scores, reference.scores)


def test_block_size_independence_random_large():
    x = np.random.default_rng(1).normal(size=(160, 16)).astype(np.float32)
    a = knn(x, k=20, query_block_size=1, gallery_block_size=1)
    b = knn(x, k=20, query_block_size=100, gallery_block_size=64)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)


def test_k_larger_than_gallery_pads_with_minus_one():
    x = np.eye(3, dtype=np.float32)
    result = knn(x, k=5)
    assert (result.ids[:, 2:] == -1).all() and np.isneginf(result.scores[:, 2:]).all()
    assert result.ids[0, :2].tolist() == [1, 2]


def test_separate_gallery_and_euclidean():
    rng = np.random.default_rng(2)
    q, g = rng.normal(size=(5, 4)).astype(np.float32), rng.normal(size=(30, 4)).astype(np.float32)
    result = knn(q, g, k=3, metric="euclidean", gallery_block_size=7)
    dist = np.linalg.norm(q[:, None] - g[None], axis=-1)
    np.testing.assert_array_equal(result.ids, np.argsort(dist, axis=1)[:, :3])
    np.testing.assert_allclose(-result.scores, np.sort(dist, axis=1)[:, :3], rtol=1e-4, atol=1e-5)


def test_bad_input_names_argument():
    with pytest.raises(ValueError, match="k must be a positive integer"):
        knn(np.eye(3), k=0)
    with pytest.raises(ValueError, match="query_embeddings must be a 2-D"):
        knn(np.ones(3), k=1)
    with pytest.raises(ValueError, match="NaN"):
        knn(np.array([[np.nan, 1.0]]), k=1)
    with pytest.raises(ValueError, match="metric"):
        knn(np.eye(3), k=1, metric="cos")
