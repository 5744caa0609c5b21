"""Issue 12: identity ids must match their whole pattern; gallery files are private; a removed identity's
vector leaves no bytes in the database or its WAL."""

from __future__ import annotations

import stat

import numpy as np
import pytest

from deepmetric.gallery import Gallery, GalleryError


def test_identity_id_with_a_trailing_newline_is_refused(gallery):
    gallery.enroll("nl", embeddings=np.eye(gallery.embedding_dim)[:1])
    for bad in ["nl\n", "nl\r\n", "\nnl", "n l", "nl\x00"]:
        with pytest.raises(GalleryError, match="identity_id"):
            gallery.enroll(bad, embeddings=np.eye(gallery.embedding_dim)[:1])
    assert [record.identity_id for record in gallery.list()] == ["nl"]


def test_gallery_database_and_its_wal_are_owner_only(gallery):
    gallery.enroll("a", embeddings=np.eye(gallery.embedding_dim)[:1])
    files = [p for p in gallery.folder.iterdir() if p.name.startswith("gallery.sqlite3")]
    assert {p.name for p in files} >= {"gallery.sqlite3", "gallery.sqlite3-wal"}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, f"{path.name} is readable by others"


def _file_bytes(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name.startswith("gallery.sqlite3")}


def test_removed_identity_leaves_no_vector_bytes_in_database_or_wal(tmp_path):
    gallery = Gallery.create(tmp_path / "g", embedding_dim=32, model_stamp="test-model")
    rng = np.random.default_rng(0)
    secret, other = rng.normal(size=(2, 32)).astype(np.float32)
    gallery.enroll("secret", embeddings=secret[None])
    gallery.enroll("other", embeddings=other[None])
    stored = next(t["vector"] for t in gallery.store.templates() if t["identity_id"] == "secret")
    needle = stored.astype("<f4").tobytes()
    assert any(needle in data for data in _file_bytes(gallery.folder).values())  # the search can find it
    gallery.remove("secret")
    for name, data in _file_bytes(gallery.folder).items():
        assert needle not in data, f"the removed vector is still in {name}"
    assert gallery.identify(other, threshold=-1).identity_id == "other"
    gallery.close()


def _tree_bytes(folder):
    """Every file under ``folder``, recursively: the database, its WAL and the index cache."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _holds(data: bytes, vector: np.ndarray) -> bool:
    """Whether ``data`` holds ``vector`` as float32 at any byte offset, up to the last bits: an index stores its
    own float32 normalisation of a vector, which may differ from the store's in the last place."""
    for start in range(4):
        usable = (len(data) - start) // 4 * 4
        if usable < 4 * len(vector):
            continue
        floats = np.frombuffer(data, dtype="<f4", offset=start, count=usable // 4)
        windows = np.lib.stride_tricks.sliding_window_view(floats, len(vector))
        with np.errstate(invalid="ignore", over="ignore"):
            if (np.abs(windows - vector) <= 1e-6).all(axis=1).any():
                return True
    return False


@pytest.mark.parametrize("exact_limit", [20_000, 500], ids=["exact-cache", "graph-cache"])
def test_removed_identity_leaves_no_vector_bytes_in_the_saved_index_cache(tmp_path, exact_limit):
    from deepmetric.gallery.store import TemplateInput

    if exact_limit < 1200:
        pytest.importorskip("faiss")
    folder = tmp_path / "g"
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(1200, 32)).astype(np.float32)
    gallery = Gallery.create(folder, embedding_dim=32, model_stamp="test-model", exact_limit=exact_limit)
    gallery.store.add_identities([(f"p{i:04d}", None, None, [TemplateInput(vector=v)]) for i, v in enumerate(vectors)])
    gallery.index.sync()  # >= 1000 identities: the cache folder is saved
    gallery.close()
    gallery = Gallery.open(folder, exact_limit=exact_limit)
    assert gallery.identify(vectors[7], threshold=-1).identity_id == "p0007"
    assert gallery.index.rebuilds == 0  # served from the saved cache
    num = gallery.store.num_of("p0007")
    record = gallery.store.identities_by_num([num])[num]
    needles = [record["centroid"], *(vector for _, vector in record["templates"])]
    in_cache = [name for name, data in _tree_bytes(folder).items()
                if name.startswith("index") and any(_holds(data, needle) for needle in needles)]
    assert in_cache, "the search must be able to find the vector in the saved cache"
    gallery.remove("p0007")
    for name, data in _tree_bytes(folder).items():  # right after the removal, before any close
        assert not any(_holds(data, needle) for needle in needles), f"the removed vector is still in {name}"
    gallery.close()
    for name, data in _tree_bytes(folder).items():
        assert not any(_holds(data, needle) for needle in needles), f"the removed vector is still in {name}"
    assert (folder / "index" / "cache.json").is_file()  # a cache was written again, without it
    with Gallery.open(folder, exact_limit=exact_limit) as reopened:
        reopened.index.sync()
        assert "p0007" not in reopened and len(reopened.index) == 1199
        assert reopened.index.rebuilds == 0  # the rewritten cache is valid and used
        assert reopened.identify(vectors[8], threshold=-1).identity_id == "p0008"
