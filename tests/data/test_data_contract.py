"""Every registered data set honours the contract: items (image (C, H, W) float32, int label), labels (int64,
one per item), num_classes, a valid preprocessing dict whose size matches the items."""

import pickle

import numpy as np
import pytest
import torch

from deepmetric import registry
from deepmetric.data.builtin import fashion_mnist_available
from deepmetric.data.transforms import validate_preprocessing
from test_data_faces import make_lfw, pack, png_bytes, write_rec
from test_data_glyphs import FONTS
from test_data_table import make_images
from test_landmarks_data import write_gldv2, write_revisited


def args_for(name, tmp_path):
    if name == "csv":
        make_images(tmp_path, {"a": 2, "b": 2})
        (tmp_path / "t.csv").write_text("path,label\na/0.png,0\na/1.png,0\nb/0.png,1\nb/1.png,1\n")
        return {"table": str(tmp_path / "t.csv"), "image_size": 16}
    if name == "image_folder":
        make_images(tmp_path, {"a": 2, "b": 2})
        return {"root": str(tmp_path), "image_size": 16}
    if name == "lfw_pairs":
        return {"root": str(make_lfw(tmp_path) / "lfw"), "image_size": 16}
    if name == "verification_bin":
        (tmp_path / "v.bin").write_bytes(pickle.dumps(([png_bytes(v) for v in range(4)], [True, False])))
        return {"path": str(tmp_path / "v.bin"), "image_size": 16}
    if name == "insightface_rec":
        write_rec(tmp_path, [(k, pack(float(k % 2), png_bytes(k))) for k in range(4)])
        return {"root": str(tmp_path), "image_size": 16}
    if name == "gldv2":
        return {"root": str(write_gldv2(tmp_path)), "image_size": 16}
    if name == "revisited":
        return {"ground_truth": str(write_revisited(tmp_path)), "image_size": 16}
    if name == "fashion_mnist" and not fashion_mnist_available():
        pytest.skip("dataset-fashion-mnist is not installed")
    if name in ("glyphs", "glyph_landmarks"):
        if len(FONTS) < 4:
            pytest.skip("fewer than 4 fonts installed")
        return {**registry.example("dataset", name), "cache_dir": str(tmp_path), "progress": False}
    return registry.example("dataset", name)


@pytest.mark.parametrize("name", registry.names("dataset"))
def test_dataset_contract(name, tmp_path):
    dataset = registry.build({"name": name, "args": args_for(name, tmp_path)}, "dataset")
    assert len(dataset) > 0
    labels = dataset.labels
    assert isinstance(labels, np.ndarray) and labels.dtype == np.int64 and labels.shape == (len(dataset),)
    assert isinstance(dataset.num_classes, int)
    preprocessing = validate_preprocessing(dataset.preprocessing)
    for index in (0, len(dataset) - 1):
        image, label = dataset[index]
        assert isinstance(image, torch.Tensor) and image.dtype == torch.float32
        assert tuple(image.shape) == (preprocessing["channels"], *preprocessing["image_size"])
        assert isinstance(label, int) and label == labels[index]
    if dataset.num_classes:
        assert labels.min() >= 0 and labels.max() < dataset.num_classes
