"""Exact search behind the VectorIndex contract: the stored vectors searched by the one exact top-k engine
(``deepmetric.index.topk``), so its results are exact and ordered by score, then by insertion order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from deepmetric.index.base import VectorIndex
from deepmetric.index.topk import check_precision, search_prepared
from deepmetric.validation import check_positive_int

# spec tokens after "Flat" that name the candidate pass's precision ("bf16" was the first spelling)
_SPEC_PRECISIONS = {"bf16": "bfloat16", "bfloat16": "bfloat16", "float32": "float32"}


def precision_from_spec(spec: str) -> str:
    """``"Flat"`` -> "auto", ``"Flat,bf16"`` / ``"Flat,bfloat16"`` -> "bfloat16", ``"Flat,float32"`` ->
    "float32"; anything else is a ValueError."""
    tokens = [token.strip() for token in spec.split(",")]
    if tokens[0] not in ("Flat", "exact") or len(tokens) > 2 or any(t not in _SPEC_PRECISIONS for t in tokens[1:]):
        raise ValueError(f"exact backend spec must be 'Flat', 'Flat,float32' or 'Flat,bf16', got {spec!r}")
    return _SPEC_PRECISIONS[tokens[1]] if len(tokens) == 2 else "auto"


class ExactIndex(VectorIndex):
    """Exact search over the stored float32 vectors (``deepmetric.index.topk``): every returned score is
    the engine's fixed float32 arithmetic and no item scoring higher is ever missed; ties go to the item
    added first. Restricted searches and removed items (tombstones) search the allowed vectors only.

    Args:
        dim: vector dimension.
        metric: "cosine", "dot" or "euclidean" (aliases "ip", "l2").
        precision: the engine's candidate pass ("auto", "float32" or "bfloat16"); results do not depend on it.
        query_block, database_block: the engine's block sizes (results do not depend on them).
        device: torch device for the matrix products (default CUDA when available, else CPU).
    """

    backend = "exact"
    native_filter = True
    native_remove = False

    def __init__(self, *, dim: int, metric: str = "cosine", precision: str = "auto", query_block: int = 1024,
                 database_block: int = 65536, device: str | None = None) -> None:
        self.precision = check_precision(precision)
        super().__init__(spec={"auto": "Flat", "float32": "Flat,float32", "bfloat16": "Flat,bf16"}[precision],
                         dim=dim, metric=metric)
        self.query_block = check_positive_int("query_block", query_block)
        self.database_block = check_positive_int("database_block", database_block)
        self.device = device
        self._clear()

    def knob_names(self) -> list[str]:
        return ["query_block", "database_block"]

    def _set_params(self, knobs: dict[str, float]) -> None:
        for name, value in knobs.items():
            setattr(self, name, check_positive_int(name, value))

    def _clear(self) -> None:
        self._storage = np.empty((0, self.dim), dtype=np.float32)
        self._count = 0

    @property
    def _vectors(self) -> np.ndarray:
        return self._storage[: self._count]

    def memory_bytes(self) -> int:
        return self._count * self.dim * 4

    def _add(self, x: np.ndarray, labels: np.ndarray) -> None:
        needed = self._count + x.shape[0]
        if needed > self._storage.shape[0]:
            # capacity doubles, so many small adds stay amortised O(N)
            grown = np.empty((max(needed, 2 * self._storage.shape[0]), self.dim), dtype=np.float32)
            grown[: self._count] = self._vectors
            self._storage = grown
        self._storage[self._count: needed] = x
        self._count = needed

    def _reconstruct(self, labels: np.ndarray) -> np.ndarray:
        return self._vectors[labels]

    def _search(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if allowed is None:
            labels, vectors = None, self._vectors
        else:
            # the allowed vectors in label order: ties still go to the lowest label
            labels = np.flatnonzero(allowed[: self._count])
            vectors = np.ascontiguousarray(self._vectors[labels])
        result = search_prepared(q, vectors, k=k, metric=self.engine_metric, exclude_self=False,
                                 query_block_size=self.query_block, gallery_block_size=self.database_block,
                                 device=self.device, precision=self.precision)
        if labels is None:
            return result.scores, result.ids
        found = result.ids >= 0
        return result.scores, np.where(found, labels[np.where(found, result.ids, 0)], -1)

    def _save(self, folder: Path) -> dict[str, Any]:
        self._vectors.tofile(folder / "vectors.f32")
        return {"precision": self.precision}

    def _load(self, folder: Path, state: dict[str, Any], mmap: bool) -> None:
        path = folder / "vectors.f32"
        count = path.stat().st_size // (4 * self.dim)
        # copy-on-write mapping: pages are read lazily and the file is never written
        self._storage = (np.memmap(path, dtype=np.float32, mode="c", shape=(count, self.dim)) if mmap and count
                         else np.fromfile(path, dtype=np.float32).reshape(count, self.dim))
        self._count = count
        saved = state.get("precision", "auto")
        self.precision = check_precision(_SPEC_PRECISIONS.get(saved, saved))
