"""Exact k-nearest-neighbour search in blocks: memory grows linearly with the gallery, never N x N.

A fast matrix-product pass (bfloat16 where the CPU multiplies it natively, else float32) proposes every
candidate that a proven error bound cannot rule out, selected by compiled code in one pass over each block
(``_scan``); the candidates are re-scored by one fixed float32 arithmetic (BLAS rounds products differently
for different block shapes) and ties are broken by gallery index, so results depend neither on the block
sizes nor on the fast pass's precision.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from deepmetric.distances import canonical_metric
from deepmetric.index import _scan
from deepmetric.index.base import as_embeddings
from deepmetric.types import SearchResult
from deepmetric.validation import check_positive_int

# the candidate pass's arithmetic: "auto" picks bfloat16 where it pays off (checked once per process), "float32"
# never uses it, "bfloat16" uses it wherever the CPU multiplies it natively and soundly (else float32)
PRECISIONS = ("auto", "float32", "bfloat16")
_TILE_COLUMNS = 4096  # gallery items per matrix product: a (1024, 4096) score tile stays in cache for the selection
_MIN_EXTRA_CANDIDATES = 128  # a query holds up to k + max(k, this) candidates; one that cannot drop to 3/4 of that
# after a compaction (thousands of tied scores) is searched again with 16x that, or exactly
_LOCALITY_MIN_ITEMS = 16384  # queries = gallery from this size on: items reordered by nearest centre first
_LOCALITY_MAX_CLUSTERS = 1024
_FUSED_SCAN = True  # the symmetric search reads the rows and the columns of a block in one pass
_STRIP_ROWS = 256  # block rows multiplied and selected at a time in the symmetric search (0: the whole block)
_REPORT_ROWS = 4096  # rows re-scored and sorted per work item of the symmetric search
_BFLOAT16_MIN_WORK = 1 << 26  # queries x gallery below which the bfloat16 probe is not worth its few milliseconds
_FLOAT32_UNIT = 2.0 ** -24  # unit roundoff
_BFLOAT16_UNIT = 2.0 ** -8


def as_labels(name: str, value, length: int) -> np.ndarray:
    """Validate a 1-D label array of ``length`` items."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.ndim != 1 or array.shape[0] != length:
        raise ValueError(f"{name} must be a 1-D array of {length} labels, got shape {array.shape}")
    return array


def _prepare(x: np.ndarray, metric: str, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(x).to(device)
    if metric == "cosine":
        tensor = torch.nn.functional.normalize(tensor, dim=1, eps=1e-12)
    return tensor


def knn(
    query_embeddings,
    gallery_embeddings=None,
    *,
    k: int,
    metric: str = "cosine",
    exclude_self: bool | None = None,
    query_block_size: int = 1024,
    gallery_block_size: int = 65536,
    device: str | torch.device | None = None,
    precision: str = "auto",
    threads: int | None = None,
) -> SearchResult:
    """Exact top-``k`` neighbours of every query, computed block by block.

    Scores are similarities, higher = closer: ``cosine`` (embeddings L2-normalised first), ``dot``, or
    ``euclidean`` (the score is the negative Euclidean distance). The order is score descending, then
    gallery index ascending, whatever the block sizes. Missing neighbours (k larger than the gallery)
    have id -1 and score -inf.

    Method: a fast matrix-product pass (bfloat16 inputs with float32 accumulation where the CPU
    multiplies bfloat16 natively and the metric is cosine or dot, else float32) keeps, per query, every
    gallery item whose fast score s satisfies s >= s_k - 2E, where s_k is a lower bound on the k-th best
    fast score (at least k of the items offered so far score s_k or more) and E a proven bound on
    |fast - exact| for that query (input rounding, Higham's accumulation bound, both doubled). Everything
    dropped therefore scores strictly below the k-th exact score. The selection runs in compiled code
    (``deepmetric.index._scan``, numba) in one pass over each block while it is in cache. The candidates are
    re-scored by one fixed float32 arithmetic (``_scan.pair_score``) and sorted, so the result is the same
    whichever pass and block sizes were used. When the queries are the gallery, each product of two blocks
    serves the rows of both (half the multiplications), and large sets are first reordered so that near
    neighbours share blocks (results are still reported by original index). ``threads`` workers each take
    a query block (or, queries = gallery, a block pair sharing no block with one in progress), multiply it
    with torch on one thread and select from it at once, while it is in cache. On a GPU the products run
    there and the selection on the CPU. The first call after an install compiles the kernels (~30-60 s,
    then cached on disk; ``warm_up`` does it ahead).

    Memory: per worker one block of ``query_block_size * min(gallery_block_size, 4096)`` fast scores, and per query in
    progress (every query, when the queries are the gallery) a list of ``k + max(k, 128)`` candidates of 8
    bytes and a 512-byte histogram, plus the (Q, k) result.

    Args:
        query_embeddings: (Q, D) array or tensor.
        gallery_embeddings: (N, D); None means the queries are the gallery.
        k: neighbours per query.
        metric: "cosine", "dot" or "euclidean" ("ip" and "l2" are aliases).
        exclude_self: drop query i from its own results (default: True exactly when the gallery is None).
        query_block_size, gallery_block_size: block sizes (results do not depend on them).
        device: torch device for the matrix products; default CUDA when available, else CPU.
        precision: the candidate pass's arithmetic, one of ``PRECISIONS`` (results do not depend on it):
            "auto" (bfloat16 where this CPU multiplies it natively, soundly and 1.5x faster than float32),
            "float32", or "bfloat16" (wherever the CPU multiplies it natively and soundly, else float32).
        threads: worker threads, each multiplying and selecting on its own (results do not depend on it);
            default ``torch.get_num_threads()``.

    Example:
        >>> import numpy as np
        >>> x = np.eye(3, dtype=np.float32)
        >>> knn(x, k=1).ids.tolist()
        [[1], [0], [0]]
    """
    metric = canonical_metric(metric)
    k = check_positive_int("k", k)
    query_block_size = check_positive_int("query_block_size", query_block_size)
    gallery_block_size = check_positive_int("gallery_block_size", gallery_block_size)
    precision = check_precision(precision)
    queries = as_embeddings("query_embeddings", query_embeddings)
    same_set = gallery_embeddings is None
    gallery = queries if same_set else as_embeddings("gallery_embeddings", gallery_embeddings,
                                                     dim=queries.shape[1])
    if exclude_self is None:
        exclude_self = same_set
    if exclude_self and not same_set and gallery.shape[0] < queries.shape[0]:
        raise ValueError("exclude_self=True needs the first len(query_embeddings) gallery items to be the queries")
    return search_prepared(queries, None if same_set else gallery, k=k, metric=metric, exclude_self=exclude_self,
                           query_block_size=query_block_size, gallery_block_size=gallery_block_size,
                           device=device, precision=precision, threads=threads)


def check_precision(precision: object) -> str:
    """``precision`` if it is one of ``PRECISIONS``, else TypeError / ValueError naming it."""
    if not isinstance(precision, str):
        raise TypeError(f"precision must be a string, one of {PRECISIONS}, got {type(precision).__name__}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def search_prepared(queries: np.ndarray, gallery: np.ndarray | None, *, k: int, metric: str, exclude_self: bool,
                    query_block_size: int = 1024, gallery_block_size: int = 65536,
                    device: str | torch.device | None = None, precision: str = "auto",
                    threads: int | None = None) -> SearchResult:
    """``knn`` on arguments it already checked: C-contiguous finite float32 (Q, D) and (N, D) arrays (gallery
    None: the queries), a canonical metric, positive ints. For callers that validated their vectors once
    (``deepmetric.index.ExactIndex``) and search them many times."""
    same_set = gallery is None
    gallery = queries if same_set else gallery
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    num_queries, num_gallery = queries.shape[0], gallery.shape[0]
    out_scores = np.full((num_queries, k), -np.inf, dtype=np.float32)
    out_ids = np.full((num_queries, k), -1, dtype=np.int64)
    if num_gallery == 0 or num_queries == 0:
        return SearchResult(out_scores, out_ids)
    gallery_t = _prepare(gallery, metric, device)
    # queries are prepared once (not per block) so their normalised values cannot depend on block sizes
    queries_t = gallery_t[:num_queries] if same_set else _prepare(queries, metric, device)
    item_ids, query_ids = np.arange(num_gallery, dtype=np.int64), np.arange(num_queries, dtype=np.int64)
    dtype = _fast_dtype(metric, device, num_queries * num_gallery, precision)
    if same_set and num_gallery >= _LOCALITY_MIN_ITEMS:
        # items reordered so that near neighbours share blocks and memory (results are reported by original id)
        order = _locality_order(gallery_t, dtype)
        gallery_t = queries_t = gallery_t[order]
        item_ids = query_ids = order.cpu().numpy()
    gallery_np = np.ascontiguousarray(gallery_t.cpu().numpy())
    queries_np = gallery_np[:num_queries] if same_set else np.ascontiguousarray(queries_t.cpu().numpy())
    threads = torch.get_num_threads() if threads is None else check_positive_int("threads", threads)
    with torch.inference_mode():
        numpy_products = (dtype == torch.float32 and device.type == "cpu"
                          and num_queries * num_gallery >= _BFLOAT16_MIN_WORK and _numpy_products_pay_off())
        fast = _FastPass.build(gallery_t, metric, dtype, numpy_products)
        cap = k + max(k, _MIN_EXTRA_CANDIDATES)
        tile = min(gallery_block_size, _TILE_COLUMNS)
        euclidean = metric == "euclidean"

        def reporter(sub_queries_t: torch.Tensor, sub_queries_np: np.ndarray, sub_query_ids: np.ndarray,
                     sub_own: np.ndarray, cap: int):
            """Writes the results of state rows first:last, queries ``row + query_offset`` of the sub-arrays
            (workers call it on disjoint rows). Rows whose candidates overflowed are collected;
            ``report.redo_overflowed()`` searches them again with 16x longer lists, or exactly once that would
            not pay off against reading the whole gallery per query."""

            def report(state: _State, first: int, last: int, query_offset: int) -> None:
                state.finish(first, last)
                _scan.finalize(sub_queries_np, gallery_np, first, last, query_offset, state.candidates, state.count,
                               state.overflow, euclidean, item_ids, sub_query_ids, out_scores, out_ids)
                overflowed.append(np.flatnonzero(state.overflow[first:last]) + first + query_offset)

            def redo_overflowed() -> None:
                """All overflowed rows at once (one product per gallery tile, not one per query block)."""
                redo = np.sort(np.concatenate(overflowed)) if overflowed else np.empty(0, np.int64)
                if len(redo) == 0:
                    return
                wider = k + max(k, 16 * (cap - k))
                if wider <= num_gallery // 4:
                    again = torch.from_numpy(redo).to(sub_queries_t.device)
                    report_again = reporter(sub_queries_t[again], sub_queries_np[redo], sub_query_ids[redo],
                                            sub_own[redo], wider)
                    _one_sided_search(fast, sub_queries_t[again], k, wider, sub_own[redo], query_block_size, tile,
                                      report_again, threads)
                    report_again.redo_overflowed()
                    return
                for i in redo:
                    _scan.exact_row(sub_queries_np[i], gallery_np, sub_own[i], euclidean, item_ids,
                                    out_scores[sub_query_ids[i]], out_ids[sub_query_ids[i]])

            overflowed: list[np.ndarray] = []
            report.redo_overflowed = redo_overflowed
            return report

        # the gallery item each query leaves out of its results (-1: none)
        own = np.arange(num_queries, dtype=np.int64) if exclude_self else np.full(num_queries, -1, np.int64)
        report = reporter(queries_t, queries_np, query_ids, own, cap)
        with _blas_threads(1 if fast.numpy_products else None):
            if same_set:
                # square blocks with as many scores as a (query_block_size, tile) block
                _symmetric_search(fast, queries_t, k, cap, own, math.isqrt(query_block_size * tile), report,
                                  threads)
            else:
                _one_sided_search(fast, queries_t, k, cap, own, query_block_size, tile, report, threads)
            report.redo_overflowed()
    return SearchResult(out_scores, out_ids)


def _locality_order(x: torch.Tensor, dtype: torch.dtype = torch.bfloat16, iterations: int = 1) -> torch.Tensor:
    """A permutation that puts items near each other next to each other: sorted by their nearest of
    ~N/512 centres (a k-means step on directions in ``dtype``, the candidate pass's: bfloat16 only where the
    CPU multiplies it natively; seeded). Only the speed of the search depends on it."""
    clusters = int(min(_LOCALITY_MAX_CLUSTERS, max(2, len(x) // 512)))
    generator = torch.Generator(device=x.device).manual_seed(0)
    directions = torch.nn.functional.normalize(x, dim=1)
    fast = directions.to(dtype)
    centres = directions[torch.randperm(len(x), generator=generator, device=x.device)[:clusters]]
    for _ in range(iterations):
        nearest = (fast @ centres.to(dtype).T).argmax(1)
        centres = torch.nn.functional.normalize(torch.zeros_like(centres).index_add_(0, nearest, directions), dim=1)
    return torch.argsort((fast @ centres.to(dtype).T).argmax(1), stable=True)


def _in_workers(threads: int, work, own_thread: bool = False) -> None:
    """Run ``work()`` in ``threads`` threads of their own (in this one when ``threads`` is 1) and wait for all.

    Each worker multiplies and selects by itself: its torch operations run on one thread (torch's count is
    per thread; the process-wide default is restored afterwards) and the selection kernels are serial and
    release the GIL. Two thread pools taking turns (torch's and numba's OpenMP runtimes, each spinning after
    its parallel regions) would otherwise put twice as many busy threads as cores on the CPU, and a core
    taken by another process would stall both at every block. The first exception is re-raised.
    ``own_thread``: one worker runs in a thread of its own too."""
    if threads == 1 and not own_thread:
        work()
        return
    errors: list[BaseException] = []

    def run() -> None:
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                work()
        except BaseException as error:  # noqa: BLE001 - handed to the calling thread
            errors.append(error)

    default = torch.get_num_threads()
    workers = [threading.Thread(target=run, name=f"deepmetric-topk-{i}", daemon=True) for i in range(threads)]
    try:
        for worker in workers:
            worker.start()
    finally:
        for worker in workers:
            if worker.ident is not None:
                worker.join()
        torch.set_num_threads(default)
    if errors:
        raise errors[0]


@contextlib.contextmanager
def _blas_threads(limit: int | None):
    """numpy's BLAS on ``limit`` threads inside the block (process-wide while it runs; None: unchanged)."""
    if limit is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=limit, user_api="blas"):
        yield


@functools.cache
def _numpy_products_pay_off() -> bool:
    """Whether numpy's BLAS multiplies a float32 block on one thread at least 1.15x faster than torch's (thread
    CPU time, so that other processes' load does not decide; checked once per process)."""
    generator = torch.Generator().manual_seed(0)
    queries, gallery = torch.randn(1024, 128, generator=generator), torch.randn(2048, 128, generator=generator)
    out = torch.empty(1024, 2048)
    seconds: dict[str, float] = {}

    def probe() -> None:
        for name, multiply in (("torch", lambda: torch.matmul(queries, gallery.T, out=out)),
                               ("numpy", lambda: np.matmul(queries.numpy(), gallery.numpy().T, out=out.numpy()))):
            multiply()  # warm-up
            best = math.inf
            for _ in range(5):
                begin = time.thread_time()
                multiply()
                best = min(best, time.thread_time() - begin)
            seconds[name] = best

    with _blas_threads(1):
        _in_workers(1, probe, own_thread=True)
    return seconds["numpy"] * 1.15 < seconds["torch"]


class _Claims:
    """Work items taken one at a time by the workers, in order, skipping (for now) an item that shares a
    block with an item in progress: the workers then never touch the same state rows at once. ``items`` are
    tuples of block numbers. ``take`` returns None when everything is taken or a worker failed."""

    def __init__(self, items: list[tuple[int, ...]]):
        self.pending, self.busy = list(items), set()
        self.condition = threading.Condition()
        self.failed = False

    def take(self) -> tuple[int, ...] | None:
        with self.condition:
            while True:
                if self.failed or not self.pending:
                    return None
                for position, item in enumerate(self.pending):
                    if self.busy.isdisjoint(item):
                        del self.pending[position]
                        self.busy.update(item)
                        return item
                self.condition.wait()

    def done(self, item: tuple[int, ...], failed: bool = False) -> None:
        with self.condition:
            self.busy.difference_update(item)
            self.failed |= failed
            self.condition.notify_all()

    def each(self, handle) -> None:
        """Take items and ``handle`` them until none is left (one worker's loop)."""
        while (item := self.take()) is not None:
            failed = True
            try:
                handle(item)
                failed = False
            finally:
                self.done(item, failed)


def _one_sided_search(fast: _FastPass, queries_t: torch.Tensor, k: int, cap: int, own: np.ndarray,
                      query_block_size: int, tile: int, report, threads: int = 1) -> None:
    """Each query block against every gallery tile, a block per worker at a time (blocks are made small
    enough that every worker gets one); a block's results are reported once its last tile passed. Query i
    leaves gallery item ``own[i]`` out (-1: none)."""
    query_fast = fast.cast(queries_t)
    block_size = min(query_block_size, -(-len(queries_t) // threads))
    claims = _Claims([(start,) for start in range(0, len(queries_t), block_size)])
    threads = min(threads, len(claims.pending))

    def work() -> None:
        scratch = query_fast.new_empty(min(block_size, len(queries_t)) * tile)

        def handle(item: tuple[int, ...]) -> None:
            start = item[0]
            stop = min(start + block_size, len(queries_t))
            state = _State(fast, queries_t[start:stop], k, cap, own[start:stop])
            for g_start in range(0, fast.gallery.shape[0], tile):
                g_stop = min(g_start + tile, fast.gallery.shape[0])
                block = fast.scores(query_fast[start:stop], g_start, g_stop, scratch)
                state.rows(block, 0, g_start)
            report(state, 0, stop - start, start)

        claims.each(handle)

    _in_workers(threads, work)


def _symmetric_search(fast: _FastPass, queries_t: torch.Tensor, k: int, cap: int, own: np.ndarray,
                      block_size: int, report, threads: int = 1) -> None:
    """Queries = gallery: the product of blocks i < j serves the rows of i and, read by columns, the rows
    of j, so each pair of items is multiplied once. The diagonal blocks go first, so that every row has a
    bound on its k-th best before the columns of other blocks reach it; then block j meets every block
    before it (its rows, early in their lives, take the most candidates while their state is warm). Workers
    take pairs in that order, each skipping a pair that shares a block with one in progress, so no two
    update the same rows at once. All rows are reported at the end, in slices across the workers. Row i
    leaves gallery item ``own[i]`` out (-1: none)."""
    query_fast = fast.cast(queries_t)
    state = _State(fast, queries_t, k, cap, own)
    bounds = [(start, min(start + block_size, len(queries_t))) for start in range(0, len(queries_t), block_size)]
    pairs = [(i, i) for i in range(len(bounds))] + [(i, j) for j in range(len(bounds)) for i in range(j)]
    claims = _Claims(pairs)

    def work() -> None:
        # a reused buffer per worker: fresh multi-megabyte tensors per block would cost a page fault per 4 KB
        scratch = query_fast.new_empty(min(block_size, len(queries_t)) ** 2)

        def handle(pair: tuple[int, ...]) -> None:
            (start, stop), (g_start, g_stop) = bounds[pair[0]], bounds[pair[1]]
            # the product a strip of rows at a time, each selected from while it is in the core's cache
            strip = _STRIP_ROWS if _FUSED_SCAN and _STRIP_ROWS else stop - start
            for s_start in range(start, stop, strip):
                s_stop = min(s_start + strip, stop)
                block = fast.scores(query_fast[s_start:s_stop], g_start, g_stop, scratch)
                if pair[0] == pair[1]:
                    state.rows(block, s_start, g_start)
                elif _FUSED_SCAN:
                    state.both(block, s_start, g_start)
                else:
                    state.rows(block, s_start, g_start)
                    state.columns(block, g_start, s_start)

        claims.each(handle)

    _in_workers(min(threads, len(bounds)), work)
    slices = _Claims([(start,) for start in range(0, len(queries_t), _REPORT_ROWS)])
    _in_workers(min(threads, len(slices.pending)), lambda: slices.each(
        lambda item: report(state, item[0], min(item[0] + _REPORT_ROWS, len(queries_t)), 0)))


class _State:
    """Candidate lists of a range of query rows, kept by the compiled selection in ``_scan``."""

    def __init__(self, fast: _FastPass, query_t: torch.Tensor, k: int, cap: int, own: np.ndarray):
        rows, bfloat16 = query_t.shape[0], fast.gallery.dtype == torch.bfloat16
        self.k, self.bfloat16 = k, bfloat16
        if fast.gallery.shape[0] >= 2 ** 32:
            raise ValueError(f"the exact search holds gallery ids in 32 bits; got {fast.gallery.shape[0]:,} items")
        self.candidates = np.empty((rows, cap), np.int64)  # (order key << 32) | gallery id
        self.count = np.zeros(rows, np.int32)
        # per row: counts of candidates per bucket of the order key (bfloat16: the key itself; float32: its top
        # 16 bits) from ``base`` up, how many are at or above the k-th-best bucket, and that bucket
        self.histogram = np.zeros((rows, _scan.HISTOGRAM_BINS), np.uint16)
        self.base = np.zeros(rows, np.int32)
        self.above = np.zeros(rows, np.int32)
        self.kth_bucket = np.full(rows, _scan.ACCEPT_ALL, np.int32)
        self.kth = np.full(rows, _scan.ACCEPT_ALL, np.int32)
        self.threshold = np.full(rows, _scan.ACCEPT_ALL, np.int32)
        self.margin = (2 * fast.error(query_t)).cpu().numpy().astype(np.float64)
        self.overflow = np.zeros(rows, dtype=np.bool_)
        self.own = own  # the gallery item each row leaves out (-1: none)
        self.unit = float(fast.output_unit)
        # bfloat16: keys shifted 16 bits up give float32 bits, each key is its own bucket; float32: buckets are
        # the top 16 bits of the key
        self.shift, self.bucket_shift, self.mask = ((16, 0, np.int16(0x7FFF)) if bfloat16
                                                    else (0, 16, np.int32(0x7FFFFFFF)))

    def _bits(self, block: torch.Tensor) -> np.ndarray:
        return block.view(torch.int16 if self.bfloat16 else torch.int32).cpu().numpy()

    def _lists(self) -> tuple:
        return (self.candidates, self.count, self.histogram, self.base, self.above, self.kth_bucket, self.kth,
                self.threshold, self.margin, self.unit, self.shift, self.bucket_shift, self.overflow, self.k)

    def rows(self, block: torch.Tensor, first_row: int, first_item: int) -> None:
        """Rows of ``block`` are state rows first_row..., columns items first_item...; each row leaves out
        its own item, if it has one there."""
        _scan.scan_rows(self._bits(block), first_row, first_item, self.own, self.mask, *self._lists())

    def columns(self, block: torch.Tensor, first_row: int, first_item: int) -> None:
        """Columns of ``block`` are state rows first_row..., its rows items first_item...."""
        _scan.scan_columns(self._bits(block), first_row, first_item, self.mask, *self._lists())

    def both(self, block: torch.Tensor, first_row: int, first_item: int) -> None:
        """``rows`` and ``columns`` of a block in one pass (its rows and columns are different state rows)."""
        _scan.scan_both(self._bits(block), first_row, first_item, self.own, self.mask, *self._lists())

    def finish(self, first: int, last: int) -> None:
        _scan.finish(first, last, *self._lists())


def _view(buffer: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A contiguous tensor of ``shape`` on the start of a flat scratch buffer."""
    return buffer[:int(np.prod(shape))].view(shape)


def bf16_is_native() -> bool:
    """Whether this CPU has bfloat16 matrix units that oneDNN uses (AVX512-BF16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def _bfloat16_is_sound() -> bool:
    """Whether this CPU multiplies bfloat16 natively and its product stays within the error bound the candidate
    pass assumes (float32 accumulation, round-to-nearest output), on a small product (checked once per
    process)."""
    if not bf16_is_native():
        return False
    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.functional.normalize(torch.randn(512, 128, generator=generator), dim=1)
    gallery = torch.nn.functional.normalize(torch.randn(_TILE_COLUMNS, 128, generator=generator), dim=1)
    try:
        fast = _FastPass.build(gallery, "dot", torch.bfloat16)
        scores = fast.scores(fast.cast(queries), 0, len(gallery)).double()
    except RuntimeError:
        return False
    exact = queries.double() @ gallery.double().T
    allowed = fast.error(queries, rescored=False)[:, None] + _BFLOAT16_UNIT * scores.abs()
    return not bool(((scores - exact).abs() > allowed).any())


@functools.cache
def _bfloat16_pays_off() -> bool:
    """Whether the bfloat16 pass is sound here and its matrix product at least 1.5x faster than float32."""
    if not _bfloat16_is_sound():
        return False
    generator = torch.Generator().manual_seed(0)
    queries, gallery = torch.randn(512, 128, generator=generator), torch.randn(_TILE_COLUMNS, 128, generator=generator)
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        q, g = queries.to(dtype), gallery.to(dtype)
        q @ g.T  # warm-up (kernel selection)
        begin = time.perf_counter()
        for _ in range(3):
            q @ g.T
        seconds[dtype] = time.perf_counter() - begin
    return seconds[torch.bfloat16] * 1.5 < seconds[torch.float32]


def _fast_dtype(metric: str, device: torch.device, work: int, precision: str) -> torch.dtype:
    """The candidate pass's dtype for ``precision`` (see ``knn``): float32 always for euclidean and on GPUs;
    "auto" skips the bfloat16 check for small searches (``work`` = queries x gallery), which would not gain."""
    if precision == "float32" or metric == "euclidean" or device.type != "cpu":
        return torch.float32
    if precision == "bfloat16":
        return torch.bfloat16 if _bfloat16_is_sound() else torch.float32
    if work < _BFLOAT16_MIN_WORK:
        return torch.float32
    return torch.bfloat16 if _bfloat16_pays_off() else torch.float32


def candidate_dtype(metric: str, num_queries: int, num_gallery: int, precision: str = "auto",
                    device: str | torch.device = "cpu") -> str:
    """The dtype name ("float32" or "bfloat16") a search of this shape would use for its candidate pass."""
    dtype = _fast_dtype(canonical_metric(metric), torch.device(device), num_queries * num_gallery,
                        check_precision(precision))
    return str(dtype).replace("torch.", "")


def warm_up() -> None:
    """Compile the selection kernels for every score format and schedule, or load them from numba's on-disk
    cache (``__pycache__`` beside the module, else the user's cache directory). The first search after an
    install otherwise spends ~30-60 s compiling; ``scripts/setup.sh`` calls this once. The bfloat16 kernels
    are compiled only where the CPU would use them."""
    x = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    for precision in ("float32", "bfloat16"):
        for metric in ("cosine", "euclidean"):
            knn(x, k=5, metric=metric, query_block_size=64, precision=precision)
            knn(x[:50], x, k=5, metric=metric, exclude_self=True, query_block_size=64, precision=precision)


@dataclass(frozen=True)
class _FastPass:
    """Fast candidate scores of a gallery, with a per-query bound on their distance to the re-scored values.

    Fast scores: ``q.g`` (cosine, dot) or ``2 q.g - |q|^2 - |g|^2 = -|q - g|^2`` (euclidean). In bfloat16
    the inputs are rounded (relative error <= 2^-8 each), products are accumulated in float32 and the
    output is rounded to bfloat16 (``_threshold`` allows for that)."""

    gallery: torch.Tensor
    metric: str
    norm: float  # largest gallery norm
    rounded_norm: float  # largest norm of a gallery vector rounded to the fast dtype
    residual_norm: float  # largest norm of a rounding residual g - round(g)
    squared_norms: torch.Tensor | None  # euclidean: |g|^2 per gallery item
    numpy_products: bool = False  # float32 products by numpy's BLAS (CPU), which is faster than torch's on some CPUs

    @classmethod
    def build(cls, gallery_t: torch.Tensor, metric: str, dtype: torch.dtype,
              numpy_products: bool = False) -> _FastPass:
        if metric == "euclidean" and dtype != torch.float32:
            raise ValueError(f"euclidean candidates need float32, got {dtype}")
        fast = gallery_t.to(dtype)
        norms = torch.zeros(3, dtype=torch.float32, device=gallery_t.device)
        for start in range(0, len(gallery_t), 1 << 16):  # a slice at a time to keep memory flat
            exact = gallery_t[start:start + (1 << 16)]
            if dtype == torch.float32:  # nothing rounded: the rounded norm is the norm, the residual 0
                norm = exact.norm(dim=1).max()
                chunk = [norm, norm, torch.zeros_like(norm)]
            else:
                rounded = fast[start:start + (1 << 16)].float()
                # exact - rounded is exact in float32 (the bits that rounding to bfloat16 dropped)
                chunk = [exact.norm(dim=1).max(), rounded.norm(dim=1).max(), (exact - rounded).norm(dim=1).max()]
            norms = torch.maximum(norms, torch.stack(chunk))
        # float32 norms, made upper bounds: a sum of D non-negative float32 terms is within D u of the exact
        # sum in any order (Higham), the square root adds u; 4 D u and an absolute 2^-60 (squares that
        # underflowed) cover both with room
        norm, rounded_norm, residual_norm = (value * (1 + 4 * gallery_t.shape[1] * _FLOAT32_UNIT) + 2.0 ** -60
                                             for value in norms.double().tolist())
        return cls(fast, metric, norm, rounded_norm, residual_norm,
                   (gallery_t * gallery_t).sum(1) if metric == "euclidean" else None,
                   numpy_products and dtype == torch.float32 and gallery_t.device.type == "cpu")

    @property
    def output_unit(self) -> float:
        return _BFLOAT16_UNIT if self.gallery.dtype == torch.bfloat16 else 0.0

    def cast(self, query_t: torch.Tensor) -> torch.Tensor:
        return query_t.to(self.gallery.dtype)

    def scores(self, query_fast: torch.Tensor, g_start: int, g_stop: int,
               scratch: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of a query block against gallery items g_start:g_stop, written into ``scratch`` when given."""
        out = None if scratch is None else _view(scratch, (query_fast.shape[0], g_stop - g_start))
        if self.numpy_products:
            product = np.matmul(query_fast.numpy(), self.gallery[g_start:g_stop].numpy().T,
                                out=None if out is None else out.numpy())
            scores = torch.from_numpy(product) if out is None else out
        else:
            scores = torch.matmul(query_fast, self.gallery[g_start:g_stop].T, out=out)
        if self.metric == "euclidean":
            # symmetric in query and gallery, so a transposed block serves the gallery side too
            scores.mul_(2).sub_((query_fast * query_fast).sum(1)[:, None])
            scores.sub_(self.squared_norms[None, g_start:g_stop])
        return scores

    def error(self, query_t: torch.Tensor, *, rescored: bool = True) -> torch.Tensor:
        """Per-query bound E (float64) on |fast score - re-scored value|, before the output rounding
        (``rescored=False``: on |fast score - exact real value|)."""
        dim, query = query_t.shape[1], query_t.double()
        norms = query.norm(dim=1)
        if self.metric == "euclidean":
            # fast 2 q.g - |q|^2 - |g|^2 = -|q - g|^2 within 2 (dim + 3) u (|q| + |g|)^2 (Higham; we allow
            # (4 dim + 8) u); the re-scored squared distance within 2 (dim + 3) u (|q| + |g|)^2; 8 u (|q| + |g|)^2
            # more puts a left-out item's squared distance 2^-20 relative above, which its float32 square
            # root keeps apart
            span = (norms + self.norm) ** 2
            return (6 * dim + 24 if rescored else 4 * dim + 8) * _FLOAT32_UNIT * span
        # Higham's bound on a float32 dot product, doubled: 2 dim u |q| |g|
        rescore = 2 * dim * _FLOAT32_UNIT * norms * self.norm if rescored else 0.0
        if self.gallery.dtype == torch.float32:
            return 2 * dim * _FLOAT32_UNIT * norms * self.norm + rescore
        rounded = self.cast(query_t).double()
        rounded_norms, residual_norms = rounded.norm(dim=1), (query - rounded).norm(dim=1)
        # q.g - q'.g' = q'.(g - g') + (q - q').g' + (q - q').(g - g') (Cauchy-Schwarz on each), then the
        # float32 accumulation of the exact bfloat16 products (doubled), then inputs or products below
        # 2^-126 that the hardware may flush to zero
        return (rounded_norms * self.residual_norm + residual_norms * self.rounded_norm
                + residual_norms * self.residual_norm + 2 * dim * _FLOAT32_UNIT * rounded_norms * self.rounded_norm
                + dim * 2.0 ** -126 * (1 + rounded_norms + self.rounded_norm) + rescore)
