from __future__ import annotations

import numpy as np
import pytest

from deepmetric import registry
from deepmetric.models import build_embedder, update_model_config
from deepmetric.models.protocol import (
    FACE_MODEL_KIND,
    FACE_PIPELINE_KIND,
    EmbeddingModel,
    FaceModel,
    load_model,
    model_fingerprint,
)

MODEL_CONFIG = {"backbone": {"name": "small_cnn", "args": {"width": 8}}, "embedding_dim": 16,
                "preprocessing": {"image_size": [32, 32], "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}}


def _saved(folder, seed: int):
    import torch

    torch.manual_seed(seed)
    return build_embedder(MODEL_CONFIG).save(folder)


def test_embedder_is_an_embedding_model_and_not_a_face_model():
    model = build_embedder(MODEL_CONFIG)
    assert isinstance(model, EmbeddingModel) and not isinstance(model, FaceModel)
    assert not isinstance(np.zeros(3), EmbeddingModel)


def test_fingerprint_follows_weights_and_architecture_not_calibration(tmp_path):
    folder = _saved(tmp_path / "a", seed=0)
    stamp = model_fingerprint(load_model(folder))
    assert len(stamp) == 64 and model_fingerprint(load_model(folder)) == stamp
    update_model_config(folder, {"calibration": {"metric": "cosine", "threshold": 0.5}})
    assert model_fingerprint(load_model(folder)) == stamp
    assert model_fingerprint(load_model(_saved(tmp_path / "b", seed=1))) != stamp


def test_face_models_are_found_by_registered_name():
    assert "dlib-face" in registry.names(FACE_MODEL_KIND)
    assert "aligned" in registry.names(FACE_PIPELINE_KIND)


def test_load_model_refuses_unknown_specs(tmp_path):
    with pytest.raises(ValueError, match=r"dlib-face.*model folder.*'nowhere'"):
        load_model("nowhere")
    with pytest.raises(ValueError, match=r"config\.json"):
        load_model(tmp_path)
    with pytest.raises(TypeError, match="got int"):
        load_model(3)


def test_dlib_face_model_loads_once_per_detector():
    pytest.importorskip("dlib")
    from deepmetric.faces import DlibFaceEmbedder

    model = load_model("dlib-face")
    assert isinstance(model, DlibFaceEmbedder) and isinstance(model, FaceModel)
    assert load_model("dlib-face") is model
    assert model_fingerprint(model) == model.fingerprint()


def test_model_folder_behind_the_aligned_face_pipeline(tmp_path):
    pytest.importorskip("dlib")
    from deepmetric.faces import AlignedFaceEmbedder

    folder = _saved(tmp_path / "a", seed=0)
    pipeline = load_model(folder, faces=True, detector="hog")
    assert isinstance(pipeline, AlignedFaceEmbedder) and isinstance(pipeline, FaceModel)
    assert pipeline.detector.detector_name == "hog"
    # The pipeline names the wrapped model's space: detection settings do not change it.
    assert model_fingerprint(pipeline) == model_fingerprint(load_model(folder))
    with pytest.raises(TypeError, match="EmbeddingModel"):
        AlignedFaceEmbedder(object())
