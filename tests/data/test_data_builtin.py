import gzip
import struct

import numpy as np
import pytest
import torch

from deepmetric import registry
from deepmetric.data.builtin import FashionMNIST, fashion_mnist_available, read_idx


def write_idx(path, array, type_code=0x08, compress=False):
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_uint8_round_trip(tmp_path, compress):
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    path = tmp_path / ("x-idx3-ubyte" + (".gz" if compress else ""))
    write_idx(path, images, compress=compress)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (5, 4, 3)
    np.testing.assert_array_equal(out, images)


def test_read_idx_big_endian_int32_and_float(tmp_path):
    values = np.array([[1, -2], [70000, 3]], dtype=np.int32)
    write_idx(tmp_path / "i.idx", values, type_code=0x0C)
    np.testing.assert_array_equal(read_idx(tmp_path / "i.idx"), values)
    floats = np.array([1.5, -2.25], dtype=np.float64)
    write_idx(tmp_path / "f.idx", floats, type_code=0x0E)
    np.testing.assert_array_equal(read_idx(tmp_path / "f.idx"), floats)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01abcd")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "bad")
    write_idx(tmp_path / "short", np.zeros((4, 2), np.uint8))
    data = (tmp_path / "short").read_bytes()
    (tmp_path / "short").write_bytes(data[:-1])
    with pytest.raises(ValueError, match="shape"):
        read_idx(tmp_path / "short")


def make_fashion_root(tmp_path, per_class=3):
    rng = np.random.default_rng(1)
    for prefix in ("train", "t10k"):
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images, compress=True)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels, compress=True)
    return tmp_path


def test_fashion_mnist_from_generated_root_selects_and_relabels_classes(tmp_path):
    root = make_fashion_root(tmp_path)
    data = registry.build({"name": "fashion_mnist", "args": {"split": "test", "root": str(root), "classes": "5-9",
                                                             "image_size": 32}}, "dataset")
    assert len(data) == 15 and data.num_classes == 5
    assert data.class_names == ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert data.labels.dtype == np.int64 and set(data.labels) == set(range(5))
    image, label = data[0]
    assert image.shape == (1, 32, 32) and image.dtype == torch.float32 and isinstance(label, int)
    assert not data.augment  # test split defaults to no augmentation
    assert data.preprocessing == {"image_size": [32, 32], "channels": 1, "mean": [0.5], "std": [0.5]}


def test_fashion_mnist_missing_files_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        FashionMNIST(root=str(tmp_path))
    assert not fashion_mnist_available(tmp_path)


def test_fashion_mnist_rejects_unknown_class(tmp_path):
    with pytest.raises(ValueError, match=r"\[12\] do not exist"):
        FashionMNIST(root=str(make_fashion_root(tmp_path)), classes=[1, 12])


@pytest.mark.skipif(not fashion_mnist_available(), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_counts():
    train = FashionMNIST(split="train", classes="0-4")
    test = FashionMNIST(split="test", classes=[5, 6, 7, 8, 9], max_per_class=100)
    assert len(train) == 30000 and np.bincount(train.labels).tolist() == [6000] * 5
    assert len(test) == 500 and test.num_classes == 5
    image = test.raw_image(0)
    assert image.shape == (28, 28) and image.max() > 0


def test_digits_split_is_disjoint_and_complete():
    train = registry.build({"name": "digits", "args": {"split": "train"}}, "dataset")
    test = registry.build({"name": "digits", "args": {"split": "test"}}, "dataset")
    everything = registry.build({"name": "digits", "args": {"split": "all", "image_size": 8}}, "dataset")
    assert len(train) + len(test) == len(everything) == 1797
    assert abs(len(test) / 1797 - 0.3) < 0.01
    train_images = {train.raw_image(i).tobytes() for i in range(len(train))}
    overlap = sum(test.raw_image(i).tobytes() in train_images for i in range(len(test)))
    assert overlap < 5  # a few digits are pixel-identical duplicates in the source data
    image, label = everything[0]
    assert image.shape == (1, 8, 8) and label == 0
    # 0..16 counts are scaled to 0..255 then normalised to [-1, 1]
    from sklearn.datasets import load_digits
    expected = np.clip(np.rint(load_digits().images[0] * 255 / 16), 0, 255) / 255 * 2 - 1
    np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-6)


def test_digits_classes_and_upsampling():
    data = registry.build({"name": "digits", "args": {"split": "test", "classes": [3, 8], "image_size": 32,
                                                      "channels": 3}}, "dataset")
    assert data.num_classes == 2 and data.class_names == ["3", "8"]
    assert data[0][0].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="split must be one of"):
        registry.build({"name": "digits", "args": {"split": "val"}}, "dataset")
