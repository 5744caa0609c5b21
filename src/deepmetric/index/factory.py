"""``build_index(spec, dim, metric, backend)``, ``"auto"`` spec selection and ``load_index(path)``."""

from __future__ import annotations

import math
import os
from typing import Any

from deepmetric.index.base import VectorIndex, read_manifest, restore_ids
from deepmetric.io import recover_directory
from deepmetric.validation import check_positive_int

BACKENDS = ("exact", "faiss", "hnswlib", "annoy")
# Below this many vectors exact search answers in milliseconds and is never wrong.
AUTO_EXACT_MAX = 100_000
AUTO_HNSW_LINKS = 32


def default_memory_budget() -> int:
    """Half of the machine's physical memory, in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def hnsw_bytes_per_vector(dim: int, links: int = AUTO_HNSW_LINKS) -> int:
    """float32 vector + level-0 links (2M int32 and a count) + label + ~1/M of a vector for upper levels."""
    return 4 * dim + 4 * (2 * links + 1) + 8 + math.ceil(4 * (links + 1) / links)


def choose_spec(num_vectors: int, dim: int, memory_budget: int | None = None) -> tuple[str, str]:
    """Pick ``(spec, backend)``: exact when small, HNSW when its graph fits ``memory_budget`` bytes,
    else IVF-PQ with the largest code that fits (``nlist`` ~ 4 sqrt(N), a power of two)."""
    num_vectors = check_positive_int("num_vectors", num_vectors)
    budget = default_memory_budget() if memory_budget is None else int(memory_budget)
    if budget <= 0:
        raise ValueError(f"memory_budget must be positive bytes, got {memory_budget!r}")
    if num_vectors <= AUTO_EXACT_MAX and num_vectors * dim * 4 <= budget:
        return "Flat", "exact"
    if num_vectors * hnsw_bytes_per_vector(dim) <= budget:
        return f"HNSW{AUTO_HNSW_LINKS},efConstruction=80", "faiss"
    nlist = int(min(65536, max(64, 2 ** round(math.log2(4 * math.sqrt(num_vectors))))))
    for code_bytes in (64, 32, 16, 8, 4):
        if dim % code_bytes or code_bytes > dim // 2:
            continue
        # PQ codes + the int64 id stored beside each code in the inverted lists + the centroids.
        if num_vectors * (code_bytes + 8) + nlist * dim * 4 <= budget:
            return f"IVF{nlist},PQ{code_bytes}", "faiss"
    raise ValueError(f"memory_budget={budget} bytes is too small for {num_vectors} vectors of dim {dim} "
                     f"(IVF-PQ needs at least {num_vectors * 12 + nlist * dim * 4} bytes)")


def _backend_for(spec: str) -> str:
    """Which library a spec names when no backend is given: "Flat" (and "exact") is our exact engine, so exact
    search needs no optional library; faiss's own flat index stays reachable with ``backend="faiss"``."""
    head = spec.split(",")[0].strip()
    if head.startswith("Annoy"):
        return "annoy"
    if head in ("Flat", "exact"):
        return "exact"
    return "faiss"


def _make(spec: str, dim: int, metric: str, backend: str) -> VectorIndex:
    if backend == "exact":
        from deepmetric.index.exact import ExactIndex, precision_from_spec

        return ExactIndex(dim=dim, metric=metric, precision=precision_from_spec(spec))
    if backend == "faiss":
        from deepmetric.index.faiss_backend import FaissIndex

        return FaissIndex(spec=spec, dim=dim, metric=metric)
    if backend == "hnswlib":
        from deepmetric.index.hnsw_backend import HnswlibIndex

        return HnswlibIndex(spec=spec, dim=dim, metric=metric)
    from deepmetric.index.annoy_backend import AnnoyIndex

    return AnnoyIndex(spec=spec, dim=dim, metric=metric)


def build_index(spec: str, dim: int, metric: str = "cosine", backend: str | None = None, *,
                num_vectors: int | None = None, memory_budget: int | None = None, shards: int = 2,
                address: str | None = None) -> VectorIndex:
    """An empty index. ``spec``: a faiss factory string (``"IVF4096,PQ32"``), ``"HNSW32"`` (faiss, or
    hnswlib with ``backend="hnswlib"``), ``"Annoy50"``, ``"Flat"`` for exact search (our engine; ``"Flat,bf16"``
    / ``"Flat,float32"`` fix its candidate pass; faiss's flat index with ``backend="faiss"``), or ``"auto"``
    (needs ``num_vectors``; see ``choose_spec``). ``metric``: "cosine", "dot" or "euclidean" ("ip", "l2" are
    aliases); every backend takes all three. ``backend="ray"``: ``shards`` Ray actors on the cluster at
    ``address``, each holding a ``spec`` index (``deepmetric.index.ray_backend``).

    Example:
        >>> import numpy as np
        >>> index = build_index("Flat", 8)  # "HNSW32", backend="hnswlib" alike, with the [index] extra
        >>> _ = index.add(np.eye(8, dtype=np.float32), ids=np.arange(100, 108))
        >>> index.search(np.eye(8, dtype=np.float32)[:1], k=1).ids.tolist()
        [[100]]
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"spec must be a non-empty string like 'HNSW32' or 'auto', got {spec!r}")
    if backend is not None and backend not in (*BACKENDS, "ray"):
        raise ValueError(f"backend must be one of {(*BACKENDS, 'ray')} or None, got {backend!r}")
    spec = spec.strip()
    if backend == "ray":
        from deepmetric.index.ray_backend import RayShardedIndex

        return RayShardedIndex(spec=spec, dim=dim, metric=metric, shards=shards, address=address)
    if spec == "auto":
        if num_vectors is None:
            raise ValueError("spec='auto' needs num_vectors= (how many vectors the index will hold)")
        spec, chosen = choose_spec(num_vectors, dim, memory_budget)
        # The caller may prefer hnswlib for an HNSW choice; any other backend override would not fit.
        backend = "hnswlib" if backend == "hnswlib" and spec.startswith("HNSW") else chosen
    return _make(spec, dim, metric, backend or _backend_for(spec))


def load_index(path: str | os.PathLike, *, mmap: bool = False, verify: bool = True,
               address: str | None = None) -> VectorIndex:
    """Open an index written by ``VectorIndex.save``. ``mmap=True`` maps flat and IVF data from disk
    (faiss ``IO_FLAG_MMAP``; annoy always maps) instead of reading it; ``verify`` checks every SHA-256.
    A Ray index starts its shard actors on the cluster at ``address``."""
    folder = recover_directory(path)
    manifest: dict[str, Any] = read_manifest(folder, verify=verify)
    if manifest["backend"] == "ray":
        from deepmetric.index.ray_backend import load_ray_index

        return load_ray_index(folder, manifest, address=address, verify=verify)
    index = _make(manifest["spec"], int(manifest["dim"]), manifest["metric"], manifest["backend"])
    index.knobs = dict(manifest.get("knobs") or {})
    index._load(folder, manifest["backend_state"], mmap)
    restore_ids(index, folder, manifest)
    return index
