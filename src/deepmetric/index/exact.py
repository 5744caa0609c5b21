"""Exact search of our own: blocked matrix products in torch with a running top-k merge, on CUDA when
present. Memory grows with the block sizes, not with queries x database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deepmetric.index.base import RangeSearchResult, VectorIndex

# The small-k first pass keeps one maximum per GROUP consecutive items (see ExactIndex._group_candidates).
GROUP = 64


def bf16_is_fast() -> bool:
    """True when the CPU has native bf16 matrix units (AVX512-BF16 / AMX) that oneDNN uses, or on CUDA."""
    import torch

    if torch.cuda.is_available():
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class ExactIndex(VectorIndex):
    """Brute-force search: ``scores = q @ x.T`` (``l2``: ``2 q.x - |q|^2 - |x|^2``) computed in blocks of
    ``query_block`` x ``database_block``. For small k each score block, still in cache, is reduced to the
    maximum of every ``GROUP`` items; the best k groups are re-scored exactly (k * GROUP dot products per
    query), so selection costs a few percent of the matrix product. Large k merges a running top-k.

    ``precision="bf16"`` runs the first pass in bfloat16, keeps the ``rerank_factor * k`` best groups (or
    items) and re-scores them in float32; worthwhile only where bf16 matrix products are fast
    (``bf16_is_fast()``).
    """

    backend = "exact"
    native_filter = True
    native_remove = False

    def __init__(self, *, dim: int, metric: str = "cosine", precision: str = "float32", rerank_factor: int = 8,
                 query_block: int = 2048, database_block: int = 1024, device: str | None = None) -> None:
        super().__init__(spec="Flat,bf16" if precision == "bf16" else "Flat", dim=dim, metric=metric)
        import torch

        if precision not in ("float32", "bf16"):
            raise ValueError(f"precision must be 'float32' or 'bf16', got {precision!r}")
        for name, value in (("rerank_factor", rerank_factor), ("query_block", query_block),
                            ("database_block", database_block)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.precision = precision
        self.rerank_factor = rerank_factor
        self.query_block = query_block
        self.database_block = database_block
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._clear()

    def knob_names(self) -> list[str]:
        return ["query_block", "database_block"]

    def _set_params(self, knobs: dict[str, float]) -> None:
        for name, value in knobs.items():
            setattr(self, name, int(value))

    def _clear(self) -> None:
        import torch

        self._storage = torch.empty((0, self.dim), dtype=torch.float32, device=self.device)
        self._count = 0
        self._half: Any = None

    @property
    def _vectors(self):
        return self._storage[: self._count]

    def memory_bytes(self) -> int:
        return self._count * self.dim * 4

    def _add(self, x: np.ndarray, labels: np.ndarray) -> None:
        import torch

        needed = self._count + x.shape[0]
        if needed > self._storage.shape[0]:
            # Capacity doubles so many small adds stay amortised O(N).
            grown = torch.empty((max(needed, 2 * self._storage.shape[0]), self.dim), dtype=torch.float32,
                                device=self.device)
            grown[: self._count] = self._vectors
            self._storage = grown
        self._storage[self._count: needed] = torch.from_numpy(x).to(self.device)
        self._count = needed
        self._half = None

    def _reconstruct(self, labels: np.ndarray) -> np.ndarray:
        import torch

        return self._vectors[torch.from_numpy(labels).to(self.device)].cpu().numpy()

    def _block_scores(self, queries, start: int, stop: int, vectors, sq_norms, out=None):
        """Scores of database items ``start:stop`` (rows) against ``queries`` (columns): items x queries, so
        a reduction over items runs down columns, contiguous across queries (vectorised)."""
        import torch

        block = vectors[start:stop]
        if out is not None:
            out = out[: stop - start]
        if self.metric == "l2":
            # 2 q.x - |x|^2; the per-query -|q|^2 is added after the top-k (it does not change the order).
            return torch.addmm(sq_norms[start:stop].unsqueeze(1).neg(), block, queries.T, alpha=2, out=out)
        return torch.mm(block, queries.T, out=out)

    def _search(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        import torch

        count = self._count
        take = min(k, count)
        # How many of the first pass's best get exact float32 scores: k, or rerank_factor * k for bf16.
        wanted = take if self.precision == "float32" else min(count, self.rerank_factor * take)
        vectors = self._vectors
        if self.precision == "bf16":
            if self._half is None:
                self._half = vectors.to(torch.bfloat16)
            vectors = self._half
        sq_norms = (self._vectors * self._vectors).sum(1) if self.metric == "l2" else None
        mask = None if allowed is None else torch.from_numpy(~allowed[:count]).to(self.device)
        by_groups = wanted * GROUP * 4 <= count
        all_scores, all_labels = [], []
        with torch.no_grad():
            for qs in range(0, q.shape[0], self.query_block):
                queries = torch.from_numpy(q[qs: qs + self.query_block]).to(self.device)
                first_pass = self._group_candidates if by_groups else self._topk_candidates
                candidates = first_pass(queries, wanted, vectors, sq_norms, mask)
                best_scores, best_labels = self._rescore(queries, candidates, take, sq_norms, mask)
                if self.metric == "l2":
                    best_scores = best_scores - (queries * queries).sum(1, keepdim=True)
                all_scores.append(best_scores.cpu())
                all_labels.append(best_labels.cpu())
        scores = torch.cat(all_scores).numpy()
        labels = torch.cat(all_labels).numpy().astype(np.int64)
        labels[~np.isfinite(scores)] = -1
        if take < k:
            pad = k - take
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            labels = np.pad(labels, ((0, 0), (0, pad)), constant_values=-1)
        return scores, labels

    def _database_blocks(self, queries, vectors, sq_norms, mask):
        """Yield ``(start, stop, scores)`` per database block: ``scores`` (items x queries) is a reused
        buffer whose rows are padded with -inf to a multiple of ``GROUP``; masked items score -inf."""
        import torch

        count = self._count
        step = -(-self.database_block // GROUP) * GROUP  # blocks start on group boundaries
        rows = -(-min(step, count) // GROUP) * GROUP
        buffer = torch.empty((rows, queries.shape[0]), dtype=vectors.dtype, device=self.device)
        typed = queries.to(vectors.dtype)
        norms = None if sq_norms is None else sq_norms.to(vectors.dtype)
        for start in range(0, count, step):
            stop = min(start + step, count)
            padded = -(-(stop - start) // GROUP) * GROUP
            scores = self._block_scores(typed, start, stop, vectors, norms, out=buffer)
            if mask is not None:
                scores.masked_fill_(mask[start:stop].unsqueeze(1), -float("inf"))
            if padded > stop - start:
                buffer[stop - start: padded].fill_(-float("inf"))
            yield start, stop, buffer[:padded]

    def _group_candidates(self, queries, wanted: int, vectors, sq_norms, mask):
        """Small-k first pass: only the maximum of every ``GROUP`` consecutive items is kept (a cheap
        vectorised reduction of a score block still in cache), then the ``wanted`` best groups per query.
        The true top ``wanted`` items lie in those groups: each other group's best is beaten by ``wanted``
        group maxima, i.e. by ``wanted`` distinct items (up to float32 rounding between near-equal scores,
        as in any blocked product). Returns (Q, wanted * GROUP) labels."""
        import torch

        groups = -(-self._count // GROUP)
        maxima = torch.empty((groups, queries.shape[0]), dtype=vectors.dtype, device=self.device)
        for start, _, scores in self._database_blocks(queries, vectors, sq_norms, mask):
            first = start // GROUP
            torch.amax(scores.view(-1, GROUP, scores.shape[1]), dim=1,
                       out=maxima[first: first + scores.shape[0] // GROUP])
        if wanted == 1:
            best = maxima.argmax(dim=0).unsqueeze(1)
        else:
            best = torch.topk(maxima.T, min(wanted, groups), dim=1, sorted=False).indices
        offsets = torch.arange(GROUP, device=self.device)
        return (best.unsqueeze(-1) * GROUP + offsets).flatten(1)

    def _topk_candidates(self, queries, wanted: int, vectors, sq_norms, mask):
        """Large-k first pass: a running top-``wanted`` merged block by block. Returns (Q, wanted) labels."""
        import torch

        best_scores = best_labels = None
        for start, stop, scores in self._database_blocks(queries, vectors, sq_norms, mask):
            values, where = torch.topk(scores[: stop - start].T, min(wanted, stop - start), dim=1, sorted=False)
            where = where + start
            if best_scores is None:
                best_scores, best_labels = values.clone(), where
            else:
                merged_scores = torch.cat([best_scores, values], dim=1)
                merged_labels = torch.cat([best_labels, where], dim=1)
                best_scores, pick = torch.topk(merged_scores, min(wanted, merged_scores.shape[1]), dim=1,
                                               sorted=False)
                best_labels = torch.gather(merged_labels, 1, pick)
        return best_labels

    def _rescore(self, queries, candidates, take: int, sq_norms, mask):
        """float32 scores of the (Q, C) candidate labels (labels past the end or masked score -inf); the
        best ``take`` of them sorted by decreasing score. The candidates' vectors are gathered a few queries
        at a time into one reused cache-sized buffer (fresh large gathers cost more in page faults)."""
        import torch

        valid = candidates < self._count
        candidates = torch.where(valid, candidates, torch.zeros_like(candidates))
        if mask is not None:
            valid &= ~mask[candidates]
        width = candidates.shape[1]
        step = max(1, (1 << 20) // (width * self.dim))
        gathered = torch.empty((step * width, self.dim), dtype=torch.float32, device=self.device)
        scores = torch.empty(candidates.shape, dtype=torch.float32, device=self.device)
        for row in range(0, candidates.shape[0], step):
            labels = candidates[row: row + step]
            chosen = torch.index_select(self._vectors, 0, labels.flatten(), out=gathered[: labels.numel()])
            # Multiply-and-sum: batched matrix-vector products (bmm with one column) are ~6x slower here.
            torch.sum(chosen.view(labels.shape[0], width, self.dim) * queries[row: row + step].unsqueeze(1), dim=2,
                      out=scores[row: row + step])
        if self.metric == "l2":
            scores = 2 * scores - sq_norms[candidates]
        scores.masked_fill_(~valid, -float("inf"))
        values, pick = torch.topk(scores, take, dim=1, sorted=True)
        return values, torch.gather(candidates, 1, pick)

    def range_search(self, q: Any, threshold: float, *, subset: Any = None) -> RangeSearchResult:
        """Exact: every item with similarity >= ``threshold``, one pass over the blocks."""
        import torch

        if subset is not None or self.num_tombstones:
            return super().range_search(q, threshold, subset=subset)
        q = self._prepare(q, "q")
        threshold = float(threshold)
        vectors = self._vectors
        sq_norms = (vectors * vectors).sum(1) if self.metric == "l2" else None
        rows, labels, values = [], [], []
        with torch.no_grad():
            for qs in range(0, q.shape[0], self.query_block):
                queries = torch.from_numpy(q[qs: qs + self.query_block]).to(self.device)
                offset = (queries * queries).sum(1) if self.metric == "l2" else 0
                for start in range(0, self._count, self.database_block):
                    stop = min(start + self.database_block, self._count)
                    scores = self._block_scores(queries, start, stop, vectors, sq_norms) - offset
                    col, row = torch.nonzero(scores >= threshold, as_tuple=True)
                    rows.append((row + qs).cpu())
                    labels.append((col + start).cpu())
                    values.append(scores[col, row].cpu())
        row = torch.cat(rows).numpy() if rows else np.empty(0, np.int64)
        label = torch.cat(labels).numpy() if labels else np.empty(0, np.int64)
        score = torch.cat(values).numpy() if values else np.empty(0, np.float32)
        order = np.lexsort((-score, row))
        row, label, score = row[order], label[order], score[order]
        lims = np.searchsorted(row, np.arange(q.shape[0] + 1)).astype(np.int64)
        return RangeSearchResult(lims, score.astype(np.float32), self._external[label].astype(np.int64))

    def _save(self, folder: Path) -> dict[str, Any]:
        self._vectors.cpu().numpy().tofile(folder / "vectors.f32")
        return {"precision": self.precision, "rerank_factor": self.rerank_factor}

    def _load(self, folder: Path, state: dict[str, Any], mmap: bool) -> None:
        import torch

        path = folder / "vectors.f32"
        count = path.stat().st_size // (4 * self.dim)
        # Copy-on-write mapping: pages are read lazily and the file is never written.
        array = (np.memmap(path, dtype=np.float32, mode="c", shape=(count, self.dim)) if mmap and count
                 else np.fromfile(path, dtype=np.float32).reshape(count, self.dim))
        self._storage = torch.from_numpy(array).to(self.device)
        self._count = count
        self.precision = state.get("precision", "float32")
        self.rerank_factor = int(state.get("rerank_factor", 8))
