from __future__ import annotations

import pytest

from deepmetric.gallery import Gallery


@pytest.fixture
def gallery(tmp_path):
    g = Gallery.create(tmp_path / "gallery", embedding_dim=16, model_stamp="test-model",
                       model_config={"calibration": {"metric": "cosine", "threshold": 0.6}})
    yield g
    g.close()
