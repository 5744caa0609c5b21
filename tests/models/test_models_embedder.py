import json

import numpy as np
import pytest
import torch
from PIL import Image

from deepmetric.data.transforms import build_transforms
from deepmetric.models import Embedder, build_embedder, read_model_config, update_model_config

PRE = {"image_size": [16, 16], "channels": 1, "mean": [0.5], "std": [0.5]}
CONFIG = {"backbone": {"name": "small_cnn", "args": {"width": 4, "stages": 2}}, "pooling": {"name": "gem"},
          "embedding_dim": 8, "neck": {"dropout": 0.1}, "preprocessing": PRE}


@pytest.fixture
def model():
    torch.manual_seed(0)
    embedder = build_embedder(CONFIG)
    # Move BatchNorm statistics away from their defaults so the round trip checks buffers too.
    embedder.train()
    with torch.no_grad():
        embedder(torch.randn(8, 1, 16, 16) * 3 + 1)
    return embedder


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (5, 16, 16), dtype=np.uint8)


def test_save_load_round_trip_gives_identical_embeddings(model, images, tmp_path):
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [".deepmetric-folder.json", "config.json",
                                                                  "model.safetensors"]
    loaded = Embedder.load(tmp_path / "m", device="cpu")
    assert not loaded.training and loaded.embedding_dim == 8
    assert loaded.config == model.config
    np.testing.assert_array_equal(model.encode(images, device="cpu"), loaded.encode(images))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_encode_paths_pil_arrays_tensors_and_datasets_agree(model, images, tmp_path):
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    from_array = model.encode(images, batch_size=2)
    assert from_array.dtype == np.float32 and from_array.shape == (5, 8)
    np.testing.assert_allclose(np.linalg.norm(from_array, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(model.encode([str(p) for p in paths]), from_array, atol=1e-6)
    np.testing.assert_allclose(model.encode([Image.fromarray(im).convert("RGB") for im in images]), from_array,
                               atol=1e-2)  # RGB -> grey conversion rounds
    np.testing.assert_allclose(model.encode(Image.open(paths[0])), from_array[:1], atol=1e-6)
    transform = build_transforms(PRE, train=False)
    tensors = torch.stack([transform(im) for im in images])
    np.testing.assert_allclose(model.encode(tensors), from_array, atol=1e-6)
    np.testing.assert_allclose(model.encode(tensors.numpy()), from_array, atol=1e-6)
    dataset = torch.utils.data.TensorDataset(tensors, torch.arange(5))
    np.testing.assert_allclose(model.encode(dataset, batch_size=3, progress=True), from_array, atol=1e-6)


def test_encode_checks_batch_size(model, images):
    np.testing.assert_allclose(model.encode(images, batch_size=np.int64(2)), model.encode(images), atol=1e-6)
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        model.encode(images, batch_size=0)
    for wrong in (True, 2.0, "2"):
        with pytest.raises(TypeError, match=f"batch_size must be a positive integer, got {type(wrong).__name__}"):
            model.encode(images, batch_size=wrong)


def test_encode_restores_training_mode_and_matches_eval_forward(model, images):
    model.train()
    embeddings = model.encode(images)
    assert model.training
    model.eval()
    transform = build_transforms(PRE, train=False)
    with torch.no_grad():
        expected = model(torch.stack([transform(im) for im in images])).numpy()
    np.testing.assert_allclose(embeddings, expected, atol=1e-6)


def test_encode_rejects_wrong_inputs(model, tmp_path):
    with pytest.raises(ValueError, match=r"shape \(N, 1, 16, 16\)"):
        model.encode(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match="NaN"):
        model.encode(torch.full((1, 1, 16, 16), float("nan")))
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        model.encode([tmp_path / "missing.png"])
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"bad\.png"):
        model.encode([tmp_path / "bad.png"])
    with pytest.raises(TypeError, match="inputs must be"):
        model.encode(42)


def test_save_keeps_other_files_and_update_config_is_atomic_and_validated(model, tmp_path):
    folder = tmp_path / "m"
    model.save(folder)
    (folder / "metrics.json").write_text("{}")
    calibration = {"metric": "cosine", "threshold": 0.42, "target_far": 1e-3, "threshold_ci": [0.4, 0.44],
                   "num_genuine": 10, "num_impostor": 90}
    update_model_config(folder, {"calibration": calibration})
    assert read_model_config(folder)["calibration"] == calibration
    model.save(folder)
    assert (folder / "metrics.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    with pytest.raises(ValueError, match="must match its weights"):
        update_model_config(folder, {"embedding_dim": 4})
    with pytest.raises(ValueError, match="unknown key 'calibrate'"):
        update_model_config(folder, {"calibrate": {}})


def test_load_refuses_unknown_architecture_and_mismatched_weights(model, tmp_path):
    folder = tmp_path / "m"
    model.save(folder)
    config = json.loads((folder / "config.json").read_text())
    config["backbone"]["name"] = "os.system"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"unknown backbone 'os\.system'"):
        Embedder.load(folder)
    config["backbone"]["name"] = "small_cnn"
    config["embedding_dim"] = 16
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="has shape"):
        Embedder.load(folder)


def test_load_never_unpickles(model, tmp_path):
    folder = tmp_path / "m"
    model.save(folder)
    torch.save(model.state_dict(), folder / "model.safetensors")  # a pickle under the expected name
    with pytest.raises(ValueError, match="not a valid safetensors file"):
        Embedder.load(folder)


@pytest.mark.parametrize("change, match", [
    ({"embedding_dim": 0}, "embedding_dim"),
    ({"backbone": {"name": "small_cnn", "args": {"widht": 4}}}, "widht"),
    ({"preprocessing": None}, "needs 'preprocessing'"),
    ({"neck": {"dropuot": 0.1}}, "dropuot"),
    ({"pooling": {"name": "mean"}}, "unknown pooling 'mean'"),
    ({"backbone": {"name": "small_cnn", "args": {"in_channels": 3}}}, "in_channels=3"),
    ({"format_version": 2}, "format_version"),
])
def test_bad_model_configs_are_named(change, match):
    with pytest.raises(ValueError, match=match):
        build_embedder({**CONFIG, **change})


def test_vector_model_round_trip(tmp_path):
    model = build_embedder({"backbone": {"name": "mlp", "args": {"input_dim": 6, "hidden_dims": [10]}},
                            "embedding_dim": 4})
    vectors = np.random.default_rng(0).normal(size=(7, 6)).astype(np.float32)
    model.save(tmp_path / "v")
    np.testing.assert_array_equal(Embedder.load(tmp_path / "v").encode(vectors), model.encode(vectors))
