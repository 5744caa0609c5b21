"""Vector search behind one contract: exact (torch), faiss, hnswlib and annoy; ``build_index`` /
``load_index``, knob tuning and the ANN benchmark. Backends import their library only when built."""

from deepmetric.index.base import IndexFormatError, RangeSearchResult, VectorIndex
from deepmetric.index.factory import build_index, choose_spec, load_index

__all__ = ["IndexFormatError", "RangeSearchResult", "VectorIndex", "build_index", "choose_spec", "load_index"]
