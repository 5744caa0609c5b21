"""The app factory's own promises: metrics in the Prometheus format from a registry per app, no process-wide
state (PIL's bomb limit, the model's settings), the pixel limit as an argument on every image path, one
JSON error format even for unknown paths, and settings checked up front."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from deepmetric.gallery import Gallery
from deepmetric.service.app import create_app
from service_helpers import LOCAL, MODEL_CONFIG, GatedModel, png

API_KEY = "app-test-key"
KEY = {"X-API-Key": API_KEY}
DIM = 4
def _samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a Prometheus text exposition, keyed by (name, labels); fails if it does not parse."""
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.fixture
def vector_gallery(tmp_path):
    gallery = Gallery.create(tmp_path / "vectors", embedding_dim=DIM, model_stamp="external")
    yield gallery
    gallery.close()


def test_metrics_parse_and_count_requests_latency_gallery_and_index(vector_gallery):
    with TestClient(create_app(vector_gallery, api_key=API_KEY), base_url=LOCAL, headers=KEY) as client:
        body = {"identity_id": "alice", "embeddings": [[1.0, 0.0, 0.0, 0.0]]}
        assert client.post("/api/identities/embeddings", json=body, headers=KEY).status_code == 201
        for _ in range(3):
            assert client.get("/api/identities/nobody").status_code == 404
        assert client.post("/api/identify/embedding", json={"embedding": [1.0, 0, 0, 0], "threshold": 0.5}).is_success
        response = client.get("/api/metrics")
        default_path = client.get("/metrics")  # where Prometheus scrapes unless told otherwise
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = _samples(response.text)
    assert default_path.status_code == 200 and _samples(default_path.text).keys() >= samples.keys()

    def requests(method: str, route: str, status: str) -> float:
        labels = frozenset({"method": method, "route": route, "status": status}.items())
        return samples[("deepmetric_requests_total", labels)]

    assert requests("GET", "/api/identities/{identity_id}", "404") == 3
    assert requests("POST", "/api/identities/embeddings", "201") == 1
    route = frozenset({"method": "GET", "route": "/api/identities/{identity_id}"}.items())
    assert samples[("deepmetric_request_seconds_count", route)] == 3
    assert samples[("deepmetric_request_seconds_bucket", route | {("le", "+Inf")})] == 3
    assert samples[("deepmetric_request_seconds_sum", route)] > 0
    assert samples[("deepmetric_gallery_identities", frozenset())] == 1
    assert samples[("deepmetric_gallery_templates", frozenset())] == 1
    assert samples[("deepmetric_index_size", frozenset())] == 1
    assert samples[("deepmetric_index_rebuilds_total", frozenset())] == vector_gallery.index.info()["rebuilds"]


def test_two_apps_in_one_process_keep_their_own_metrics(tmp_path, vector_gallery):
    with (Gallery.create(tmp_path / "other", embedding_dim=DIM, model_stamp="external") as other,
          TestClient(create_app(vector_gallery), base_url=LOCAL) as first,
          TestClient(create_app(other), base_url=LOCAL) as second):
        for _ in range(2):
            first.get("/api/identities")
        second.get("/api/health")
        first_samples = _samples(first.get("/api/metrics").text)
        second_samples = _samples(second.get("/api/metrics").text)
    listing = ("deepmetric_requests_total",
               frozenset({"method": "GET", "route": "/api/identities", "status": "200"}.items()))
    assert first_samples[listing] == 2 and listing not in second_samples
    assert ("deepmetric_requests_total",
            frozenset({"method": "GET", "route": "/api/health", "status": "200"}.items())) not in first_samples


def test_pixel_limit_is_an_argument_on_every_image_path_and_nothing_global_changes(tmp_path):
    from deepmetric.models import build_embedder

    model = build_embedder(MODEL_CONFIG)  # a whole-image model: the service decodes, the model embeds
    pil_limit = Image.MAX_IMAGE_PIXELS
    with Gallery.create(tmp_path / "images", model=model) as gallery:
        small, large = png(40, seed=1), png(120, seed=2)  # 1,600 and 14,400 pixels
        with TestClient(create_app(gallery, api_key=API_KEY, max_pixels=10_000), base_url=LOCAL, headers=KEY) as client:
            assert pil_limit == Image.MAX_IMAGE_PIXELS
            assert not hasattr(model, "max_pixels")
            refused = client.post("/api/identities", headers=KEY, data={"identity_id": "big"},
                                  files=[("images", ("a.png", large, "image/png"))])
            assert refused.status_code == 413 and "too large" in refused.json()["reason"], refused.text
            second_of_two = client.post("/api/identities", headers=KEY, data={"identity_id": "big"},
                                        files=[("images", ("a.png", small)), ("images", ("b.png", large))])
            assert second_of_two.status_code == 413 and "image 2 of 2" in second_of_two.json()["reason"]
            assert len(gallery) == 0
            enrolled = client.post("/api/identities", headers=KEY, data={"identity_id": "small"},
                                   files=[("images", ("a.png", small, "image/png"))])
            assert enrolled.status_code == 201, enrolled.text
            assert client.post("/api/identify", files={"image": ("b.png", large)}).status_code == 413
            found = client.post("/api/identify", files={"image": ("a.png", small)}, data={"threshold": "0.5"})
            assert found.status_code == 200, found.text
            found = found.json()
            assert found["faces"][0]["decision"]["identity_id"] == "small"
            embedded = client.post("/api/embed", files={"image": ("a.png", small)}).json()
            assert embedded["width"] == 40 and len(embedded["faces"][0]["embedding"]) == 16
        # A second app over the same gallery with the default limit takes the larger photo.
        with TestClient(create_app(gallery, api_key=API_KEY), base_url=LOCAL, headers=KEY) as client:
            accepted = client.post("/api/identify", files={"image": ("b.png", large)}, data={"threshold": "0.5"})
            assert accepted.status_code == 200, accepted.text


def test_the_event_loop_answers_while_a_photo_is_embedded(tmp_path):
    from deepmetric.models import build_embedder

    model = GatedModel(build_embedder(MODEL_CONFIG))
    with (Gallery.create(tmp_path / "gated", model=model) as gallery,
          TestClient(create_app(gallery), base_url=LOCAL) as client):
        answers: dict[str, int] = {}

        def embed() -> None:
            answers["embed"] = client.post("/api/embed", files={"image": ("a.png", png(40))}).status_code

        def health_check() -> None:
            answers["health"] = client.get("/api/health").status_code

        embedding = threading.Thread(target=embed)
        embedding.start()
        try:
            assert model.entered.wait(timeout=60)
            health = threading.Thread(target=health_check)
            health.start()
            health.join(timeout=60)
            assert answers.get("health") == 200 and "embed" not in answers  # answered while embedding ran
        finally:
            model.release.set()
            embedding.join(timeout=60)
    assert answers["embed"] == 200


def test_face_model_keeps_its_own_pixel_limit(face_gallery, face_model):
    limit = face_model.max_pixels
    with TestClient(create_app(face_gallery, max_pixels=1_000), base_url=LOCAL) as client:
        assert client.get("/api/health").json()["detects_faces"]
    assert face_model.max_pixels == limit


def test_unknown_paths_and_methods_use_the_json_error_format(vector_gallery):
    with TestClient(create_app(vector_gallery), base_url=LOCAL) as client:
        missing = client.get("/api/nothing-here")
        assert missing.status_code == 404 and missing.json() == {"status": 404, "reason": "Not Found"}
        wrong_method = client.put("/api/health")
        assert wrong_method.status_code == 405 and wrong_method.json()["status"] == 405


@pytest.mark.parametrize(("arguments", "error", "match"), [
    ({"max_pixels": 0}, ValueError, "max_pixels"),
    ({"max_upload_bytes": -1}, ValueError, "max_upload_bytes"),
    ({"max_files": 2.5}, (TypeError, ValueError), "max_files"),
    ({"api_key": ""}, ValueError, "api_key"),
    ({"api_key": 123}, TypeError, "api_key"),
    ({"public_reads": "yes"}, TypeError, "public_reads"),
    ({"read_key": "k"}, ValueError, "read_key"),
    ({"api_key": "k", "read_key": "k"}, ValueError, "read_key"),
    ({"workers": 0}, ValueError, "workers"),
    ({"max_queued": -1}, ValueError, "max_queued"),
    ({"request_timeout": 0}, ValueError, "request_timeout"),
    ({"allowed_hosts": "localhost"}, TypeError, "allowed_hosts"),
])
def test_bad_settings_are_refused_when_the_app_is_built(vector_gallery, arguments, error, match):
    with pytest.raises(error, match=match):
        create_app(vector_gallery, **arguments)


def test_gallery_must_be_a_gallery():
    with pytest.raises(TypeError, match="gallery must be"):
        create_app("gallery-folder")
