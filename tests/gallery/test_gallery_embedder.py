"""The gallery with a deepmetric model folder: stamp from config + weights, threshold from calibration."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from deepmetric.gallery import Gallery, GalleryModelMismatch
from deepmetric.models import build_embedder, update_model_config
from deepmetric.models.protocol import load_model, model_fingerprint
from gallery_helpers import png_bytes

MODEL_CONFIG = {"backbone": {"name": "small_cnn", "args": {"width": 8}}, "embedding_dim": 16,
                "preprocessing": {"image_size": [32, 32], "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3}}


def _model_folder(path, seed: int):
    torch.manual_seed(seed)
    build_embedder(MODEL_CONFIG).save(path)
    update_model_config(path, {"calibration": {"metric": "cosine", "threshold": 0.7, "target_far": 1e-3,
                                               "threshold_ci": [0.65, 0.75], "num_genuine": 100,
                                               "num_impostor": 1000}})
    return path


def test_model_folder_stamp_and_calibrated_threshold(tmp_path):
    folder = _model_folder(tmp_path / "model", seed=0)
    model = load_model(folder)
    images = [png_bytes(seed, size=40) for seed in range(3)]
    with Gallery.create(tmp_path / "g", model=model) as gallery:
        for i, image in enumerate(images):
            gallery.enroll(f"p{i}", images=[image])
        assert gallery.resolve_threshold() == 0.7
        decision = gallery.identify(images[1], k=3)
        assert decision.identity_id == "p1" and decision.score == pytest.approx(1.0, abs=1e-5)
        expected = model.encode([Image.open(io.BytesIO(images[1])).convert("RGB")])[0]
        assert float(np.dot(expected, gallery.embed_image(images[1]))) == pytest.approx(1.0, abs=1e-5)

    # Re-calibrating moves the threshold, not the embedding space: the gallery still opens.
    stamp = model_fingerprint(model)
    update_model_config(folder, {"calibration": {**model.config["calibration"], "threshold": 0.8}})
    recalibrated = load_model(folder)
    assert model_fingerprint(recalibrated) == stamp
    with Gallery.open(tmp_path / "g", model=recalibrated) as gallery:
        assert gallery.resolve_threshold() == 0.8

    # Other weights: refused, with the way out in the message.
    other = load_model(_model_folder(tmp_path / "other", seed=1))
    with pytest.raises(GalleryModelMismatch, match="reembed"):
        Gallery.open(tmp_path / "g", model=other)


def test_model_folder_behind_the_face_pipeline(tmp_path):
    pytest.importorskip("dlib")
    pytest.importorskip("skimage")
    from deepmetric.faces import AlignedFaceEmbedder
    from deepmetric.faces.samples import astronaut, no_face

    model = load_model(_model_folder(tmp_path / "model", seed=0), faces=True)
    assert isinstance(model, AlignedFaceEmbedder) and model.crop_size == (32, 32)
    embeddings = model.encode(astronaut())
    assert embeddings.shape == (1, 16)
    np.testing.assert_allclose(np.linalg.norm(embeddings), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="no face"):
        model.encode(no_face(astronaut()))
