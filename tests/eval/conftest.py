import numpy as np
import pytest

from deepmetric.types import SearchResult


class LoopIndex:
    """An exact cosine index written as a plain numpy product, holding ``gallery`` under ids 0..G-1: a stand-in
    for an ANN index whose results are known."""

    def __init__(self, gallery):
        self.gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)

    def search(self, queries, k):
        scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ self.gallery.T
        ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return SearchResult(np.take_along_axis(scores, ids, 1).astype(np.float32), ids.astype(np.int64))


@pytest.fixture
def loop_index():
    return LoopIndex
