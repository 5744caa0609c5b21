"""faiss behind the VectorIndex contract: any ``index_factory`` string ("Flat", "IVF4096,Flat", "IVF4096,PQ32",
"OPQ32,IVF4096,PQ32", "HNSW32", "IVF4096,PQ32,Refine(Flat)", ...), plus build options as trailing
``name=value`` tokens (``"HNSW32,efConstruction=80"``).

IVF indexes store our labels and delete natively; the others (Flat, HNSW, PQ, Refine) keep tombstones that
an ``IDSelectorBitmap`` filters inside the search (no over-fetch), and are compacted when they pile up.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from deepmetric.index.base import VectorIndex, format_knobs, negative_distance

_BUILD_OPTIONS = ("efConstruction",)


def split_spec(spec: str) -> tuple[str, dict[str, float]]:
    """``"HNSW32,efConstruction=80"`` -> (``"HNSW32"``, ``{"efConstruction": 80}``)."""
    from deepmetric.index.base import parse_knobs

    tokens = [t.strip() for t in spec.split(",") if t.strip()]
    structure = [t for t in tokens if "=" not in t]
    options = parse_knobs(",".join(t for t in tokens if "=" in t), "spec")
    unknown = set(options) - set(_BUILD_OPTIONS)
    if unknown:
        raise ValueError(f"spec {spec!r}: unknown build option(s) {sorted(unknown)}; known: {list(_BUILD_OPTIONS)} "
                         "(query-time knobs such as nprobe go to set_params)")
    return ",".join(structure), options


class FaissIndex(VectorIndex):
    """A faiss index built from a factory string; see the module docstring for the spec syntax."""

    backend = "faiss"
    native_filter = True

    def __init__(self, *, spec: str, dim: int, metric: str = "cosine") -> None:
        super().__init__(spec=spec, dim=dim, metric=metric)
        self.factory, self.build_options = split_spec(spec)
        self._clear()

    # ---- structure ----------------------------------------------------------------------------------
    def _clear(self) -> None:
        import faiss

        if getattr(self, "index", None) is not None:
            self.index.reset()  # drops the vectors, keeps what training learnt
            return
        faiss_metric = faiss.METRIC_L2 if self.metric == "euclidean" else faiss.METRIC_INNER_PRODUCT
        try:
            index = faiss.index_factory(self.dim, self.factory, faiss_metric)
        except RuntimeError as error:
            raise ValueError(f"faiss cannot build spec {self.factory!r} for dim={self.dim}: "
                             f"{str(error).strip().splitlines()[-1]}") from None
        self._adopt(index)
        for kind in ("IndexPQ", "IndexIVFPQ"):
            for part in self._parts(kind):
                # Polysemous code ordering only serves Hamming-threshold search, which we do not use, and
                # its annealing dominates training time (minutes even for small sets).
                part.do_polysemous_training = False
        for hnsw in self._graph_hnsw():
            if "efConstruction" in self.build_options:
                hnsw.hnsw.efConstruction = int(self.build_options["efConstruction"])
        if self.knobs:
            self._set_params(self.knobs)

    def _adopt(self, index: Any) -> None:
        import faiss

        self._owner = index  # the proxy that owns the C++ object; the downcast views below do not
        self.index = faiss.downcast_index(index)
        self._tree = self._walk(self.index)
        top = self.index
        while isinstance(top, faiss.IndexPreTransform):
            top = faiss.downcast_index(top.index)
        self.native_remove = isinstance(top, faiss.IndexIVF)

    def _walk(self, index: Any) -> list[Any]:
        import faiss

        index = faiss.downcast_index(index)
        found = [index]
        for child in ("index", "base_index", "refine_index", "quantizer"):
            inner = getattr(index, child, None)
            if inner is not None and isinstance(inner, faiss.Index):
                found += self._walk(inner)
        return found

    def _parts(self, kind: str) -> list[Any]:
        import faiss

        cls = getattr(faiss, kind)
        return [part for part in self._tree if isinstance(part, cls)]

    def _ivf(self) -> list[Any]:
        return self._parts("IndexIVF")

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def memory_bytes(self) -> int:
        import faiss

        return int(faiss.serialize_index(self.index).nbytes)

    def _quantizer_hnsw(self) -> list[Any]:
        return [hnsw for ivf in self._ivf() for hnsw in self._parts_of(ivf.quantizer, "IndexHNSW")]

    def _graph_hnsw(self) -> list[Any]:
        in_quantizer = {int(hnsw.this) for hnsw in self._quantizer_hnsw()}
        return [hnsw for hnsw in self._parts("IndexHNSW") if int(hnsw.this) not in in_quantizer]

    def knob_names(self) -> list[str]:
        names = ["nprobe", "max_codes"] if self._ivf() else []
        if self._quantizer_hnsw():
            names.append("quantizer_efSearch")
        if self._graph_hnsw():
            names.append("efSearch")
        if self._parts("IndexRefine"):
            names.append("k_factor")
        return names

    def _parts_of(self, index: Any, kind: str) -> list[Any]:
        import faiss

        cls = getattr(faiss, kind)
        return [part for part in self._walk(index) if isinstance(part, cls)]

    def _set_params(self, knobs: dict[str, float]) -> None:
        for name, value in knobs.items():
            if name in ("nprobe", "max_codes"):
                for ivf in self._ivf():
                    setattr(ivf, name, int(value))
            elif name in ("quantizer_efSearch", "efSearch"):
                for hnsw in self._quantizer_hnsw() if name == "quantizer_efSearch" else self._graph_hnsw():
                    hnsw.hnsw.efSearch = int(value)
            elif name == "k_factor":
                for refine in self._parts("IndexRefine"):
                    refine.k_factor = float(value)

    # ---- verbs --------------------------------------------------------------------------------------
    def _train(self, x: np.ndarray) -> None:
        if not self.index.is_trained:
            self.index.train(x)

    def _add(self, x: np.ndarray, labels: np.ndarray) -> None:
        if self.native_remove:
            self.index.add_with_ids(x, labels)
        else:
            if self.index.ntotal != labels[0]:
                raise RuntimeError(f"faiss index holds {self.index.ntotal} items but the next label is {labels[0]}")
            self.index.add(x)

    def _remove(self, labels: np.ndarray) -> None:
        self.index.remove_ids(np.ascontiguousarray(labels, dtype=np.int64))

    def _reconstruct(self, labels: np.ndarray) -> np.ndarray:
        import faiss

        for ivf in self._ivf():
            if ivf.direct_map.type == faiss.DirectMap.NoMap:
                # A hashtable (unlike an array) direct map survives remove_ids.
                ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        return np.vstack([self.index.reconstruct(int(label)) for label in labels]).astype(np.float32)

    def _search_parameters(self, index: Any, selector: Any) -> Any:
        """faiss reads knobs from SearchParameters when given one, so copy the current knobs into it."""
        import faiss

        index = faiss.downcast_index(index)
        if isinstance(index, faiss.IndexPreTransform):
            params = faiss.SearchParametersPreTransform()
            params.index_params = self._search_parameters(index.index, selector)
        elif isinstance(index, faiss.IndexRefine):
            params = faiss.IndexRefineSearchParameters()
            params.k_factor = index.k_factor
            params.base_index_params = self._search_parameters(index.base_index, selector)
        elif isinstance(index, faiss.IndexIVF):
            params = faiss.SearchParametersIVF()
            params.nprobe, params.max_codes, params.sel = index.nprobe, index.max_codes, selector
        elif isinstance(index, faiss.IndexHNSW):
            params = faiss.SearchParametersHNSW()
            params.efSearch, params.sel = index.hnsw.efSearch, selector
        else:
            params = faiss.SearchParameters()
            params.sel = selector
        return params

    def _search(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        if allowed is None:
            distances, labels = self.index.search(q, k)
        else:
            bits = np.packbits(allowed, bitorder="little")
            selector = faiss.IDSelectorBitmap(allowed.shape[0], faiss.swig_ptr(bits))
            params = self._search_parameters(self.index, selector)
            distances, labels = self.index.search(q, k, params=params)
            del bits
        scores = negative_distance(distances) if self.metric == "euclidean" else distances
        return scores, labels

    # ---- persistence --------------------------------------------------------------------------------
    def _save(self, folder: Path) -> dict[str, Any]:
        import faiss

        faiss.write_index(self.index, str(folder / "faiss.index"))
        return {"knobs": format_knobs(self.knobs)}

    def _load(self, folder: Path, state: dict[str, Any], mmap: bool) -> None:
        import faiss

        path = str(folder / "faiss.index")
        if mmap:
            try:
                index = faiss.read_index(path, faiss.IO_FLAG_MMAP)
            except RuntimeError as error:
                warnings.warn(f"faiss cannot memory-map {self.factory!r} ({error}); reading it into memory",
                              stacklevel=3)
                index = faiss.read_index(path)
        else:
            index = faiss.read_index(path)
        self._adopt(index)
        if self.knobs:
            self._set_params(self.knobs)
