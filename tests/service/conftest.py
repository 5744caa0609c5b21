from __future__ import annotations

import pytest

from service_helpers import LOCAL


@pytest.fixture(scope="session")
def face_model():
    pytest.importorskip("dlib")
    pytest.importorskip("skimage")
    from deepmetric.faces import DlibFaceEmbedder

    return DlibFaceEmbedder()


@pytest.fixture
def face_gallery(tmp_path, face_model):
    from deepmetric.gallery import Gallery

    gallery = Gallery.create(tmp_path / "faces", model=face_model)
    yield gallery
    gallery.close()


@pytest.fixture
def face_client(face_gallery, request):
    """A client of the app over a dlib face gallery, sending the write key; the test module defines ``API_KEY``."""
    from fastapi.testclient import TestClient

    from deepmetric.service.app import create_app

    app = create_app(face_gallery, api_key=request.module.API_KEY, max_upload_bytes=2_000_000, max_pixels=4_000_000)
    with TestClient(app, base_url=LOCAL, headers={"X-API-Key": request.module.API_KEY}) as client:
        yield client
