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


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """160 embeddings of 8 classes saved as emb.npy with labels.npy, and labels.csv whose is_query / is_gallery
    columns make some rows queries only, some gallery only and the rest both. Returns (folder, embeddings,
    labels, is_query, is_gallery)."""
    folder = tmp_path_factory.mktemp("emb")
    rng = np.random.default_rng(0)
    labels = np.arange(160) % 8
    x = (rng.normal(size=(8, 6))[labels] + 0.8 * rng.normal(size=(160, 6))).astype(np.float32)
    is_query, is_gallery = np.arange(160) % 5 != 0, np.arange(160) % 5 != 1
    np.save(folder / "emb.npy", x)
    np.save(folder / "labels.npy", labels)
    rows = ["label,is_query,is_gallery"] + [f"{label},{int(q)},{int(g)}"
                                            for label, q, g in zip(labels, is_query, is_gallery)]
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder, x, labels, is_query, is_gallery
