"""annoy behind the VectorIndex contract. Spec ``"Annoy<trees>"`` (``"Annoy50"``, optional ``",seed=0"``);
query knob ``search_k`` (nodes inspected, default trees x k).

An annoy forest is immutable once built. Items added afterwards wait in an exactly-searched side buffer whose
results are merged with the forest's; when the buffer passes ``REBUILD_FRACTION`` of the forest the forest is
rebuilt from all stored vectors (the cost of a fresh build). Removed items are tombstones filtered by
over-fetching.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from deepmetric.index.base import VectorIndex, parse_knobs

_SPEC = re.compile(r"^Annoy(\d+)$")
REBUILD_FRACTION = 0.1
REBUILD_MIN_PENDING = 10_000


class AnnoyIndex(VectorIndex):
    """A forest of random-projection trees (Bernhardsson, annoy)."""

    backend = "annoy"  # annoy can neither forget an item nor filter a search: the base class does both

    def __init__(self, *, spec: str, dim: int, metric: str = "cosine") -> None:
        super().__init__(spec=spec, dim=dim, metric=metric)
        head, _, rest = spec.partition(",")
        match = _SPEC.match(head.strip())
        if not match or int(match.group(1)) <= 0:
            raise ValueError(f"annoy spec must look like 'Annoy50' (number of trees), got {spec!r}")
        options = parse_knobs(rest, "spec")
        if set(options) - {"seed"}:
            raise ValueError(f"spec {spec!r}: unknown annoy build option(s) {sorted(set(options) - {'seed'})}")
        self.trees = int(match.group(1))
        self.seed = int(options.get("seed", 0))
        self.search_k = -1
        self._clear()

    def _annoy_metric(self) -> str:
        return {"cosine": "angular", "dot": "dot", "euclidean": "euclidean"}[self.metric]

    def _clear(self) -> None:
        from annoy import AnnoyIndex as Forest

        self.forest = Forest(self.dim, self._annoy_metric())
        self.forest.set_seed(self.seed)
        self.built_count = 0  # labels below this live in the forest
        self._pending = np.empty((0, self.dim), np.float32)

    def knob_names(self) -> list[str]:
        return ["search_k"]

    def _set_params(self, knobs: dict[str, float]) -> None:
        self.search_k = int(knobs["search_k"])

    def memory_bytes(self) -> int:
        """The forest lives in one memory-mapped block the size of its file; measured by saving it."""
        import tempfile

        if self.built_count == 0:
            return int(self._pending.nbytes)
        with tempfile.TemporaryDirectory() as folder:
            forest_file = Path(folder) / "forest.ann"
            self.forest.save(str(forest_file))
            return int(forest_file.stat().st_size + self._pending.nbytes)

    def _add(self, x: np.ndarray, labels: np.ndarray) -> None:
        self._pending = np.concatenate([self._pending, x])
        pending = self._pending.shape[0]
        if self.built_count and pending > max(REBUILD_MIN_PENDING, REBUILD_FRACTION * self.built_count):
            self.build()

    def build(self) -> None:
        """(Re)build the forest over every stored item, tombstones included (compaction drops them)."""
        from annoy import AnnoyIndex as Forest

        if self.built_count:
            old = self.forest
            forest = Forest(self.dim, self._annoy_metric())
            forest.set_seed(self.seed)
            for label in range(self.built_count):
                forest.add_item(label, old.get_item_vector(label))
            old.unload()
        else:
            forest = self.forest
        for offset, vector in enumerate(self._pending):
            forest.add_item(self.built_count + offset, vector)
        forest.build(self.trees, n_jobs=-1)
        self.forest = forest
        self.built_count += self._pending.shape[0]
        self._pending = np.empty((0, self.dim), np.float32)

    def _reconstruct(self, labels: np.ndarray) -> np.ndarray:
        out = np.empty((labels.shape[0], self.dim), np.float32)
        for row, label in enumerate(labels):
            out[row] = (self.forest.get_item_vector(int(label)) if label < self.built_count
                        else self._pending[label - self.built_count])
        return out

    def _to_similarity(self, distances: np.ndarray) -> np.ndarray:
        if self.metric == "cosine":
            return 1.0 - distances ** 2 / 2  # annoy's angular distance is sqrt(2 - 2 cos)
        if self.metric == "euclidean":
            return -distances
        return distances

    def _search(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if self.built_count == 0 and self._pending.shape[0]:
            self.build()
        scores = np.full((q.shape[0], k), -np.inf, np.float32)
        labels = np.full((q.shape[0], k), -1, np.int64)
        take = min(k, self.built_count)
        if take:
            search_k = self.search_k if self.search_k > 0 else -1
            for row, query in enumerate(q):
                found, distances = self.forest.get_nns_by_vector(query, take, search_k, True)
                labels[row, : len(found)] = found
                scores[row, : len(found)] = self._to_similarity(np.asarray(distances, np.float32))
        if self._pending.shape[0]:
            pending_labels = np.arange(self.built_count, self.built_count + self._pending.shape[0])
            extra_scores, extra_labels = self._brute_force(q, k, pending_labels)
            merged_scores = np.concatenate([scores, extra_scores], axis=1)
            merged_labels = np.concatenate([labels, extra_labels], axis=1)
            order = np.argsort(-merged_scores, axis=1, kind="stable")[:, :k]
            scores = np.take_along_axis(merged_scores, order, axis=1)
            labels = np.take_along_axis(merged_labels, order, axis=1)
        return scores, labels

    def _save(self, folder: Path) -> dict[str, Any]:
        if self.built_count == 0 and self._pending.shape[0]:
            self.build()
        if self.built_count:
            # annoy.save() re-maps the forest from the new file; the folder is renamed, not copied, so the
            # mapping stays valid.
            self.forest.save(str(folder / "annoy.ann"))
        self._pending.tofile(folder / "pending.f32")
        return {"built_count": self.built_count, "search_k": self.search_k}

    def _load(self, folder: Path, state: dict[str, Any], mmap: bool) -> None:
        self._clear()
        self.built_count = int(state["built_count"])
        if self.built_count:
            path = folder / "annoy.ann"
            self.forest.load(str(path))  # annoy always memory-maps its file
        self._pending = np.fromfile(folder / "pending.f32", dtype=np.float32).reshape(-1, self.dim)
        self.search_k = int(state["search_k"])
