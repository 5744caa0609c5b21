"""The service on the onnxruntime path: a gallery embedded with PyTorch is served with the exported model, photos
are enrolled, identified and embedded through onnxruntime, and the answers match PyTorch's."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from deepmetric.deploy.export import export_onnx
from deepmetric.gallery import Gallery
from deepmetric.models import Embedder, load_model
from deepmetric.models.onnx_runtime import OnnxEmbedder
from deepmetric.service.app import create_app
from deploy_helpers import small_model

pytest.importorskip("onnxruntime")

API_KEY = "onnx-test-key"
KEY = {"X-API-Key": API_KEY}


def _photos(count: int) -> list[bytes]:
    """Distinct photos: smooth random colour fields (48 x 40), PNG-encoded."""
    rng = np.random.default_rng(7)
    photos = []
    for _ in range(count):
        small = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(small).resize((40, 48), Image.Resampling.BILINEAR).save(buffer, format="PNG")
        photos.append(buffer.getvalue())
    return photos


@pytest.fixture
def exported_folders(tmp_path):
    small_model("resnet34").save(tmp_path / "model")
    export_onnx(tmp_path / "model", tmp_path / "exported", max_images=40, faces=False)
    return tmp_path / "model", tmp_path / "exported"


def test_the_service_runs_on_the_onnxruntime_path(tmp_path, exported_folders):
    model_folder, exported_folder = exported_folders
    photos = _photos(4)
    torch_model = Embedder.load(model_folder, device="cpu")
    with Gallery.create(tmp_path / "gallery", model=torch_model, threshold=0.5) as gallery:
        gallery.enroll("first", images=[photos[0]])  # embedded by PyTorch

    exported = load_model(exported_folder)
    assert isinstance(exported, OnnxEmbedder)
    gallery = Gallery.open(tmp_path / "gallery", model=exported, threshold=0.5)
    with TestClient(create_app(gallery, api_key=API_KEY), base_url="http://localhost", headers=KEY) as client:
        enrolled = client.post("/api/identities", data={"identity_id": "second"},
                               files=[("images", ("b.png", photos[1], "image/png"))])
        assert enrolled.status_code == 201, enrolled.text
        for photo, expected in ((photos[0], "first"), (photos[1], "second")):
            answer = client.post("/api/identify", files={"image": ("p.png", photo, "image/png")}, data={"k": 2})
            assert answer.status_code == 200, answer.text
            decision = answer.json()["faces"][0]["decision"]
            assert decision["identity_id"] == expected and decision["score"] > 0.99999
        embedded = client.post("/api/embed", files={"image": ("c.png", photos[2], "image/png")})
        vector = np.asarray(embedded.json()["faces"][0]["embedding"], dtype=np.float32)
    gallery.close()
    reference = torch_model.encode([photos[2]])[0]
    assert float(vector @ reference) > 0.99999


def test_deepmetric_serve_runtime_onnx_answers_over_http(tmp_path, exported_folders):
    import httpx

    from deepmetric.service.process import serve_in_subprocess

    model_folder, _ = exported_folders
    # Both runtimes' files in one folder, but weights PyTorch cannot read: an answer proves --runtime onnx was used.
    served = tmp_path / "served"
    shutil.copytree(model_folder, served)
    export_onnx(model_folder, served / "model.onnx", max_images=40, faces=False)
    (served / "model.safetensors").write_bytes(b"not weights: only onnxruntime can serve this folder")
    photos = _photos(2)
    server = serve_in_subprocess(tmp_path / "gallery", api_key=API_KEY, log_path=tmp_path / "server.log",
                                 extra_args=("--model", str(served), "--runtime", "onnx"))
    with server as url, httpx.Client(base_url=url, headers=KEY, timeout=60) as client:
        enrolled = client.post("/api/identities", data={"identity_id": "someone"},
                               files=[("images", ("a.png", photos[0], "image/png"))])
        assert enrolled.status_code == 201, enrolled.text
        answer = client.post("/api/identify", files={"image": ("p.png", photos[0], "image/png")},
                             data={"threshold": "0.5"})
        assert answer.json()["faces"][0]["decision"]["identity_id"] == "someone", answer.text
    # Enrolled over onnxruntime, then opened with the PyTorch model: the same stamp and answer, no re-embedding.
    with Gallery.open(tmp_path / "gallery", model=Embedder.load(model_folder, device="cpu")) as gallery:
        decision = gallery.identify(photos[0], threshold=0.5)
        assert decision.identity_id == "someone" and decision.score > 0.99999
