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
