"""Vector search behind one contract: exact (``Flat``: the one exact top-k engine, ``deepmetric.index.topk``),
faiss, hnswlib and annoy; ``build_index`` / ``load_index``, knob tuning and the ANN benchmark. Every backend takes
the metrics cosine, dot and euclidean. Backends import their library only when built."""

from deepmetric.index.base import IndexFormatError, RangeSearchResult, VectorIndex
from deepmetric.index.factory import build_index, choose_spec, load_index

__all__ = ["IndexFormatError", "RangeSearchResult", "VectorIndex", "build_index", "choose_spec", "load_index"]
