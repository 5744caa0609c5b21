"""Our exact index against numpy brute force on both first passes (group maxima for small k, running
top-k for large k), block edges that cut groups, masks, every metric and the bf16 first pass."""

import numpy as np
import pytest

from deepmetric.index.exact import GROUP, ExactIndex
from index_reference import brute_force

from conftest import clustered


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("k", [1, 3, 40])  # 40 * GROUP * 4 > N: the running top-k path
@pytest.mark.parametrize("database_block", [GROUP * 3, 1000])  # 1000: rounded up to a group boundary
def test_exact_matches_brute_force(metric, k, database_block):
    database = clustered(5000 + 37, 12, seed=3) * np.linspace(0.5, 2, 5037, dtype=np.float32)[:, None]
    queries = clustered(70, 12, seed=4)
    index = ExactIndex(dim=12, metric=metric, query_block=32, database_block=database_block)
    index.add(database)
    result = index.search(queries, k)
    ref_scores, ref_positions = brute_force(database, queries, metric, k + 1)
    np.testing.assert_allclose(result.scores, ref_scores[:, :k], rtol=1e-4, atol=1e-4)
    # Ids must agree except where float32 rounding can swap neighbours of (nearly) equal score.
    gaps = np.minimum(np.abs(np.diff(ref_scores, axis=1, prepend=np.inf)[:, :k]), -np.diff(ref_scores, axis=1))
    clear = gaps > 1e-4
    np.testing.assert_array_equal(result.ids[clear], ref_positions[:, :k][clear])
    assert clear.mean() > 0.9


@pytest.mark.parametrize("k", [1, 5])
def test_exact_restricted_and_bf16(k):
    database = clustered(6000, 16, seed=5)
    queries = clustered(50, 16, seed=6)
    allowed = np.random.default_rng(7).random(6000) < 0.6
    index = ExactIndex(dim=16, database_block=512)
    index.add(database)
    subset = np.flatnonzero(allowed)  # > SMALL_SUBSET ids: searched through the mask, not brute force
    result = index.search(queries, k, subset=subset)
    _, positions = brute_force(database[allowed], queries, "cosine", k)
    np.testing.assert_array_equal(result.ids, subset[positions])

    half = ExactIndex(dim=16, precision="bf16", database_block=512)
    half.add(database)
    _, positions = brute_force(database, queries, "cosine", k)
    assert (half.search(queries, k).ids[:, 0] == positions[:, 0]).mean() >= 0.98
