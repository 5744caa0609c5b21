from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def face_embedder():
    pytest.importorskip("dlib")
    pytest.importorskip("skimage")
    from deepmetric.faces import DlibFaceEmbedder

    return DlibFaceEmbedder()
