from __future__ import annotations

import threading

import numpy as np
import pytest

from deepmetric.gallery import (
    DuplicateIdentityError,
    Gallery,
    GalleryError,
    GalleryModelMismatch,
    TemplateInput,
    UnknownIdentityError,
)
from gallery_helpers import PixelProjectionModel, png_bytes, random_unit


def _enroll_random(gallery: Gallery, count: int, templates: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = random_unit(rng, count, gallery.embedding_dim)
    enrolled = {}
    for i, centre in enumerate(centres):
        vectors = centre + 0.1 * rng.normal(size=(templates, gallery.embedding_dim))
        gallery.enroll(f"id{i:03d}", embeddings=vectors, name=f"Person {i}")
        enrolled[f"id{i:03d}"] = vectors
    return enrolled


def _brute_force_scores(enrolled: dict[str, np.ndarray], query: np.ndarray) -> dict[str, float]:
    """Independent reference: cosine to the normalised mean of unit-normalised templates."""
    query = query / np.linalg.norm(query)
    scores = {}
    for identity_id, vectors in enrolled.items():
        units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        mean = units.mean(axis=0)
        scores[identity_id] = float(mean @ query / np.linalg.norm(mean))
    return scores


def test_identify_matches_brute_force_ranking_scores_and_margin(gallery):
    enrolled = _enroll_random(gallery, 40)
    rng = np.random.default_rng(1)
    for query in rng.normal(size=(10, gallery.embedding_dim)):
        reference = sorted(_brute_force_scores(enrolled, query).items(), key=lambda kv: -kv[1])
        decision = gallery.identify(query, k=5, threshold=-1.0)
        assert [m.identity_id for m in decision.matches] == [r[0] for r in reference[:5]]
        np.testing.assert_allclose([m.score for m in decision.matches], [r[1] for r in reference[:5]], atol=1e-5)
        assert decision.margin == pytest.approx(reference[0][1] - reference[1][1], abs=1e-5)
        assert decision.accepted and decision.identity_id == reference[0][0]


def test_identify_unknown_person_and_threshold_sources(gallery):
    enrolled = _enroll_random(gallery, 5)
    probe = enrolled["id002"][0]
    assert gallery.identify(probe, k=1).identity_id == "id002"  # threshold 0.6 from the stored model config
    decision = gallery.identify(-probe, k=1)
    assert not decision.accepted and decision.identity_id is None and decision.score < 0.6
    assert gallery.identify(probe, k=1, threshold=0.9999).identity_id is None
    assert gallery.resolve_threshold() == 0.6
    with pytest.raises(GalleryError, match="threshold"):
        gallery.identify(probe, threshold=1.5)


def test_verify_reports_score_templates_and_best_other(gallery):
    enrolled = _enroll_random(gallery, 6)
    probe = enrolled["id004"][0]
    reference = _brute_force_scores(enrolled, probe)
    decision = gallery.verify(probe, "id004")
    assert decision.accepted and decision.identity_id == "id004"
    assert decision.score == pytest.approx(reference["id004"], abs=1e-5)
    other_id, other_score = max(((k, v) for k, v in reference.items() if k != "id004"), key=lambda kv: kv[1])
    assert decision.best_other.identity_id == other_id
    assert decision.margin == pytest.approx(reference["id004"] - other_score, abs=1e-5)
    template_scores = [t.score for t in decision.matches[0].templates]
    units = enrolled["id004"] / np.linalg.norm(enrolled["id004"], axis=1, keepdims=True)
    np.testing.assert_allclose(sorted(template_scores, reverse=True),
                               sorted(units @ (probe / np.linalg.norm(probe)), reverse=True), atol=1e-5)
    assert not gallery.verify(probe, "id001").accepted
    with pytest.raises(UnknownIdentityError, match="nobody"):
        gallery.verify(probe, "nobody")


def test_bad_input_is_refused_and_changes_nothing(gallery):
    _enroll_random(gallery, 2)
    generation, size = gallery.store.generation, len(gallery)
    dim = gallery.embedding_dim
    bad = [
        (DuplicateIdentityError, dict(identity_id="id000", embeddings=np.ones((1, dim)))),
        (GalleryError, dict(identity_id="new", embeddings=np.ones((1, dim + 1)))),
        (GalleryError, dict(identity_id="new", embeddings=np.full((1, dim), np.nan))),
        (GalleryError, dict(identity_id="new", embeddings=np.zeros((1, dim)))),
        (GalleryError, dict(identity_id="bad id!", embeddings=np.ones((1, dim)))),
        (GalleryError, dict(identity_id="new", images=[png_bytes(0)])),  # no model: embeddings only
        (GalleryError, dict(identity_id="new", embeddings=np.ones((1, dim)), metadata={"x": float("nan")})),
    ]
    for error, kwargs in bad:
        with pytest.raises(error):
            gallery.enroll(**kwargs)
    with pytest.raises(UnknownIdentityError):
        gallery.add("ghost", embeddings=np.ones((1, dim)))
    with pytest.raises(GalleryError):
        gallery.identify(np.ones(dim + 1))
    assert (gallery.store.generation, len(gallery)) == (generation, size)


def test_decision_arguments_are_checked_with_the_shared_policy(gallery):
    # A wrong value is a GalleryError (the service answers 422, its health check reads "no threshold"); a
    # wrong type is a TypeError, a programming mistake the service's request models already rule out.
    _enroll_random(gallery, 3)
    probe = np.ones(gallery.embedding_dim)
    assert gallery.identify(probe, k=np.int64(2), threshold=np.float32(-1.0)).threshold == -1.0
    assert gallery.verify(probe, "id000", threshold=1).threshold == 1.0
    for k, error, message in [(0, GalleryError, "k must be a positive integer, got 0"),
                              (True, TypeError, "k must be a positive integer, got bool: True"),
                              (2.0, TypeError, "k must be a positive integer, got float: 2.0")]:
        with pytest.raises(error, match=message):
            gallery.identify(probe, k=k, threshold=0.5)
    for threshold, error, message in [(1.5, GalleryError, r"threshold must be a finite number in \[-1, 1\], got 1.5"),
                                      (float("nan"), GalleryError, "got nan"),
                                      ("0.5", TypeError, "threshold must be a finite number in .*got str: '0.5'"),
                                      (True, TypeError, "got bool: True")]:
        with pytest.raises(error, match=message):
            gallery.verify(probe, "id000", threshold=threshold)
    with pytest.raises(GalleryError, match=r"probe embedding must be a matrix of shape \(N, 16\), got shape \(1, 17\)"):
        gallery.identify(np.ones(17), threshold=0.5)
    with pytest.raises(GalleryError, match="embeddings must hold at least one row"):
        gallery.enroll("new", embeddings=np.ones((0, gallery.embedding_dim)))
    with pytest.raises(GalleryError, match="embeddings must hold finite values, got 1 NaN"):
        gallery.enroll("new", embeddings=[[np.inf] + [1.0] * (gallery.embedding_dim - 1)])


def test_listing_bounds_are_checked(gallery):
    _enroll_random(gallery, 3)
    assert [r.identity_id for r in gallery.list(offset=np.int64(1), limit=1)] == ["id001"]
    assert len(gallery.list(limit=0)) == 0
    with pytest.raises(GalleryError, match="offset must be a non-negative integer, got -1"):
        gallery.list(offset=-1)
    with pytest.raises(GalleryError, match=r"limit must be an integer >= 0 or None, got -2"):
        gallery.list(limit=-2)
    with pytest.raises(TypeError, match=r"limit must be an integer >= 0 or None, got float: 1\.5"):
        gallery.list(limit=1.5)


@pytest.mark.parametrize("embedding_dim, error, message", [
    (0, GalleryError, "embedding_dim must be a positive integer, got 0"),
    (True, TypeError, "embedding_dim must be a positive integer, got bool: True"),
    (None, TypeError, "embedding_dim must be a positive integer, got NoneType: None"),
])
def test_creating_a_gallery_checks_embedding_dim(tmp_path, embedding_dim, error, message):
    with pytest.raises(error, match=message):
        Gallery.create(tmp_path / "gallery", embedding_dim=embedding_dim, model_stamp="test-model")


def test_creating_a_gallery_accepts_a_numpy_embedding_dim(tmp_path):
    gallery = Gallery.create(tmp_path / "gallery", embedding_dim=np.int64(4), model_stamp="test-model")
    try:
        assert gallery.embedding_dim == 4 and type(gallery.embedding_dim) is int
    finally:
        gallery.close()


def test_templates_rename_remove_and_list(gallery):
    dim = gallery.embedding_dim
    gallery.enroll("alice", embeddings=np.eye(dim)[:1], metadata={"team": "a"})
    [added] = gallery.add("alice", embeddings=np.eye(dim)[1:2])
    record = gallery.get("alice")
    assert record.num_templates == 2 and record.metadata == {"team": "a"}
    np.testing.assert_allclose(gallery.verify(np.eye(dim)[0] + np.eye(dim)[1], "alice", threshold=0).score, 1.0,
                               atol=1e-6)
    assert gallery.rename("alice", "Alice A.").name == "Alice A."
    assert gallery.remove_template(added).num_templates == 1
    with pytest.raises(GalleryError, match="last one"):
        gallery.remove_template(record.templates[0].template_id)
    gallery.enroll("bob", embeddings=np.eye(dim)[2:3])
    assert [r.identity_id for r in gallery.list()] == ["alice", "bob"]
    assert [r.identity_id for r in gallery.list(offset=1, limit=5)] == ["bob"]
    gallery.remove("alice")
    assert "alice" not in gallery and gallery.identify(np.eye(dim)[0], threshold=-1).identity_id == "bob"
    assert gallery.store.integrity_problems() == []


def test_export_import_round_trip(gallery, tmp_path):
    enrolled = _enroll_random(gallery, 8)
    gallery.export(tmp_path / "export")
    other = Gallery.create(tmp_path / "other", embedding_dim=gallery.embedding_dim, model_stamp="test-model")
    assert other.import_from(tmp_path / "export") == 8
    query = enrolled["id005"][1]
    assert other.identify(query, threshold=0).to_dict() == gallery.identify(query, threshold=0).to_dict()
    with pytest.raises(DuplicateIdentityError):
        other.import_from(tmp_path / "export")
    assert len(other) == 8  # the refused import added nothing
    foreign = Gallery.create(tmp_path / "foreign", embedding_dim=gallery.embedding_dim, model_stamp="another")
    with pytest.raises(GalleryModelMismatch):
        foreign.import_from(tmp_path / "export")
    other.close(), foreign.close()


def test_model_stamp_refuses_other_model_and_reembed_restamps(tmp_path):
    model, other_model = PixelProjectionModel(seed=0), PixelProjectionModel(seed=1)
    images = {name: png_bytes(seed) for seed, name in enumerate(["ann", "ben", "cat"])}
    with Gallery.create(tmp_path / "g", model=model) as gallery:
        for name, image in images.items():
            gallery.enroll(name, images=[image])
        assert gallery.identify(images["ben"], k=1).identity_id == "ben"
    with pytest.raises(GalleryModelMismatch, match="reembed"):
        Gallery.open(tmp_path / "g", model=other_model)
    with Gallery.open(tmp_path / "g") as gallery:
        summary = gallery.reembed(other_model)
        assert summary == {"reembedded": 3, "dropped": 0, "identities": 3}
    with Gallery.open(tmp_path / "g", model=other_model) as gallery:
        decision = gallery.identify(images["cat"], k=3)
        assert decision.identity_id == "cat" and decision.score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(GalleryModelMismatch):
        Gallery.open(tmp_path / "g", model=model)


def test_reembed_refuses_templates_without_images(tmp_path):
    model = PixelProjectionModel(seed=0)
    with Gallery.create(tmp_path / "g", model=model) as gallery:
        gallery.enroll("vec", embeddings=np.ones((1, model.embedding_dim)))
        gallery.enroll("img", images=[png_bytes(3)])
        with pytest.raises(GalleryError, match="no stored image"):
            gallery.reembed(PixelProjectionModel(seed=2))
        assert gallery.store.model_stamp != "x" and len(gallery) == 2
        assert gallery.reembed(PixelProjectionModel(seed=2), drop_without_images=True)["dropped"] == 1
        assert [r.identity_id for r in gallery.list()] == ["img"]


def test_index_cache_rebuilt_when_corrupt_and_caught_up_when_stale(tmp_path):
    gallery = Gallery.create(tmp_path / "g", embedding_dim=8, model_stamp="m", threshold=0.0)
    rng = np.random.default_rng(0)
    vectors = random_unit(rng, 1200, 8).astype(np.float32)
    gallery.store.add_identities([(f"id{i}", None, None, [TemplateInput(vector=v)]) for i, v in enumerate(vectors)])
    gallery.index.sync()
    gallery.close()
    # A second writer (another process in real life) changes the store while this cache sits on disk.
    writer = Gallery.open(tmp_path / "g", threshold=0.0)
    writer.store.remove("id7")
    writer.store.add_identity("late", name=None, metadata=None,
                              templates=[TemplateInput(vector=np.eye(8, dtype=np.float32)[0])])
    reader = Gallery.open(tmp_path / "g", threshold=0.0)
    assert reader.identify(np.eye(8)[0], k=1).identity_id == "late"
    assert reader.index.rebuilds == 0  # loaded from disk and caught up from the change log
    assert "id7" not in {m.identity_id for m in reader.identify(np.ones(8), k=1200).matches}
    reader.close(), writer.close()
    index_path = tmp_path / "g" / "index" / "index"  # a file or a folder, depending on the backend
    index_files = [index_path] if index_path.is_file() else [p for p in index_path.rglob("*") if p.is_file()]
    biggest = max(index_files, key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[:100])
    reopened = Gallery.open(tmp_path / "g", threshold=0.0)
    assert reopened.identify(np.eye(8)[0], k=1).identity_id == "late"
    assert reopened.index.last_rebuild_reason.startswith("corrupt")
    reopened.close()


def test_concurrent_readers_and_writer(gallery):
    _enroll_random(gallery, 10)
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        rng = np.random.default_rng(threading.get_ident() % 1000)
        while not stop.is_set():
            try:
                decision = gallery.identify(rng.normal(size=gallery.embedding_dim), k=3, threshold=0)
                assert len(decision.matches) == 3
                gallery.list(limit=5)
            except BaseException as error:  # noqa: BLE001 - collected and re-raised in the main thread
                errors.append(error)
                return

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    rng = np.random.default_rng(5)
    for i in range(60):
        gallery.enroll(f"new{i}", embeddings=rng.normal(size=(2, gallery.embedding_dim)))
        if i % 3 == 0:
            gallery.remove(f"new{i}")
    stop.set()
    for thread in readers:
        thread.join()
    assert not errors, errors
    assert len(gallery) == 10 + 40
    assert gallery.store.integrity_problems() == []


def test_large_galleries_switch_to_the_approximate_index(tmp_path):
    gallery = Gallery.create(tmp_path / "g", embedding_dim=16, model_stamp="m", threshold=0.0, exact_limit=100)
    rng = np.random.default_rng(3)
    vectors = random_unit(rng, 400, 16).astype(np.float32)
    gallery.store.add_identities([(f"id{i}", None, None, [TemplateInput(vector=v)]) for i, v in enumerate(vectors)])
    probes = vectors[:50] + 0.05 * rng.normal(size=(50, 16))
    assert [gallery.identify(p, k=1).identity_id for p in probes] == [f"id{i}" for i in range(50)]
    assert gallery.index.info()["spec"] == "HNSW32"
    for i in range(10):
        gallery.remove(f"id{i}")
    assert all(gallery.identify(p, k=1).identity_id != f"id{i}" for i, p in enumerate(probes[:10]))
    assert gallery.index.info()["rebuilds"] == 1  # removals were applied in place
    gallery.close()


def test_export_never_destroys_the_gallery_or_a_users_folder(gallery, tmp_path):
    from deepmetric.io import FolderInUseError

    _enroll_random(gallery, 3)
    before = sorted(p.name for p in gallery.folder.iterdir())
    for target, message in [(gallery.folder, "is the gallery"), (gallery.folder / "sub", "is inside the gallery"),
                            (tmp_path, "holds the gallery")]:
        with pytest.raises(ValueError, match=message):
            gallery.export(target)
    assert sorted(p.name for p in gallery.folder.iterdir()) == before and len(gallery) == 3
    home = tmp_path / "home"
    home.mkdir()
    (home / "thesis.tex").write_text("years of work")
    with pytest.raises(FolderInUseError, match="did not write"):
        gallery.export(home)
    assert [p.name for p in home.iterdir()] == ["thesis.tex"]
    gallery.export(tmp_path / "export")
    gallery.export(tmp_path / "export")  # its own earlier export is replaced
    other = Gallery.create(tmp_path / "other", embedding_dim=gallery.embedding_dim, model_stamp="test-model")
    assert other.import_from(tmp_path / "export") == 3
    other.close()
