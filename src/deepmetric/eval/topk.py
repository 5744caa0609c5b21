"""Exact k-nearest-neighbour search in blocks: memory grows linearly with the gallery, never N x N.

A fast matrix-product pass (bfloat16 where the CPU multiplies it natively, else float32) proposes every
candidate that a proven error bound cannot rule out; the candidates are re-scored by one fixed elementwise
float32 arithmetic (BLAS rounds products differently for different block shapes) and ties are broken by
gallery index, so results depend neither on the block sizes nor on the fast pass's precision.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from deepmetric.types import SearchResult

METRICS = ("cosine", "dot", "euclidean")
_TILE_COLUMNS = 4096  # gallery items per matrix product: a (1024, 4096) score tile stays in cache for the selection
_GROUPS = 16  # a tile's columns form 16 strided groups per row; groups whose maximum is below threshold are skipped
_MIN_EXTRA_CANDIDATES = 1024  # a query may hold k + max(k, this) candidates before it is re-done exactly
_BFLOAT16_MIN_WORK = 1 << 26  # queries x gallery below which the bfloat16 probe is not worth its few milliseconds
_FLOAT32_UNIT = 2.0 ** -24  # unit roundoff
_BFLOAT16_UNIT = 2.0 ** -8


def as_embeddings(name: str, value, *, dim: int | None = None) -> np.ndarray:
    """Validate a 2-D finite float array and return it as float32."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number):
        raise TypeError(f"{name} must be numeric, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} columns like the queries, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def as_labels(name: str, value, length: int) -> np.ndarray:
    """Validate a 1-D label array of ``length`` items."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.ndim != 1 or array.shape[0] != length:
        raise ValueError(f"{name} must be a 1-D array of {length} labels, got shape {array.shape}")
    return array


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _prepare(x: np.ndarray, metric: str, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(x).to(device)
    if metric == "cosine":
        tensor = torch.nn.functional.normalize(tensor, dim=1, eps=1e-12)
    return tensor


def _sort_rows(values: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Order each row by score descending, then id ascending (missing ids, -1, go last)."""
    big = torch.iinfo(torch.int64).max
    order = torch.argsort(torch.where(ids < 0, big, ids), dim=1, stable=True)
    values, ids = values.gather(1, order), ids.gather(1, order)
    order = torch.argsort(values, dim=1, descending=True, stable=True)
    return values.gather(1, order), ids.gather(1, order)


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
) -> SearchResult:
    """Exact top-``k`` neighbours of every query, computed block by block.

    Scores are similarities, higher = closer: ``cosine`` (embeddings L2-normalised first), ``dot``, or
    ``euclidean`` (the score is the negative Euclidean distance). The order is score descending, then
    gallery index ascending, whatever the block sizes. Missing neighbours (k larger than the gallery)
    have id -1 and score -inf.

    Method: a fast matrix-product pass (bfloat16 inputs with float32 accumulation where the CPU
    multiplies bfloat16 natively and the metric is cosine or dot, else float32) keeps, per query, every
    gallery item whose fast score s satisfies s >= s_k - 2E, where s_k is the k-th best fast score and E
    a proven bound on |fast - exact| for that query (input rounding, Higham's accumulation bound, both
    doubled). Everything dropped therefore scores strictly below the k-th exact score. The candidates are
    re-scored by one elementwise float32 arithmetic and sorted, so the result is the same whichever
    pass and block sizes were used. When the queries are the gallery, each product of two blocks serves
    the rows of both (half the multiplications).

    Memory: ``query_block_size * min(gallery_block_size, 4096)`` scores (twice that when the queries are the
    gallery: square blocks of that size and their transpose), the candidates of the query blocks in
    progress (all of them in the queries-are-the-gallery case: about k + a few dozen per query) and the
    (Q, k) result.

    Args:
        query_embeddings: (Q, D) array or tensor.
        gallery_embeddings: (N, D); None means the queries are the gallery.
        k: neighbours per query.
        metric: "cosine", "dot" or "euclidean".
        exclude_self: drop query i from its own results (default: True exactly when the gallery is None).
        query_block_size, gallery_block_size: block sizes (results do not depend on them).
        device: torch device; default CUDA when available, else CPU.

    Example:
        >>> import numpy as np
        >>> x = np.eye(3, dtype=np.float32)
        >>> knn(x, k=1).ids.tolist()
        [[1], [0], [0]]
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    k = _positive_int("k", k)
    query_block_size = _positive_int("query_block_size", query_block_size)
    gallery_block_size = _positive_int("gallery_block_size", gallery_block_size)
    queries = as_embeddings("query_embeddings", query_embeddings)
    same_set = gallery_embeddings is None
    gallery = queries if same_set else as_embeddings("gallery_embeddings", gallery_embeddings,
                                                     dim=queries.shape[1])
    if exclude_self is None:
        exclude_self = same_set
    if exclude_self and not same_set and gallery.shape[0] < queries.shape[0]:
        raise ValueError("exclude_self=True needs the first len(query_embeddings) gallery items to be the queries")
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
    with torch.inference_mode():
        fast = _FastPass.build(gallery_t, metric, _fast_dtype(metric, device, num_queries * num_gallery))
        cap = k + max(k, _MIN_EXTRA_CANDIDATES)
        tile = min(gallery_block_size, _TILE_COLUMNS)
        if same_set:
            # square blocks with as many scores as a (query_block_size, tile) block
            selections = _symmetric_selections(fast, queries_t, k, cap, exclude_self,
                                               math.isqrt(query_block_size * tile))
        else:
            selections = _selections(fast, queries_t, k, cap, exclude_self, query_block_size, tile)
        for start, selection in selections:
            ids, overflow = selection.finish()
            stop = start + ids.shape[0]
            query_t = queries_t[start:stop]
            values, ids = _rescore(query_t, gallery_t, ids, metric)
            if exclude_self:
                values = torch.where(ids == torch.arange(start, stop, device=device)[:, None], -torch.inf, values)
            values, ids = _sort_rows(values, ids)
            values, ids = _pad_columns(values[:, :k], ids[:, :k], k)
            unsure = torch.nonzero(overflow).squeeze(1)
            if unsure.numel():
                values[unsure], ids[unsure] = _exact_rows(query_t[unsure], gallery_t, k, metric, start + unsure,
                                                          exclude_self, gallery_block_size)
            ids = torch.where(torch.isneginf(values), -1, ids)
            out_scores[start:stop] = values.cpu().numpy()
            out_ids[start:stop] = ids.cpu().numpy()
    return SearchResult(out_scores, out_ids)


def _selections(fast: _FastPass, queries_t: torch.Tensor, k: int, cap: int, exclude_self: bool, query_block_size: int,
                tile: int):
    """(start, selection) per query block, each fed every gallery tile."""
    query_fast = fast.cast(queries_t)
    scratch = query_fast.new_empty(min(query_block_size, len(queries_t)) * tile)
    for start in range(0, len(queries_t), query_block_size):
        stop = min(start + query_block_size, len(queries_t))
        selection = _Selection(fast, queries_t[start:stop], k, cap)
        for g_start in range(0, fast.gallery.shape[0], tile):
            g_stop = min(g_start + tile, fast.gallery.shape[0])
            block = fast.scores(query_fast[start:stop], g_start, g_stop, scratch)
            if exclude_self:
                _mask_self(block, start, stop, g_start, g_stop)
            selection.add(_row_grid(block), g_start, g_stop)
        yield start, selection


def _symmetric_selections(fast: _FastPass, queries_t: torch.Tensor, k: int, cap: int, exclude_self: bool,
                          block_size: int):
    """(start, selection) per block when the queries are the gallery: the product of blocks i < j serves
    the rows of i and, transposed, the rows of j, so each pair of items is multiplied once. A block is
    complete once every block before it has passed; later blocks keep their candidates meanwhile."""
    query_fast = fast.cast(queries_t)
    bounds = [(start, min(start + block_size, len(queries_t))) for start in range(0, len(queries_t), block_size)]
    waiting: dict[int, _Selection] = {}
    # reused buffers: fresh multi-megabyte tensors per block would cost a page fault per 4 KB
    scratch, transposed = query_fast.new_empty(block_size ** 2), query_fast.new_empty(block_size ** 2)
    for i, (start, stop) in enumerate(bounds):
        selection = waiting.pop(i, None) or _Selection(fast, queries_t[start:stop], k, cap)
        for j in range(i, len(bounds)):
            g_start, g_stop = bounds[j]
            block = fast.scores(query_fast[start:stop], g_start, g_stop, scratch)
            if exclude_self and i == j:
                _mask_self(block, start, stop, g_start, g_stop)
            selection.add(_row_grid(block), g_start, g_stop)
            if j > i:
                if j not in waiting:
                    waiting[j] = _Selection(fast, queries_t[g_start:g_stop], k, cap)
                columns = _view(transposed, block.T.shape).copy_(block.T)
                waiting[j].add(_row_grid(columns), start, stop)
        yield start, selection


def _view(buffer: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A contiguous tensor of ``shape`` on the start of a flat scratch buffer."""
    return buffer[:int(np.prod(shape))].view(shape)


def _pad_columns(values: torch.Tensor, ids: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    pad = width - values.shape[1]
    if pad > 0:
        values = torch.nn.functional.pad(values, (0, pad), value=-torch.inf)
        ids = torch.nn.functional.pad(ids, (0, pad), value=-1)
    return values, ids


@functools.lru_cache(maxsize=None)
def _bfloat16_pays_off() -> bool:
    """Whether this CPU's bfloat16 matrix product is at least 1.5x faster than float32 and stays within
    the error bound the candidate pass assumes (float32 accumulation, round-to-nearest output)."""
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
    if bool(((scores - exact).abs() > allowed).any()):
        return False
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        q, g = queries.to(dtype), gallery.to(dtype)
        q @ g.T  # warm-up (kernel selection)
        begin = time.perf_counter()
        for _ in range(3):
            q @ g.T
        seconds[dtype] = time.perf_counter() - begin
    return seconds[torch.bfloat16] * 1.5 < seconds[torch.float32]


def _fast_dtype(metric: str, device: torch.device, work: int) -> torch.dtype:
    """bfloat16 for cosine/dot on CPUs where it pays off (checked once per process), else float32.
    Small searches skip the check: they would not gain from it."""
    if metric == "euclidean" or device.type != "cpu" or work < _BFLOAT16_MIN_WORK:
        return torch.float32
    return torch.bfloat16 if _bfloat16_pays_off() else torch.float32


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

    @classmethod
    def build(cls, gallery_t: torch.Tensor, metric: str, dtype: torch.dtype) -> "_FastPass":
        if metric == "euclidean" and dtype != torch.float32:
            raise ValueError(f"euclidean candidates need float32, got {dtype}")
        fast = gallery_t.to(dtype)
        norms = torch.zeros(3, dtype=torch.float64, device=gallery_t.device)
        for start in range(0, len(gallery_t), 1 << 16):  # in float64, a slice at a time to keep memory flat
            exact, rounded = gallery_t[start:start + (1 << 16)].double(), fast[start:start + (1 << 16)].double()
            chunk = [exact.norm(dim=1).max(), rounded.norm(dim=1).max(), (exact - rounded).norm(dim=1).max()]
            norms = torch.maximum(norms, torch.stack(chunk))
        norm, rounded_norm, residual_norm = norms.tolist()
        return cls(fast, metric, norm, rounded_norm, residual_norm,
                   (gallery_t * gallery_t).sum(1) if metric == "euclidean" else None)

    @property
    def output_unit(self) -> float:
        return _BFLOAT16_UNIT if self.gallery.dtype == torch.bfloat16 else 0.0

    def cast(self, query_t: torch.Tensor) -> torch.Tensor:
        return query_t.to(self.gallery.dtype)

    def scores(self, query_fast: torch.Tensor, g_start: int, g_stop: int,
               scratch: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of a query block against gallery items g_start:g_stop, written into ``scratch`` when given."""
        out = None if scratch is None else _view(scratch, (query_fast.shape[0], g_stop - g_start))
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


def _threshold(kth: torch.Tensor, error: torch.Tensor, output_unit: float) -> torch.Tensor:
    """Lowest fast score a candidate of each query may have: ``kth - 2E``, widened for the relative output
    rounding, computed in float64 and rounded down to float32. An item below it re-scores strictly below
    the query's k-th exact score, since ``kth`` is at most the k-th best fast score."""
    kth = kth.double()
    widened = kth - 2 * error - 3 * output_unit * (kth.abs() + 2 * error)
    widened = torch.where(torch.isinf(kth), kth, widened)
    low = widened.float()
    return torch.where(low.double() > widened, torch.nextafter(low, torch.full_like(low, -torch.inf)), low)


class _Selection:
    """Running candidate selection for one block of queries: fed fast-score blocks in any order, it keeps
    every gallery item that can be among a query's exact top k.

    A block arrives as a (rows, 16, width) grid of 16 strided groups per row; only groups whose maximum
    reaches the row's threshold are read. The threshold follows from a lower bound on the row's k-th best
    fast score: the k-th best stored candidate or, until there are k, the k-th best group maximum of a
    block (each group maximum is a different item). Rows whose candidates outgrow ``cap`` (e.g. thousands
    of tied scores) are dropped and reported, to be re-done exactly."""

    def __init__(self, fast: _FastPass, query_t: torch.Tensor, k: int, cap: int):
        rows, device = query_t.shape[0], query_t.device
        self.k, self.cap, self.output_unit = k, cap, fast.output_unit
        self.error = fast.error(query_t)
        self.kth = torch.full((rows,), -torch.inf, device=device)
        self.threshold = self.kth.clone()
        self.overflow = torch.zeros(rows, dtype=torch.bool, device=device)
        self.stored = _Candidates.empty(rows, device)
        self.pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (row, item, value), flat
        self.pending_count = 0
        self.bounded = False  # every row's k-th-best bound is finite

    def add(self, grid_and_maxima: tuple[torch.Tensor, torch.Tensor], offset: int, limit: int) -> None:
        """``grid[r, j, p]``: fast score of row r and gallery item ``offset + j * width + p`` (items from
        ``limit`` on are padding); ``group_max[r, p]`` the maximum over j."""
        grid, group_max = grid_and_maxima
        rows, groups, width = grid.shape
        first = not self.bounded
        if first:
            self._bound_kth(grid)
            self.bounded = bool(torch.isfinite(self.kth).all())
        hit_rows, hit_groups = torch.nonzero(group_max >= self.threshold[:, None], as_tuple=True)
        members = grid[hit_rows, :, hit_groups]
        at, member = torch.nonzero(members >= self.threshold[hit_rows, None], as_tuple=True)
        row, item, value = hit_rows[at], offset + hit_groups[at] + width * member, members[at, member].float()
        if offset + groups * width > limit:
            real = item < limit
            row, item, value = row[real], item[real], value[real]
        self.pending.append((row, item, value))
        self.pending_count += row.numel()
        if first or self.pending_count >= rows * self.k:
            self._merge()

    def finish(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate ids (rows, width; -1 = padding) and the overflowed rows."""
        self._merge()
        return self.stored.ids, self.overflow

    def _bound_kth(self, grid: torch.Tensor) -> None:
        """Lower bound on each row's k-th best from the maxima of the finest groups of the grid that still
        number at least 4k (the k-th best of k different items' scores is at most the row's k-th best)."""
        rows, groups, width = grid.shape
        split = groups
        while split > 1 and (groups // split) * width < 4 * self.k:
            split //= 2
        if (groups // split) * width < self.k:
            return
        maxima = grid.reshape(rows, split, (groups // split) * width).amax(1) if split > 1 else grid.reshape(rows, -1)
        self.kth = torch.maximum(self.kth, maxima.topk(self.k, dim=1).values[:, -1].float())
        self._update_threshold()

    def _update_threshold(self) -> None:
        self.threshold = torch.where(self.overflow, torch.inf, _threshold(self.kth, self.error, self.output_unit))

    def _merge(self) -> None:
        row, item, value = (torch.cat(parts) for parts in zip(*self.pending)) if self.pending else \
            (self.stored.ids.new_empty(0), self.stored.ids.new_empty(0), self.stored.values.new_empty(0))
        row, order = torch.sort(row, stable=True)
        found = _Candidates.pack(row, item[order], value[order], len(self.kth))
        values = torch.cat([self.stored.values, found.values], 1)
        ids = torch.cat([self.stored.ids, found.ids], 1)
        self.pending, self.pending_count = [], 0
        if values.shape[1] >= self.k:
            self.kth = torch.maximum(self.kth, values.topk(self.k, dim=1).values[:, -1])
        self._update_threshold()
        keep = (ids >= 0) & (values >= self.threshold[:, None])
        self.overflow |= keep.sum(1) > self.cap
        keep &= ~self.overflow[:, None]
        self._update_threshold()
        row, column = torch.nonzero(keep, as_tuple=True)
        self.stored = _Candidates.pack(row, ids[row, column], values[row, column], len(self.kth))


def _row_grid(block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) scores as a (rows, 16, width) grid, group p of a row holding columns p, p + width, ...
    (columns padded with -inf to a multiple of 16), and its group maxima (rows, width)."""
    width = -(-block.shape[1] // _GROUPS)
    if block.shape[1] != width * _GROUPS:
        block = torch.nn.functional.pad(block, (0, width * _GROUPS - block.shape[1]), value=-torch.inf)
    grid = block.view(block.shape[0], _GROUPS, width)
    return grid, grid.amax(1)


@dataclass(frozen=True)
class _Candidates:
    """Per-row candidate lists, padded: ``values`` (rows, width) fast scores (-inf padding) and ``ids`` (-1)."""

    values: torch.Tensor
    ids: torch.Tensor

    @classmethod
    def empty(cls, rows: int, device: torch.device) -> "_Candidates":
        return cls(torch.empty((rows, 0), device=device), torch.empty((rows, 0), dtype=torch.int64, device=device))

    @classmethod
    def pack(cls, row: torch.Tensor, ids: torch.Tensor, values: torch.Tensor, rows: int) -> "_Candidates":
        """From flat entries sorted by row."""
        counts = torch.bincount(row, minlength=rows)
        width = int(counts.max()) if row.numel() else 0
        slot = torch.arange(row.numel(), device=row.device) - (torch.cumsum(counts, 0) - counts)[row]
        packed_values = torch.full((rows, width), -torch.inf, device=row.device)
        packed_ids = torch.full((rows, width), -1, dtype=torch.int64, device=row.device)
        packed_values[row, slot] = values
        packed_ids[row, slot] = ids
        return cls(packed_values, packed_ids)


def _mask_self(scores: torch.Tensor, q_start: int, q_stop: int, g_start: int, g_stop: int) -> None:
    low, high = max(q_start, g_start), min(q_stop, g_stop)
    if low < high:
        rows = torch.arange(low, high, device=scores.device)
        scores[rows - q_start, rows - g_start] = -torch.inf


def _exact_scores(query: torch.Tensor, gallery: torch.Tensor, metric: str) -> torch.Tensor:
    """Shape-independent scores of every (query, gallery) row pair, (Q, G) from (Q, D) and (G, D): an
    elementwise product summed along D, the same arithmetic whatever the layout of the blocks."""
    return _pair_scores(query[:, None, :], gallery[None, :, :], metric)


def _pair_scores(query: torch.Tensor, gallery: torch.Tensor, metric: str,
                 scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Scores of aligned rows; ``scratch`` (may be ``gallery`` itself) takes the elementwise terms."""
    if metric == "euclidean":
        return -torch.sub(query, gallery, out=scratch).pow_(2).sum(-1).sqrt() + 0.0
    return torch.mul(query, gallery, out=scratch).sum(-1) + 0.0  # + 0.0: -0.0 becomes +0.0 (equal scores compare equal)


def _rescore(query_t: torch.Tensor, gallery_t: torch.Tensor, ids: torch.Tensor,
             metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape-independent scores of each query's candidates (id -1 scores -inf), 4 MB of vectors at a time
    in reused buffers."""
    values = torch.full(ids.shape, -torch.inf, dtype=torch.float32, device=ids.device)
    row, column = torch.nonzero(ids >= 0, as_tuple=True)
    item = ids[row, column]
    chunk = max(1, (1 << 20) // max(1, gallery_t.shape[1]))
    queries, gallery = query_t.new_empty((chunk, query_t.shape[1])), gallery_t.new_empty((chunk, gallery_t.shape[1]))
    for i in range(0, row.numel(), chunk):
        r, c, g = row[i:i + chunk], column[i:i + chunk], item[i:i + chunk]
        q_rows = torch.index_select(query_t, 0, r, out=queries[:len(r)])
        g_rows = torch.index_select(gallery_t, 0, g, out=gallery[:len(r)])
        values[r, c] = _pair_scores(q_rows, g_rows, metric, scratch=g_rows)
    return values, ids


def _exact_rows(query: torch.Tensor, gallery_t: torch.Tensor, k: int, metric: str, rows: torch.Tensor,
                exclude_self: bool, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of a few rows with exact scores over the whole gallery; ties go to the lowest index."""
    best_values = best_ids = None
    for g_start in range(0, gallery_t.shape[0], block_size):
        g_stop = min(g_start + block_size, gallery_t.shape[0])
        step = max(1, (1 << 24) // max(1, query.shape[0] * query.shape[1]))
        block = torch.cat([_exact_scores(query, gallery_t[i:min(i + step, g_stop)], metric)
                           for i in range(g_start, g_stop, step)], 1)
        if exclude_self:
            inside = (rows >= g_start) & (rows < g_stop)
            local = torch.nonzero(inside).squeeze(1)
            block[local, rows[local] - g_start] = -torch.inf
        take = min(k, block.shape[1])
        kth = block.topk(take, dim=1).values[:, -1:]
        # every element tied with the k-th value must be a candidate, so take as many as the worst row needs
        wide = int((block >= kth).sum(1).max())
        values, ids = block.topk(wide, dim=1)
        ids = ids + g_start
        if best_values is not None:
            values, ids = torch.cat([best_values, values], 1), torch.cat([best_ids, ids], 1)
        values, ids = _sort_rows(values, ids)
        best_values, best_ids = values[:, :k], ids[:, :k]
    return _pad_columns(best_values, best_ids, k)
