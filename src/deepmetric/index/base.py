"""The VectorIndex contract shared by every backend: id mapping, tombstones, restricted and range search,
query-time knobs and the on-disk format (a folder: JSON manifest with version and SHA-256 + raw arrays).

Backends see only *internal labels* ``0..n-1`` in insertion order; this class maps them to the caller's
arbitrary int64 ids, keeps a tombstone mask for removed items and filters or over-fetches at search time
when a library cannot delete or filter by itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from deepmetric.distances import canonical_metric
from deepmetric.types import SearchResult
from deepmetric.validation import check_embeddings, check_positive_int

FORMAT_NAME = "deepmetric-index"
FORMAT_VERSION = 1
MANIFEST = "index.json"

# A backend without native deletion is rebuilt from its stored vectors once this share of it is dead.
COMPACT_DEAD_FRACTION = 0.3
# Restricted searches over at most this many items are answered exactly from the stored vectors.
SMALL_SUBSET = 4096


@dataclass(frozen=True)
class RangeSearchResult:
    """Every item with similarity >= threshold per query: query ``i`` owns ``ids[lims[i]:lims[i+1]]`` and
    ``scores[lims[i]:lims[i+1]]``, sorted by decreasing similarity."""

    lims: np.ndarray
    scores: np.ndarray
    ids: np.ndarray

    def __len__(self) -> int:
        return int(self.lims.shape[0] - 1)

    def __getitem__(self, query: int) -> tuple[np.ndarray, np.ndarray]:
        start, stop = int(self.lims[query]), int(self.lims[query + 1])
        return self.ids[start:stop], self.scores[start:stop]


def parse_knobs(knobs: str | dict[str, Any] | None, argument: str = "knobs") -> dict[str, float]:
    """``"nprobe=32,efSearch=64"`` -> ``{"nprobe": 32, "efSearch": 64}``."""
    if knobs is None or knobs == "":
        return {}
    if isinstance(knobs, dict):
        items = list(knobs.items())
    elif isinstance(knobs, str):
        items = []
        for token in knobs.split(","):
            name, sep, value = token.strip().partition("=")
            if not sep or not name or not value:
                raise ValueError(f"{argument}={knobs!r}: expected comma-separated name=value pairs like 'nprobe=32'")
            items.append((name.strip(), value.strip()))
    else:
        raise TypeError(f"{argument} must be a string like 'nprobe=32' or a dict, got {type(knobs).__name__}")
    parsed: dict[str, float] = {}
    for name, value in items:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{argument}: value of {name!r} must be a number, got {value!r}") from None
        parsed[name] = int(number) if number.is_integer() else number
    return parsed


def format_knobs(knobs: dict[str, float]) -> str:
    return ",".join(f"{name}={value}" for name, value in knobs.items())


def negative_distance(squared_distances: np.ndarray) -> np.ndarray:
    """Euclidean scores from the squared distances a library reports: minus the distance (higher = closer),
    the same convention as the exact engine; tiny negative squares from rounding count as 0."""
    return -np.sqrt(np.maximum(np.asarray(squared_distances, dtype=np.float32), 0))


def as_vectors(x: Any, dim: int, argument: str) -> np.ndarray:
    """A (N, dim) finite floating-point matrix (one vector of length dim counts as one row) as C-contiguous
    float32; the checks are ``deepmetric.validation.check_embeddings``'s."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray) and x.ndim == 1 and x.shape[0] == dim:
        x = x[None, :]
    return as_embeddings(argument, x, dim=dim)


def as_embeddings(name: str, value: Any, *, dim: int | None = None) -> np.ndarray:
    """An (N, D) finite floating-point numpy array or torch tensor (``deepmetric.validation.check_embeddings``)
    as C-contiguous float32 numpy."""
    check_embeddings(name, value, dim=dim, finite=False)
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    array = np.ascontiguousarray(value, dtype=np.float32)
    # checked after the cast: a float64 value beyond the float32 range becomes infinite
    return check_embeddings(name, array, dim=dim)


def as_ids(ids: Any, count: int | None, argument: str) -> np.ndarray:
    if hasattr(ids, "detach"):
        ids = ids.detach().cpu().numpy()
    ids = np.asarray(ids)
    if ids.ndim == 0:
        ids = ids[None]
    if ids.ndim != 1:
        raise ValueError(f"{argument} must be a 1-D array of int64 ids, got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"{argument} must be integers, got dtype {ids.dtype}")
    if count is not None and ids.shape[0] != count:
        raise ValueError(f"{argument} has {ids.shape[0]} ids but there are {count} vectors")
    return ids.astype(np.int64, copy=False)


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 4 MiB blocks (the manifests' checksums)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


class IndexFormatError(ValueError):
    """A saved index is truncated, corrupt, foreign or of an unknown format version."""


class VectorIndex:
    """One API over every backend. Scores are similarities, higher = closer, for every metric:
    ``cosine`` (vectors are L2-normalised on the way in), ``dot`` (inner product) and ``euclidean`` (minus
    the Euclidean distance); ``ip`` and ``l2`` are accepted as aliases (``deepmetric.distances.canonical_metric``).
    Missing results are id -1 with score -inf.

    Subclasses implement the underscore methods on internal labels.
    """

    backend: ClassVar[str] = ""
    native_remove: ClassVar[bool] = False  # the library itself forgets removed items
    native_filter: ClassVar[bool] = False  # the library can restrict a search to an allowed mask

    def __init__(self, *, spec: str, dim: int, metric: str = "cosine") -> None:
        self.spec = spec
        self.dim = check_positive_int("dim", dim)
        self.metric = canonical_metric(metric)
        self.knobs: dict[str, float] = {}
        self._reset_ids()

    # ---- id mapping -------------------------------------------------------------------------------
    def _reset_ids(self) -> None:
        self._external = np.empty(0, dtype=np.int64)  # internal label -> external id
        self._alive = np.empty(0, dtype=bool)
        self._sorted_ids = np.empty(0, dtype=np.int64)  # alive external ids, sorted
        self._sorted_labels = np.empty(0, dtype=np.int64)

    def _labels_of(self, ids: np.ndarray) -> np.ndarray:
        """Internal labels of alive external ids; -1 where unknown."""
        where = np.searchsorted(self._sorted_ids, ids)
        where = np.minimum(where, max(self._sorted_ids.shape[0] - 1, 0))
        found = self._sorted_ids.shape[0] > 0
        hit = (self._sorted_ids[where] == ids) if found else np.zeros(ids.shape, bool)
        return np.where(hit, self._sorted_labels[where] if found else -1, -1)

    def __len__(self) -> int:
        return int(self._sorted_ids.shape[0])

    @property
    def num_tombstones(self) -> int:
        return int(self._alive.shape[0] - len(self))

    @property
    def ids(self) -> np.ndarray:
        """The ids currently in the index, sorted."""
        return self._sorted_ids.copy()

    def __contains__(self, item: int) -> bool:
        return bool(self._labels_of(np.asarray([item], dtype=np.int64))[0] >= 0)

    # ---- public verbs -------------------------------------------------------------------------------
    @property
    def is_trained(self) -> bool:
        return True

    def _prepare(self, x: Any, argument: str) -> np.ndarray:
        x = as_vectors(x, self.dim, argument)
        if self.metric == "cosine":
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            if (norms == 0).any():
                raise ValueError(f"{argument} has an all-zero row {int(np.flatnonzero(norms[:, 0] == 0)[0])}; "
                                 "cosine similarity is undefined for it")
            x = x / norms
        return x

    def train(self, x: Any) -> VectorIndex:
        """Learn the coarse quantiser / codebooks from ``x`` (N, dim); a no-op for backends without training."""
        self._train(self._prepare(x, "x"))
        return self

    def add(self, x: Any, ids: Any = None) -> VectorIndex:
        """Add vectors ``x`` (N, dim) under int64 ``ids`` (default: the next free integers). Ids must be new."""
        x = self._prepare(x, "x")
        if ids is None:
            start = int(self._sorted_ids[-1]) + 1 if len(self) else 0
            ids = np.arange(start, start + x.shape[0], dtype=np.int64)
        ids = as_ids(ids, x.shape[0], "ids")
        unique = np.unique(ids)
        if unique.shape[0] != ids.shape[0]:
            raise ValueError("ids contains duplicates")
        present = self._labels_of(ids) >= 0
        if present.any():
            raise ValueError(f"ids already in the index (remove them first): {ids[present][:5].tolist()}")
        if not self.is_trained:
            raise ValueError(f"index {self.spec!r} must be trained before add(); call train(x) first")
        if x.shape[0] == 0:
            return self
        labels = np.arange(self._external.shape[0], self._external.shape[0] + x.shape[0], dtype=np.int64)
        self._add(x, labels)
        self._external = np.concatenate([self._external, ids])
        self._alive = np.concatenate([self._alive, np.ones(ids.shape[0], dtype=bool)])
        merged_ids = np.concatenate([self._sorted_ids, ids])
        merged_labels = np.concatenate([self._sorted_labels, labels])
        order = np.argsort(merged_ids, kind="stable")
        self._sorted_ids, self._sorted_labels = merged_ids[order], merged_labels[order]
        return self

    def remove(self, ids: Any) -> int:
        """Remove ``ids``; unknown ids are ignored. Returns how many were removed.

        Libraries that cannot delete (faiss HNSW, annoy) keep a tombstone that searches filter out;
        once ``COMPACT_DEAD_FRACTION`` of the items are dead the index is rebuilt from its stored vectors
        (an O(N) re-add, the cost of a fresh build)."""
        ids = as_ids(ids, None, "ids")
        labels = self._labels_of(ids)
        labels = np.unique(labels[labels >= 0])
        if labels.size == 0:
            return 0
        if self.native_remove:
            self._remove(labels)
        self._alive[labels] = False
        keep = ~np.isin(self._sorted_labels, labels)
        self._sorted_ids, self._sorted_labels = self._sorted_ids[keep], self._sorted_labels[keep]
        if not self.native_remove and self.num_tombstones > COMPACT_DEAD_FRACTION * self._alive.shape[0]:
            self.compact()
        return int(labels.size)

    def compact(self) -> None:
        """Rebuild from the alive items' stored vectors, dropping tombstones (exact for flat storage,
        approximate for compressed codes)."""
        labels = np.flatnonzero(self._alive)
        vectors = self._reconstruct(labels) if labels.size else np.empty((0, self.dim), np.float32)
        ids = self._external[labels]
        self._clear()
        self._reset_ids()
        if labels.size:
            self.add(vectors, ids)

    def set_params(self, knobs: str | dict[str, Any]) -> VectorIndex:
        """Set query-time knobs, e.g. ``"nprobe=32"``, ``"efSearch=128"``, ``"search_k=5000"``."""
        parsed = parse_knobs(knobs)
        unknown = set(parsed) - set(self.knob_names())
        if unknown:
            raise ValueError(f"unknown knob(s) {sorted(unknown)} for {self.backend} index {self.spec!r}; "
                             f"known: {self.knob_names()}")
        self._set_params(parsed)
        self.knobs.update(parsed)
        return self

    def search(self, q: Any, k: int, *, subset: Any = None) -> SearchResult:
        """Top-``k`` neighbours of each query ``q`` (Q, dim); with ``subset`` only those ids are eligible."""
        return self._search_prepared(self._prepare(q, "q"), check_positive_int("k", k), subset)

    def _search_prepared(self, q: np.ndarray, k: int, subset: Any) -> SearchResult:
        """``search`` on queries ``_prepare`` returned (preparing twice would renormalise cosine queries)."""
        allowed = None
        if subset is not None:
            labels = self._labels_of(np.unique(as_ids(subset, None, "subset")))
            labels = labels[labels >= 0]
            allowed = np.zeros(self._alive.shape[0], dtype=bool)
            allowed[labels] = True
            if labels.size <= SMALL_SUBSET and self.can_reconstruct:
                return self._finish(*self._brute_force(q, k, labels))
        elif self.num_tombstones and not self.native_remove:
            allowed = self._alive
        if len(self) == 0 or (allowed is not None and not allowed.any()):
            return self._finish(np.full((q.shape[0], k), -np.inf, np.float32), np.full((q.shape[0], k), -1))
        if allowed is None or self.native_filter:
            scores, labels = self._search(q, k, allowed)
        else:
            scores, labels = self._overfetch(q, k, allowed)
        return self._finish(scores, labels)

    def range_search(self, q: Any, threshold: float, *, subset: Any = None) -> RangeSearchResult:
        """Every item with similarity >= ``threshold`` (for ``euclidean``: -distance >= threshold),
        found by searching with a doubling ``k`` until the k-th score falls below the threshold;
        as exact as the backend's own search."""
        q = self._prepare(q, "q")
        threshold = float(threshold)
        count = max(len(self), 1)
        k = min(32, count)
        pending = np.arange(q.shape[0])
        found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        while pending.size:
            result = self._search_prepared(q[pending], k, subset)
            done = (result.scores[:, -1] < threshold) | (result.ids[:, -1] < 0) | (k >= count)
            for row in np.flatnonzero(done):
                keep = (result.scores[row] >= threshold) & (result.ids[row] >= 0)
                found[int(pending[row])] = (result.ids[row][keep], result.scores[row][keep])
            pending = pending[~done]
            k = min(2 * k, count)
        sizes = [found[i][0].shape[0] for i in range(q.shape[0])]
        lims = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        ids = np.concatenate([found[i][0] for i in range(q.shape[0])] or [np.empty(0, np.int64)])
        scores = np.concatenate([found[i][1] for i in range(q.shape[0])] or [np.empty(0, np.float32)])
        return RangeSearchResult(lims, scores.astype(np.float32), ids.astype(np.int64))

    # ---- helpers ------------------------------------------------------------------------------------
    def _finish(self, scores: np.ndarray, labels: np.ndarray) -> SearchResult:
        labels = np.asarray(labels, dtype=np.int64)
        missing = labels < 0
        ids = np.where(missing, -1, self._external[np.where(missing, 0, labels)] if self._external.size else -1)
        scores = np.where(missing, -np.inf, scores).astype(np.float32)
        return SearchResult(scores=scores, ids=ids.astype(np.int64))

    @property
    def engine_metric(self) -> str:
        """The exact engine's metric for prepared vectors: cosine inputs are normalised already, so "dot"."""
        return "dot" if self.metric == "cosine" else self.metric

    def _brute_force(self, q: np.ndarray, k: int, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k among the stored vectors of ``labels``, by the exact engine (ties to the lowest label)."""
        from deepmetric.index.topk import search_prepared

        labels = np.sort(labels)
        vectors = np.ascontiguousarray(self._reconstruct(labels), dtype=np.float32).reshape(-1, self.dim)
        result = search_prepared(q, vectors, k=k, metric=self.engine_metric, exclude_self=False)
        found = result.ids >= 0
        return result.scores, np.where(found, labels[np.where(found, result.ids, 0)] if labels.size else -1, -1)

    def _overfetch(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Search for more than k and drop disallowed labels, doubling until every query has k allowed
        results or the whole index was asked for. Costs about (total / allowed) times a plain search."""
        total = int(self._alive.shape[0])
        want = min(k, int(allowed.sum()))
        fetch = min(total, int(np.ceil(k * total / max(int(allowed.sum()), 1))) + k)
        out_scores = np.full((q.shape[0], k), -np.inf, np.float32)
        out_labels = np.full((q.shape[0], k), -1, np.int64)
        pending = np.arange(q.shape[0])
        while pending.size:
            scores, labels = self._search(q[pending], fetch, None)
            ok = (labels >= 0) & allowed[np.maximum(labels, 0)]
            counts = ok.sum(1)
            done = (counts >= want) | (fetch >= total)
            for row in np.flatnonzero(done):
                keep = np.flatnonzero(ok[row])[:k]
                out_scores[pending[row], :keep.size] = scores[row, keep]
                out_labels[pending[row], :keep.size] = labels[row, keep]
            pending = pending[~done]
            fetch = min(total, 2 * fetch)
        return out_scores, out_labels

    # ---- persistence --------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        """Write the index to the folder ``path`` atomically: ``index.json`` (format, version, spec,
        metric, knobs, SHA-256 and size of every file) + raw arrays + the library's own file."""
        from deepmetric.io import FOLDER_MARKER, atomic_directory

        with atomic_directory(path, kind="index", legacy=lambda folder: (folder / MANIFEST).is_file()) as folder:
            files = {"external_ids.bin": self._external, "alive.bin": self._alive.astype(np.uint8)}
            for name, array in files.items():
                np.ascontiguousarray(array).tofile(folder / name)
            extra = self._save(folder)
            manifest = {
                "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "backend": self.backend,
                "spec": self.spec, "dim": self.dim, "metric": self.metric, "knobs": self.knobs,
                "num_items": int(self._external.shape[0]), "backend_state": extra,
                "files": {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                          for p in sorted(folder.iterdir()) if p.is_file() and p.name != FOLDER_MARKER},
            }
            (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    def disk_bytes(self, path: str | os.PathLike) -> int:
        return sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())

    # ---- backend hooks ------------------------------------------------------------------------------
    can_reconstruct: ClassVar[bool] = True

    def knob_names(self) -> list[str]:
        return []

    def memory_bytes(self) -> int:
        """Bytes the index holds in memory (vectors, codes, graph), without Python overhead."""
        raise NotImplementedError

    def _train(self, x: np.ndarray) -> None:
        pass

    def _add(self, x: np.ndarray, labels: np.ndarray) -> None:
        raise NotImplementedError

    def _search(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _remove(self, labels: np.ndarray) -> None:
        raise NotImplementedError

    def _reconstruct(self, labels: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _clear(self) -> None:
        raise NotImplementedError

    def _set_params(self, knobs: dict[str, float]) -> None:
        pass

    def _save(self, folder: Path) -> dict[str, Any]:
        raise NotImplementedError

    def _load(self, folder: Path, state: dict[str, Any], mmap: bool) -> None:
        raise NotImplementedError


def read_manifest(path: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Read and check a saved index's manifest; every file's size (and SHA-256 when ``verify``) must match."""
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"no saved index at {folder}")
    if not folder.is_dir() or not (folder / MANIFEST).is_file():
        raise IndexFormatError(f"{folder} is not a deepmetric index (expected a folder with {MANIFEST})")
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise IndexFormatError(f"{folder / MANIFEST} is corrupt: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise IndexFormatError(f"{folder} is not a deepmetric index (format field {found!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexFormatError(f"{folder} has index format version {manifest.get('format_version')!r}; "
                               f"this deepmetric reads version {FORMAT_VERSION}")
    for name, info in manifest["files"].items():
        file = folder / name
        if not file.is_file():
            raise IndexFormatError(f"{folder} is incomplete: {name} is missing")
        size = file.stat().st_size
        if size != info["bytes"]:
            raise IndexFormatError(f"{file} is truncated or altered: {size} bytes, expected {info['bytes']}")
        if verify and file_sha256(file) != info["sha256"]:
            raise IndexFormatError(f"{file} is corrupt: SHA-256 does not match the manifest")
    return manifest


def restore_ids(index: VectorIndex, folder: Path, manifest: dict[str, Any]) -> None:
    count = int(manifest["num_items"])
    external = np.fromfile(folder / "external_ids.bin", dtype=np.int64)
    alive = np.fromfile(folder / "alive.bin", dtype=np.uint8).astype(bool)
    if external.shape[0] != count or alive.shape[0] != count:
        raise IndexFormatError(f"{folder}: id arrays hold {external.shape[0]}/{alive.shape[0]} items, expected {count}")
    index._external, index._alive = external, alive
    labels = np.flatnonzero(alive)
    order = np.argsort(external[labels], kind="stable")
    index._sorted_ids, index._sorted_labels = external[labels][order], labels[order]
