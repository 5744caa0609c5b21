"""Exact k-nearest-neighbour search in blocks: memory grows linearly with the gallery, never N x N.

Scores come from a fast float32 matrix-product pass that proposes candidates and a re-scoring of the
candidates by one fixed elementwise arithmetic: BLAS rounds matrix products differently for different
block shapes, so only the re-scored values are shape-independent. Ties are then
broken by gallery index, so results do not depend on the block sizes.
"""

from __future__ import annotations

import numpy as np
import torch

from deepmetric.types import SearchResult

METRICS = ("cosine", "dot", "euclidean")


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


def _scores(query: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    return query @ gallery.T


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

    Memory: ``query_block_size * gallery_block_size`` floats plus the (Q, k) result.

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
    # Candidates beyond k leave room for float32 rounding; the guard below checks that it was enough.
    keep = min(k + max(16, k // 8), num_gallery)
    with torch.inference_mode():
        for start in range(0, num_queries, query_block_size):
            stop = min(start + query_block_size, num_queries)
            query_t = queries_t[start:stop]
            fast_values = fast_ids = None
            for g_start in range(0, num_gallery, gallery_block_size):
                g_stop = min(g_start + gallery_block_size, num_gallery)
                block = _fast_scores(query_t, gallery_t[g_start:g_stop], metric)
                if exclude_self:
                    _mask_self(block, start, stop, g_start, g_stop)
                values, ids = block.topk(min(keep, block.shape[1]), dim=1)
                ids = ids + g_start
                if fast_values is not None:
                    merged = torch.cat([fast_values, values], 1)
                    values, pos = merged.topk(min(keep, merged.shape[1]), dim=1)
                    ids = torch.cat([fast_ids, ids], 1).gather(1, pos)
                fast_values, fast_ids = values, ids
            values, ids = _rescore(query_t, gallery_t, fast_ids, metric)
            if exclude_self:
                values = torch.where(ids == torch.arange(start, stop, device=device)[:, None], -torch.inf, values)
            values, ids = _sort_rows(values, ids)
            if keep < num_gallery:
                # Items left out have float32 score <= the last candidate's, so exact score <= that + error;
                # rows where that could reach the k-th exact score are redone exactly over the whole gallery.
                bound = _left_out_bound(query_t, gallery_t, fast_values[:, -1], metric)
                unsure = torch.nonzero(values[:, k - 1] <= bound).squeeze(1)
                if unsure.numel():
                    exact_values, exact_ids = _exact_rows(query_t[unsure], gallery_t, k, metric, start + unsure,
                                                          exclude_self, gallery_block_size)
                    values, ids = values[:, :k].clone(), ids[:, :k].clone()
                    values[unsure], ids[unsure] = exact_values, exact_ids
            values, ids = values[:, :k], ids[:, :k]
            ids = torch.where(torch.isneginf(values), -1, ids)
            out_scores[start:stop, : values.shape[1]] = values.cpu().numpy()
            out_ids[start:stop, : ids.shape[1]] = ids.cpu().numpy()
    return SearchResult(out_scores, out_ids)


def _fast_scores(query_t: torch.Tensor, gallery_block: torch.Tensor, metric: str) -> torch.Tensor:
    scores = query_t @ gallery_block.T
    if metric == "euclidean":
        # ranking by 2 q.g - |g|^2 is ranking by -|q - g|^2 (the |q|^2 term is the same along a row)
        scores = 2 * scores - (gallery_block * gallery_block).sum(1)[None, :]
    return scores


def _mask_self(scores: torch.Tensor, q_start: int, q_stop: int, g_start: int, g_stop: int) -> None:
    low, high = max(q_start, g_start), min(q_stop, g_stop)
    if low < high:
        rows = torch.arange(low, high, device=scores.device)
        scores[rows - q_start, rows - g_start] = -torch.inf


def _exact_scores(query: torch.Tensor, gallery: torch.Tensor, metric: str) -> torch.Tensor:
    """Shape-independent scores of every (query, gallery) row pair, (Q, G) from (Q, D) and (G, D): an
    elementwise product summed along D, the same arithmetic whatever the layout of the blocks."""
    return _pair_scores(query[:, None, :], gallery[None, :, :], metric)


def _pair_scores(query: torch.Tensor, gallery: torch.Tensor, metric: str) -> torch.Tensor:
    if metric == "euclidean":
        return -((query - gallery) ** 2).sum(-1).sqrt() + 0.0
    return (query * gallery).sum(-1) + 0.0  # + 0.0 turns -0.0 into +0.0 so equal scores compare equal


def _rescore(query_t: torch.Tensor, gallery_t: torch.Tensor, ids: torch.Tensor, metric: str,
             chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    values = torch.empty(ids.shape, dtype=torch.float32, device=ids.device)
    for i in range(0, ids.shape[0], chunk):
        values[i:i + chunk] = _pair_scores(query_t[i:i + chunk, None, :], gallery_t[ids[i:i + chunk]], metric)
    return values, ids


def _left_out_bound(query_t: torch.Tensor, gallery_t: torch.Tensor, fast_last: torch.Tensor,
                    metric: str) -> torch.Tensor:
    """Upper bound on the exact score of any item the float32 pass left out, per query.

    Float32 dot-product error is at most dim * 2^-24 * |q| |g| (Higham 2002); we double it for safety."""
    dim, unit = query_t.shape[1], 2.0 ** -24
    q_norm, g_norm = query_t.norm(dim=1), gallery_t.norm(dim=1).max()
    if metric != "euclidean":
        return fast_last + 2 * dim * unit * q_norm * g_norm
    # fast value 2 q.g - |g|^2 = |q|^2 - |q - g|^2, computed with error <= 2 dim u (q+g)^2 (doubled)
    error = 4 * dim * unit * (q_norm + g_norm) ** 2
    return -(q_norm ** 2 - fast_last - error).clamp(min=0).sqrt()


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
    pad = k - best_values.shape[1]
    if pad > 0:
        best_values = torch.nn.functional.pad(best_values, (0, pad), value=-torch.inf)
        best_ids = torch.nn.functional.pad(best_ids, (0, pad), value=-1)
    return best_values, best_ids
