from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from deepmetric.faces.samples import astronaut, encode, moved, no_face, rotated_with_exif, two_faces
from deepmetric.gallery import Gallery
from deepmetric.service.app import create_app
from service_helpers import LOCAL

API_KEY = "test-key-123"
KEY = {"X-API-Key": API_KEY}
DIM = 8


@pytest.fixture
def vector_client(tmp_path):
    gallery = Gallery.create(tmp_path / "vectors", embedding_dim=DIM, model_stamp="external",
                             model_config={"calibration": {"metric": "cosine", "threshold": 0.5}})
    with TestClient(create_app(gallery, api_key=API_KEY), base_url=LOCAL, headers=KEY) as client:
        client.gallery = gallery
        yield client
    gallery.close()


def _enroll_vectors(client, identity_id, vectors, **extra):
    return client.post("/api/identities/embeddings", headers=KEY,
                       json={"identity_id": identity_id, "embeddings": np.asarray(vectors).tolist(), **extra})


def test_enrol_identify_verify_embed_with_photos(face_client):
    image = astronaut()
    response = face_client.post("/api/identities", headers=KEY, data={"identity_id": "eileen", "name": "Eileen"},
                                files=[("images", ("a.png", encode(image), "image/png")),
                                       ("images", ("b.jpg", encode(image[:, ::-1].copy(), "JPEG"), "image/jpeg"))])
    assert response.status_code == 201, response.text
    assert response.json()["num_templates"] == 2

    response = face_client.post("/api/identify", files={"image": ("p.jpg", rotated_with_exif(image))},
                                data={"k": "3", "all_faces": "true"})
    assert response.status_code == 200, response.text
    [face] = response.json()["faces"]
    assert face["decision"]["accepted"] and face["decision"]["identity_id"] == "eileen"
    assert response.json()["width"] == 512 and 160 < face["box"][0] < 190  # boxes in upright coordinates

    response = face_client.post("/api/verify", files={"image": ("p.jpg", encode(moved(image), "JPEG"))},
                                data={"identity_id": "eileen"})
    assert response.status_code == 200 and response.json()["decision"]["accepted"]

    response = face_client.post("/api/embed", files={"image": ("two.png", encode(two_faces(image)))},
                                data={"all_faces": "true"})
    faces = response.json()["faces"]
    assert len(faces) == 2 and len(faces[0]["embedding"]) == 128
    assert np.linalg.norm(faces[0]["embedding"]) == pytest.approx(1.0, abs=1e-4)

    record = face_client.get("/api/identities/eileen").json()
    template_id = record["templates"][0]["template_id"]
    thumbnail = face_client.get(f"/api/identities/eileen/templates/{template_id}/image")
    assert thumbnail.headers["content-type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(thumbnail.content)).convert("RGB")), image)

    added = face_client.post("/api/identities/eileen/images", headers=KEY,
                             files=[("images", ("c.jpg", rotated_with_exif(image), "image/jpeg"))])
    assert added.status_code == 201 and added.json()["num_templates"] == 3
    trimmed = face_client.delete(f"/api/identities/eileen/templates/{template_id}", headers=KEY)
    assert trimmed.status_code == 200 and trimmed.json()["num_templates"] == 2
    assert template_id not in {t["template_id"] for t in trimmed.json()["templates"]}


def test_adding_photos_needs_a_face_choice_for_a_group_photo_and_counts_faces(face_client, face_gallery):
    image = astronaut()
    assert face_client.post("/api/identities", data={"identity_id": "eileen"},
                            files=[("images", ("a.png", encode(image), "image/png"))]).status_code == 201
    group = ("images", ("two.png", encode(two_faces(image)), "image/png"))
    refused = face_client.post("/api/identities/eileen/images", files=[group])
    assert refused.status_code == 422 and "2 faces found" in refused.json()["reason"], refused.text
    assert face_gallery.get("eileen").num_templates == 1
    wrong = face_client.post("/api/identities/eileen/images", data={"face": "biggest"}, files=[group])
    assert wrong.status_code == 422 and wrong.json()["reason"].startswith("invalid request: face"), wrong.text
    added = face_client.post("/api/identities/eileen/images", data={"face": "largest"}, files=[group])
    assert added.status_code == 201, added.text
    assert added.json()["faces_seen"] == [2] and added.json()["num_templates"] == 2
    single = face_client.post("/api/identities/eileen/images", files=[("images", ("b.png", encode(image)))])
    assert single.status_code == 201 and single.json()["faces_seen"] == [1]
    out_of_range = face_client.post("/api/identities/eileen/images", data={"face": "2"}, files=[group])
    assert out_of_range.status_code == 422 and face_gallery.get("eileen").num_templates == 3, out_of_range.text


def test_bad_photos_get_4xx_with_reason_and_change_nothing(face_client, face_gallery):
    jpeg = encode(astronaut(), "JPEG")
    bomb = io.BytesIO()
    Image.new("1", (5000, 5000)).save(bomb, format="PNG")
    cases = {
        "not an image": (b"GIF89a? no, just text", 415, "not an image"),
        "truncated jpeg": (jpeg[: len(jpeg) // 3], 422, "truncated"),
        "huge image": (bomb.getvalue(), 413, "too large"),
        "no face": (encode(no_face(astronaut())), 422, "no face"),
        "oversize upload": (b"\xff" * 2_100_000, 413, "upload too large"),
        "empty file": (b"", 422, "empty"),
    }
    generation = face_gallery.store.generation
    for name, (data, status, reason) in cases.items():
        enrol = face_client.post("/api/identities", headers=KEY, data={"identity_id": "x"},
                                 files=[("images", ("f", data, "image/jpeg"))])
        assert enrol.status_code == status, (name, enrol.text)
        assert reason in enrol.json()["reason"] and enrol.json()["status"] == status, name
        identify = face_client.post("/api/identify", files={"image": ("f", data)})
        assert identify.status_code == status and reason in identify.json()["reason"], (name, identify.text)
    # One bad photo among good ones refuses the whole enrolment, naming the photo.
    mixed = face_client.post("/api/identities", headers=KEY, data={"identity_id": "x"},
                             files=[("images", ("good.png", encode(astronaut()))),
                                    ("images", ("bad.png", encode(no_face(astronaut()))))])
    assert mixed.status_code == 422 and "image 2 of 2" in mixed.json()["reason"]
    assert face_gallery.store.generation == generation and len(face_gallery) == 0


def test_api_key_required_for_writes(vector_client):
    del vector_client.headers["X-API-Key"]
    body = {"identity_id": "a", "embeddings": [[1.0] + [0.0] * (DIM - 1)]}
    missing = vector_client.post("/api/identities/embeddings", json=body)
    assert missing.status_code == 401 and "X-API-Key" in missing.json()["reason"]
    wrong = vector_client.post("/api/identities/embeddings", json=body, headers={"X-API-Key": "nope"})
    assert wrong.status_code == 403
    assert vector_client.delete("/api/identities/a").status_code == 401
    bearer = vector_client.post("/api/identities/embeddings", json=body,
                                headers={"Authorization": f"Bearer {API_KEY}"})
    assert bearer.status_code == 201



READS = [("GET", "/api/identities", None), ("GET", "/api/identities/a", None),
         ("POST", "/api/identify/embedding", {"embedding": [1.0] + [0.0] * (DIM - 1)}),
         ("POST", "/api/verify/embedding", {"embedding": [1.0] + [0.0] * (DIM - 1), "identity_id": "a"})]


def test_reads_need_a_key_unless_public(tmp_path):
    with Gallery.create(tmp_path / "g", embedding_dim=DIM, model_stamp="external",
                        model_config={"calibration": {"metric": "cosine", "threshold": 0.5}}) as gallery:
        gallery.enroll("a", embeddings=np.eye(DIM)[:1])
        with TestClient(create_app(gallery, api_key=API_KEY, read_key="reader"), base_url=LOCAL) as client:
            for method, path, body in READS:
                assert client.request(method, path, json=body).status_code == 401, path
                assert client.request(method, path, json=body, headers={"X-API-Key": "nope"}).status_code == 403
                assert client.request(method, path, json=body, headers=KEY).status_code == 200, path
                assert client.request(method, path, json=body, headers={"X-API-Key": "reader"}).status_code == 200
            # The read key writes nothing.
            assert client.delete("/api/identities/a", headers={"X-API-Key": "reader"}).status_code == 403
            assert client.get("/api/health").status_code == 200 and client.get("/metrics").status_code == 200
            assert client.get("/api/health").json()["public_reads"] is False
        with TestClient(create_app(gallery, api_key=API_KEY, public_reads=True), base_url=LOCAL) as client:
            for method, path, body in READS:
                assert client.request(method, path, json=body).status_code == 200, path
            assert client.delete("/api/identities/a").status_code == 401


def test_bad_embeddings_and_ids_get_4xx_and_change_nothing(vector_client):
    assert _enroll_vectors(vector_client, "alice", np.eye(DIM)[:2]).status_code == 201
    generation = vector_client.gallery.store.generation
    nan_body = '{"identity_id": "nan", "embeddings": [[NaN, 1, 1, 1, 1, 1, 1, 1]]}'
    cases = [
        (_enroll_vectors(vector_client, "alice", np.eye(DIM)[:1]), 409, "already exists"),
        (_enroll_vectors(vector_client, "bob", np.ones((1, DIM + 2))), 422, "shape"),
        (_enroll_vectors(vector_client, "bob", np.zeros((1, DIM))), 422, "all-zero"),
        (_enroll_vectors(vector_client, "bad id", np.ones((1, DIM))), 422, "identity_id"),
        (_enroll_vectors(vector_client, "alice\n", np.ones((1, DIM))), 422, "identity_id"),  # issue 12, item 4
        (vector_client.post("/api/identities/embeddings", headers={**KEY, "content-type": "application/json"},
                            content=nan_body), 422, "NaN"),
        (vector_client.post("/api/identify/embedding", json={"embedding": [1.0, 2.0]}), 422, "shape"),
        (vector_client.post("/api/verify/embedding", json={"embedding": [1.0] * DIM, "identity_id": "zed"}),
         404, "unknown identity"),
        (vector_client.post("/api/identify/embedding", json={"embedding": [1.0] * DIM, "k": 0}), 422, "k"),
        (vector_client.get("/api/identities/zed"), 404, "unknown identity"),
        (vector_client.delete("/api/identities/zed", headers=KEY), 404, "unknown identity"),
        (vector_client.patch("/api/identities/alice", headers=KEY, json={}), 422, "nothing to update"),
        (vector_client.delete("/api/identities/alice/templates/999", headers=KEY), 404, "no template"),
        (vector_client.post("/api/identify", files={"image": ("a.png", encode(astronaut()))}), 409, "no model"),
        (vector_client.post("/api/identities/embeddings", headers=KEY, content=b"{not json",
                            ), 422, "invalid request"),
    ]
    for response, status, reason in cases:
        assert response.status_code == status, response.text
        assert reason in response.json()["reason"], response.text
    assert vector_client.gallery.store.generation == generation and len(vector_client.gallery) == 1


def test_identity_crud_and_decisions_on_embeddings(vector_client):
    eye = np.eye(DIM)
    _enroll_vectors(vector_client, "alice", eye[:1], name="Alice", metadata={"team": "red"})
    _enroll_vectors(vector_client, "bob", eye[1:2] + eye[2:3])
    listing = vector_client.get("/api/identities", params={"limit": 1}).json()
    assert listing["total"] == 2 and [i["identity_id"] for i in listing["identities"]] == ["alice"]
    renamed = vector_client.patch("/api/identities/alice", headers=KEY, json={"name": "Alice B."}).json()
    assert renamed["name"] == "Alice B." and renamed["metadata"] == {"team": "red"}

    probe = (eye[0] + 0.1 * eye[1]).tolist()
    decision = vector_client.post("/api/identify/embedding", json={"embedding": probe}).json()
    assert decision["identity_id"] == "alice" and decision["accepted"]
    assert decision["margin"] == pytest.approx(decision["score"] - decision["matches"][1]["score"], abs=1e-5)
    unknown = vector_client.post("/api/identify/embedding", json={"embedding": eye[5].tolist()}).json()
    assert unknown["identity_id"] is None and not unknown["accepted"]
    verify = vector_client.post("/api/verify/embedding", json={"embedding": eye[1].tolist(), "identity_id": "bob",
                                                                "threshold": 0.75}).json()
    assert verify["score"] == pytest.approx(1 / np.sqrt(2), abs=1e-5) and not verify["accepted"]
    assert verify["best_other"]["identity_id"] == "alice"

    assert vector_client.delete("/api/identities/alice", headers=KEY).json() == {"deleted": "alice"}
    assert vector_client.get("/api/identities").json()["total"] == 1


def test_health_metrics_openapi_and_page(vector_client):
    _enroll_vectors(vector_client, "alice", np.eye(DIM)[:1])
    health = vector_client.get("/api/health").json()
    assert health["status"] == "ok" and health["identities"] == 1 and health["threshold"] == 0.5
    vector_client.get("/api/identities/nobody")
    metrics = vector_client.get("/api/metrics").text
    assert 'route="/api/identities/{identity_id}",status="404"} 1' in metrics
    assert "deepmetric_gallery_identities 1" in metrics
    paths = vector_client.get("/openapi.json").json()["paths"]
    for path in ("/api/embed", "/api/identify", "/api/verify", "/api/identities", "/api/identities/{identity_id}",
                 "/api/health", "/api/metrics"):
        assert path in paths
    page = vector_client.get("/")
    assert page.status_code == 200 and "Enrol a person" in page.text
    assert "refreshIdentities" in vector_client.get("/static/app.js").text
    assert "swagger-ui" in vector_client.get("/docs").text
