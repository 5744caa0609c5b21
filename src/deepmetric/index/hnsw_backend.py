"""hnswlib behind the VectorIndex contract. Spec ``"HNSW<M>"`` with optional build options
``"HNSW32,efConstruction=200,seed=0"``; query knob ``efSearch``.

hnswlib reports ``1 - dot`` in its "ip" space (cosine and dot) and squared distances in its "l2" space
(euclidean); both are turned back into similarities (minus the distance for euclidean).
Removal is hnswlib's own ``mark_deleted`` (the slot stays allocated until the index is compacted).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from deepmetric.index.base import VectorIndex, negative_distance, parse_knobs

_SPEC = re.compile(r"^HNSW(\d+)$")


def parse_hnsw_spec(spec: str) -> tuple[int, dict[str, float]]:
    head, _, rest = spec.partition(",")
    match = _SPEC.match(head.strip())
    if not match:
        raise ValueError(f"hnswlib spec must look like 'HNSW32' or 'HNSW32,efConstruction=200', got {spec!r}")
    options = parse_knobs(rest, "spec")
    unknown = set(options) - {"efConstruction", "seed"}
    if unknown:
        raise ValueError(f"spec {spec!r}: unknown hnswlib build option(s) {sorted(unknown)}; "
                         "known: ['efConstruction', 'seed'] (efSearch goes to set_params)")
    return int(match.group(1)), options


class HnswlibIndex(VectorIndex):
    """A hierarchical navigable small world graph (Malkov & Yashunin, 2018) from hnswlib."""

    backend = "hnswlib"
    native_remove = True
    native_filter = True

    def __init__(self, *, spec: str, dim: int, metric: str = "cosine") -> None:
        super().__init__(spec=spec, dim=dim, metric=metric)
        self.links, options = parse_hnsw_spec(spec)
        self.ef_construction = int(options.get("efConstruction", 200))
        self.seed = int(options.get("seed", 100))
        self.ef_search = 16
        self._clear()

    def _space(self) -> str:
        return "l2" if self.metric == "euclidean" else "ip"  # cosine inputs arrive normalised

    def _clear(self) -> None:
        import hnswlib

        self.graph = hnswlib.Index(space=self._space(), dim=self.dim)
        self.graph.init_index(max_elements=1024, ef_construction=self.ef_construction, M=self.links,
                              random_seed=self.seed)
        self.graph.set_ef(self.ef_search)

    def knob_names(self) -> list[str]:
        return ["efSearch"]

    def _set_params(self, knobs: dict[str, float]) -> None:
        self.ef_search = int(knobs["efSearch"])
        self.graph.set_ef(self.ef_search)

    def memory_bytes(self) -> int:
        return int(self.graph.index_file_size())

    def _add(self, x: np.ndarray, labels: np.ndarray) -> None:
        needed = self.graph.element_count + x.shape[0]
        if needed > self.graph.get_max_elements():
            self.graph.resize_index(max(needed, 2 * self.graph.get_max_elements()))
        self.graph.add_items(x, labels)

    def _remove(self, labels: np.ndarray) -> None:
        for label in labels:
            self.graph.mark_deleted(int(label))

    def _reconstruct(self, labels: np.ndarray) -> np.ndarray:
        return np.asarray(self.graph.get_items(labels.tolist(), return_type="numpy"), dtype=np.float32)

    def _search(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        available = len(self) if allowed is None else int(allowed.sum())
        take = min(k, available)
        if self.ef_search < take:
            self.graph.set_ef(take)  # hnswlib cannot return more than ef results
        try:
            if allowed is None:
                labels, distances = self.graph.knn_query(q, k=take)
            else:
                # A Python callback per visited node: correct but slower than a plain search; small
                # subsets never get here (they are answered exactly from the stored vectors).
                labels, distances = self.graph.knn_query(q, k=take, filter=lambda label: bool(allowed[label]))
        except RuntimeError:
            # hnswlib raises when a filtered graph walk finds fewer than k items; answer exactly instead.
            candidates = np.flatnonzero(allowed if allowed is not None else self._alive)
            return self._brute_force(q, k, candidates)
        finally:
            self.graph.set_ef(self.ef_search)
        labels = labels.astype(np.int64)
        scores = negative_distance(distances) if self.metric == "euclidean" else 1.0 - distances
        if take < k:
            scores = np.pad(scores, ((0, 0), (0, k - take)), constant_values=-np.inf)
            labels = np.pad(labels, ((0, 0), (0, k - take)), constant_values=-1)
        return scores.astype(np.float32), labels

    def _save(self, folder: Path) -> dict[str, Any]:
        self.graph.save_index(str(folder / "hnswlib.bin"))
        return {"ef_search": self.ef_search, "max_elements": int(self.graph.get_max_elements())}

    def _load(self, folder: Path, state: dict[str, Any], mmap: bool) -> None:
        import hnswlib

        self.graph = hnswlib.Index(space=self._space(), dim=self.dim)
        self.graph.load_index(str(folder / "hnswlib.bin"), max_elements=int(state["max_elements"]))
        self.ef_search = int(state["ef_search"])
        self.graph.set_ef(self.ef_search)
