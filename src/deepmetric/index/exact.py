"""Exact search of our own: blocked matrix products in torch with a running top-k merge, on CUDA when
present. Memory grows with the block sizes, not with queries x database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deepmetric.index.base import RangeSearchResult, VectorIndex


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
    ``query_block`` x ``database_block`` and merged into a running top-k.

    ``precision="bf16"`` runs the first pass in bfloat16, keeps ``rerank_factor * k`` candidates and
    re-scores them in float32; worthwhile only where bf16 matrix products are fast (``bf16_is_fast()``).
    """

    backend = "exact"
    native_filter = True
    native_remove = False

    def __init__(self, *, dim: int, metric: str = "cosine", precision: str = "float32", rerank_factor: int = 8,
                 query_block: int = 4096, database_block: int = 4096, device: str | None = None) -> None:
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
        import torch

        block = vectors[start:stop]
        if out is not None:
            out = out[:, : stop - start]
        if self.metric == "l2":
            # 2 q.x - |x|^2; the per-query -|q|^2 is added after the top-k (it does not change the order).
            return torch.addmm(sq_norms[start:stop].unsqueeze(0).neg(), queries, block.T, alpha=2, out=out)
        return torch.mm(queries, block.T, out=out)

    def _search(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        import torch

        count = self._count
        take = min(k, count)
        first_k = take if self.precision == "float32" else min(count, self.rerank_factor * take)
        vectors = self._vectors
        if self.precision == "bf16":
            if self._half is None:
                self._half = vectors.to(torch.bfloat16)
            vectors = self._half
        sq_norms = (self._vectors * self._vectors).sum(1).to(vectors.dtype) if self.metric == "l2" else None
        mask = None if allowed is None else torch.from_numpy(~allowed[:count]).to(self.device)
        all_scores, all_labels = [], []
        with torch.no_grad():
            for qs in range(0, q.shape[0], self.query_block):
                queries = torch.from_numpy(q[qs: qs + self.query_block]).to(self.device)
                typed = queries.to(vectors.dtype)
                buffer = torch.empty((typed.shape[0], min(self.database_block, count)), dtype=vectors.dtype,
                                     device=self.device)
                best_scores = best_labels = None
                for start in range(0, count, self.database_block):
                    stop = min(start + self.database_block, count)
                    scores = self._block_scores(typed, start, stop, vectors, sq_norms, out=buffer)
                    if mask is not None:
                        scores.masked_fill_(mask[start:stop].unsqueeze(0), -float("inf"))
                    width = min(first_k, stop - start)
                    if width == 1:
                        values, where = scores.max(dim=1, keepdim=True)
                    else:
                        values, where = torch.topk(scores, width, dim=1, sorted=False)
                    where = where + start
                    if best_scores is None:
                        best_scores, best_labels = values.clone(), where
                    else:
                        merged_scores = torch.cat([best_scores, values], dim=1)
                        merged_labels = torch.cat([best_labels, where], dim=1)
                        keep = min(first_k, merged_scores.shape[1])
                        best_scores, pick = torch.topk(merged_scores, keep, dim=1, sorted=False)
                        best_labels = torch.gather(merged_labels, 1, pick)
                if self.precision == "bf16":
                    best_scores, best_labels = self._rerank(queries, best_scores, best_labels, take)
                best_scores = best_scores.float()
                if self.metric == "l2":
                    best_scores = best_scores - (queries * queries).sum(1, keepdim=True)
                order = torch.argsort(best_scores, dim=1, descending=True, stable=True)[:, :take]
                all_scores.append(torch.gather(best_scores, 1, order).cpu())
                all_labels.append(torch.gather(best_labels, 1, order).cpu())
        scores = torch.cat(all_scores).numpy()
        labels = torch.cat(all_labels).numpy().astype(np.int64)
        labels[~np.isfinite(scores)] = -1
        if take < k:
            pad = k - take
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
            labels = np.pad(labels, ((0, 0), (0, pad)), constant_values=-1)
        return scores, labels

    def _rerank(self, queries, first_scores, candidates, take: int):
        """float32 scores of the bf16 candidates; the exact top ``take`` of them."""
        import torch

        chosen = self._vectors[candidates]  # (Q, C, D)
        scores = torch.einsum("qd,qcd->qc", queries, chosen)
        if self.metric == "l2":
            scores = 2 * scores - (chosen * chosen).sum(-1)
        # Masked (tombstoned or outside the subset) candidates stay excluded.
        scores = scores.masked_fill(torch.isinf(first_scores), -float("inf"))
        values, pick = torch.topk(scores, take, dim=1)
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
                offset = (queries * queries).sum(1, keepdim=True) if self.metric == "l2" else 0
                for start in range(0, self._count, self.database_block):
                    stop = min(start + self.database_block, self._count)
                    scores = self._block_scores(queries, start, stop, vectors, sq_norms) - offset
                    row, col = torch.nonzero(scores >= threshold, as_tuple=True)
                    rows.append((row + qs).cpu())
                    labels.append((col + start).cpu())
                    values.append(scores[row, col].cpu())
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
