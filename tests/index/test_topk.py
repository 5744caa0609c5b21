import numpy as np
import pytest
import torch

from deepmetric.index import topk
from deepmetric.index.topk import knn
from index_reference import lane_scores


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
    with pytest.raises(ValueError, match=r"query_embeddings must be a matrix of shape \(N, D\)"):
        knn(np.ones(3), k=1)
    with pytest.raises(ValueError, match="must hold finite values"):
        knn(np.array([[np.nan, 1.0]]), k=1)
    with pytest.raises(ValueError, match="metric"):
        knn(np.eye(3), k=1, metric="cos")
    with pytest.raises(ValueError, match="precision must be one of"):
        knn(np.eye(3), k=1, precision="half")
    with pytest.raises(TypeError, match="precision must be a string"):
        knn(np.eye(3), k=1, precision=16)


def test_metric_aliases_give_the_same_search():
    x = near_ties(seed=6, n=200)
    for alias, name in (("ip", "dot"), ("l2", "euclidean"), ("Cosine", "cosine")):
        a, b = knn(x, k=7, metric=alias), knn(x, k=7, metric=name)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_array_equal(a.scores, b.scores)


def test_bfloat16_request_falls_back_where_unsound(monkeypatch):
    # a CPU without native (or sound) bfloat16 products runs the float32 pass, with the same results
    monkeypatch.setattr(topk, "_bfloat16_is_sound", lambda: False)
    assert topk.candidate_dtype("cosine", 10_000, 10_000, "bfloat16") == "float32"
    x = near_ties(seed=7, n=200)
    np.testing.assert_array_equal(knn(x, k=5, precision="bfloat16").ids, knn(x, k=5, precision="float32").ids)
    assert topk.candidate_dtype("euclidean", 10_000, 10_000, "bfloat16") == "float32"


def exact_order(queries, gallery, k, metric, exclude_self):
    """Reference: every score by the re-scoring arithmetic, then a lexicographic sort (score descending,
    index ascending) - no candidate pass involved."""
    q, g = torch.from_numpy(queries), torch.from_numpy(gallery)
    if metric == "cosine":
        q, g = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
    scores = lane_scores(q.numpy(), g.numpy(), metric)
    if exclude_self:
        np.fill_diagonal(scores, -np.inf)
    ids = np.stack([np.lexsort((np.arange(len(g)), -row))[:k] for row in scores])
    return ids, np.take_along_axis(scores, ids, 1)


def near_ties(seed=0, n=600, dim=32):
    """Clusters of near-duplicates (offsets far below bfloat16 resolution), exact duplicates and vectors with
    components of very different magnitudes: many scores agree in their first 8-16 bits."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(40, dim)) * rng.choice([1e-3, 1.0, 30.0], size=(40, dim))
    x = base[rng.integers(0, 40, size=n)]
    x += rng.normal(size=x.shape) * np.abs(x) * rng.choice([0.0, 1e-6, 1e-3], size=(n, 1))
    return x.astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "dot"])
@pytest.mark.parametrize("precision", ["bfloat16", "float32", "auto"])
def test_fast_pass_precision_does_not_change_results(metric, precision):
    x = near_ties()
    queries, gallery = x[:150], x[150:]
    for kwargs in (dict(query_block_size=64, gallery_block_size=96, precision=precision), dict()):
        same = knn(x, k=25, metric=metric, **kwargs)
        ids, scores = exact_order(x, x, 25, metric, exclude_self=True)
        np.testing.assert_array_equal(same.ids, ids)
        np.testing.assert_array_equal(same.scores, scores)
        separate = knn(queries, gallery, k=25, metric=metric, **kwargs)
        ids, scores = exact_order(queries, gallery, 25, metric, exclude_self=False)
        np.testing.assert_array_equal(separate.ids, ids)
        np.testing.assert_array_equal(separate.scores, scores)


def test_euclidean_near_ties():
    x = near_ties(seed=1)
    result = knn(x, k=20, metric="euclidean", query_block_size=50, gallery_block_size=70)
    ids, scores = exact_order(x, x, 20, "euclidean", exclude_self=True)
    np.testing.assert_array_equal(result.ids, ids)
    np.testing.assert_array_equal(result.scores, scores)


def test_symmetric_and_one_sided_passes_agree():
    # queries = gallery uses each block product for both its rows and its columns
    x = near_ties(seed=2, n=300)
    same = knn(x, k=30, query_block_size=40)
    one_sided = knn(x, x.copy(), k=30, exclude_self=True, query_block_size=40)
    np.testing.assert_array_equal(same.ids, one_sided.ids)
    np.testing.assert_array_equal(same.scores, one_sided.scores)


def test_rows_with_too_many_candidates_are_redone_exactly(monkeypatch, tied_data):
    # 90 items with 12 distinct vectors: a cap of 2k forces rows with many ties onto the exact fallback
    monkeypatch.setattr(topk, "_MIN_EXTRA_CANDIDATES", 0)
    result = knn(tied_data, k=3, query_block_size=16, gallery_block_size=32)
    np.testing.assert_array_equal(result.ids, brute_force(tied_data, tied_data, 3, exclude_self=True))


def test_bfloat16_error_bound_holds():
    # |fast - exact| <= E + 2^-8 |fast| on vectors with mixed magnitudes, checked in float64
    x = torch.from_numpy(near_ties(seed=3, n=400))
    fast = topk._FastPass.build(x[100:], "dot", torch.bfloat16)
    scores = fast.scores(fast.cast(x[:100]), 0, 300).double()
    exact = x[:100].double() @ x[100:].double().T
    allowed = fast.error(x[:100], rescored=False)[:, None] + topk._BFLOAT16_UNIT * scores.abs()
    assert ((scores - exact).abs() <= allowed).all()
    assert isinstance(topk._bfloat16_pays_off(), bool)


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_locality_order_does_not_change_results(monkeypatch, metric):
    # large searches reorder the items by nearest centre; results are still reported by original index,
    # ties broken by original index
    x = near_ties(seed=4, n=500)
    monkeypatch.setattr(topk, "_LOCALITY_MIN_ITEMS", 1)
    result = knn(x, k=15, metric=metric, query_block_size=40, gallery_block_size=50)
    ids, scores = exact_order(x, x, 15, metric, exclude_self=True)
    np.testing.assert_array_equal(result.ids, ids)
    np.testing.assert_array_equal(result.scores, scores)


def test_locality_order_with_overflowing_rows(monkeypatch, tied_data):
    monkeypatch.setattr(topk, "_LOCALITY_MIN_ITEMS", 1)
    monkeypatch.setattr(topk, "_MIN_EXTRA_CANDIDATES", 0)
    result = knn(tied_data, k=3, query_block_size=16, gallery_block_size=32)
    np.testing.assert_array_equal(result.ids, brute_force(tied_data, tied_data, 3, exclude_self=True))


@pytest.mark.parametrize("exclude_self", [True, False])
def test_overflowing_rows_of_a_separate_gallery_are_searched_again(monkeypatch, exclude_self):
    # 100 distinct vectors, each ~10 times: a list of 2k candidates overflows on the ties, the second pass
    # with 16x longer lists holds them (queries are the first 150 gallery items when excluding themselves)
    rng = np.random.default_rng(5)
    gallery = rng.normal(size=(100, 8)).astype(np.float32)[rng.integers(0, 100, size=1000)]
    monkeypatch.setattr(topk, "_MIN_EXTRA_CANDIDATES", 0)
    calls, searches = [], []
    exact_row, one_sided = topk._scan.exact_row, topk._one_sided_search
    monkeypatch.setattr(topk._scan, "exact_row", lambda *args: calls.append(1) or exact_row(*args))
    monkeypatch.setattr(topk, "_one_sided_search", lambda *args: searches.append(len(args[1])) or one_sided(*args))
    result = knn(gallery[:150], gallery, k=3, exclude_self=exclude_self, query_block_size=64)
    ids, scores = exact_order(gallery[:150], gallery, 3, "cosine", exclude_self=exclude_self)
    np.testing.assert_array_equal(result.ids, ids)
    np.testing.assert_array_equal(result.scores, scores)
    assert searches[0] == 150 and 0 < sum(searches[1:]) < 150  # some rows overflowed and were searched again
    assert not calls  # the second pass sufficed


@pytest.mark.parametrize("threads,fused,strip", [(1, True, 0), (2, True, 0), (3, True, 0), (2, False, 0),
                                                 (2, True, 7), (1, True, 16)])
def test_worker_threads_do_not_change_results(monkeypatch, threads, fused, strip):
    # each worker multiplies and selects on its own; the symmetric search's workers take block pairs that
    # share no block with a pair in progress, the one-sided search's take query blocks; a block's rows and
    # columns are read in one pass (fused) or two, a strip of its rows at a time or all at once
    monkeypatch.setattr(topk, "_FUSED_SCAN", fused)
    monkeypatch.setattr(topk, "_STRIP_ROWS", strip)
    x = near_ties(seed=6, n=400)
    for metric in ("cosine", "euclidean"):
        same = knn(x, k=12, metric=metric, query_block_size=24, gallery_block_size=24, threads=threads)
        ids, scores = exact_order(x, x, 12, metric, exclude_self=True)
        np.testing.assert_array_equal(same.ids, ids)
        np.testing.assert_array_equal(same.scores, scores)
        separate = knn(x[:130], x[130:], k=12, metric=metric, query_block_size=16, gallery_block_size=40,
                       threads=threads)
        ids, scores = exact_order(x[:130], x[130:], 12, metric, exclude_self=False)
        np.testing.assert_array_equal(separate.ids, ids)
        np.testing.assert_array_equal(separate.scores, scores)


@pytest.mark.parametrize("threads", [2, 4])
def test_worker_threads_order_ties_by_index(monkeypatch, tied_data, threads):
    # exact duplicates tie; rows overflowing a short list are searched again, by several workers too
    assert (knn(tied_data, k=7, threads=threads).ids == brute_force(tied_data, tied_data, 7, True)).all()
    monkeypatch.setattr(topk, "_MIN_EXTRA_CANDIDATES", 0)
    result = knn(tied_data, tied_data, k=3, exclude_self=True, query_block_size=8, threads=threads)
    np.testing.assert_array_equal(result.ids, brute_force(tied_data, tied_data, 3, exclude_self=True))


def test_worker_threads_restore_torch_threads_and_raise_errors(monkeypatch):
    x = near_ties(seed=8, n=200)
    before = torch.get_num_threads()
    knn(x, k=5, query_block_size=16, threads=3)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        knn(x, k=5, threads=0)

    def fail(*args):
        raise RuntimeError("selection failed")

    monkeypatch.setattr(topk._scan, "scan_rows", fail)
    with pytest.raises(RuntimeError, match="selection failed"):
        knn(x, k=5, query_block_size=16, gallery_block_size=16, threads=2)
    assert torch.get_num_threads() == before


def test_claims_never_hand_out_items_sharing_a_block():
    # 12 blocks, every pair: at no moment do two workers hold pairs with a block in common, and every pair
    # is handled exactly once
    import threading
    import time

    pairs = [(i, i) for i in range(12)] + [(i, j) for j in range(12) for i in range(j)]
    claims, held, handled, clashes = topk._Claims(pairs), [], [], []
    lock = threading.Lock()

    def handle(pair):
        with lock:
            clashes.extend(other for other in held if set(other) & set(pair))
            held.append(pair)
        time.sleep(0.0005)
        with lock:
            held.remove(pair)
            handled.append(pair)

    workers = [threading.Thread(target=claims.each, args=(handle,)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not clashes and sorted(handled) == sorted(pairs)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_numpy_products_give_the_same_results(monkeypatch, metric):
    # where numpy's BLAS multiplies float32 faster than torch's, the float32 pass uses it (one BLAS thread per
    # worker, restored afterwards); the results are the engine's, whoever multiplies
    from threadpoolctl import threadpool_info

    probe = topk._numpy_products_pay_off.__wrapped__  # uncached
    monkeypatch.setattr(topk, "_numpy_products_pay_off", lambda: True)
    monkeypatch.setattr(topk, "_BFLOAT16_MIN_WORK", 0)
    def blas_threads():
        return {entry["filepath"]: entry["num_threads"] for entry in threadpool_info() if entry["user_api"] == "blas"}

    before = blas_threads()
    x = near_ties(seed=9, n=300)
    same = knn(x, k=10, metric=metric, query_block_size=16, gallery_block_size=24, precision="float32", threads=2)
    ids, scores = exact_order(x, x, 10, metric, exclude_self=True)
    np.testing.assert_array_equal(same.ids, ids)
    np.testing.assert_array_equal(same.scores, scores)
    separate = knn(x[:90], x[90:], k=10, metric=metric, query_block_size=16, precision="float32", threads=2)
    ids, scores = exact_order(x[:90], x[90:], 10, metric, exclude_self=False)
    np.testing.assert_array_equal(separate.ids, ids)
    np.testing.assert_array_equal(separate.scores, scores)
    assert {path: blas_threads()[path] for path in before} == before
    assert isinstance(probe(), bool)
