"""The model stamp ties a gallery to the exported model: a gallery embedded with PyTorch opens with onnxruntime
(and back) without re-embedding, because the stamp is written only after parity held; an int8 graph, which
computes another space, is refused. ``load_model`` reads an exported folder like a model folder."""

from __future__ import annotations

import numpy as np
import pytest

from deepmetric.deploy.export import export_onnx
from deepmetric.deploy.parity import glyph_test_set
from deepmetric.deploy.quantize import export_quantized
from deepmetric.gallery import Gallery
from deepmetric.gallery.gallery import GalleryModelMismatch
from deepmetric.models import Embedder, load_model
from deepmetric.models.onnx_runtime import OnnxEmbedder
from deploy_helpers import small_model

pytest.importorskip("onnxruntime")


def test_switching_runtimes_keeps_the_gallery_and_its_answers(tmp_path):
    model = small_model("small_cnn")
    model.save(tmp_path / "model")
    export_onnx(tmp_path / "model", tmp_path / "exported", max_images=40)
    images, labels = glyph_test_set(40, seed=3)
    first = {label: np.flatnonzero(labels == label)[:2] for label in np.unique(labels)[:6]}
    torch_model = load_model(tmp_path / "model", device="cpu")
    with Gallery.create(tmp_path / "gallery", model=torch_model) as gallery:
        for label, rows in first.items():
            gallery.enroll(f"char-{label}", images=[images[rows[0]]])
        expected = [gallery.identify(images[rows[1]], threshold=-1.0) for rows in first.values()]

    exported = load_model(tmp_path / "exported")
    assert isinstance(exported, OnnxEmbedder)
    with Gallery.open(tmp_path / "gallery", model=exported) as gallery:  # no GalleryModelMismatch, no re-embed
        for rows, before in zip(first.values(), expected):
            after = gallery.identify(images[rows[1]], threshold=-1.0)
            assert after.identity_id == before.identity_id and abs(after.score - before.score) < 1e-5
        spare = images[np.flatnonzero(labels == np.unique(labels)[6])[0]]  # a class not enrolled yet
        gallery.enroll("late", images=[spare])  # enrolled through onnxruntime, found through PyTorch
    with Gallery.open(tmp_path / "gallery", model=torch_model) as gallery:
        decision = gallery.identify(spare, threshold=-1.0)
        assert decision.identity_id == "late" and decision.score > 0.99999

    export_quantized(tmp_path / "model", tmp_path / "int8", max_images=40, max_map_loss=0.05)
    with pytest.raises(GalleryModelMismatch, match="re-embed"):
        Gallery.open(tmp_path / "gallery", model=Embedder.load(tmp_path / "int8"))


def test_load_model_picks_the_runtime(tmp_path):
    model = small_model("mlp")
    model.save(tmp_path / "model")
    export_onnx(tmp_path / "model", tmp_path / "model" / "model.onnx", max_images=40)  # both in one folder
    assert isinstance(load_model(tmp_path / "model", device="cpu"), Embedder)  # weights present: PyTorch
    assert isinstance(load_model(tmp_path / "model", runtime="onnx"), OnnxEmbedder)
    with pytest.raises(ValueError, match="runtime"):
        load_model(tmp_path / "model", runtime="tflite")


def test_a_ready_made_face_model_has_no_onnx_runtime():
    pytest.importorskip("dlib")
    with pytest.raises(ValueError, match="ready-made face model"):
        load_model("dlib-face", runtime="onnx")
