"""Built-in data sets read from files already on the machine: Fashion-MNIST (Debian's IDX files) and
scikit-learn's 8x8 digits. Nothing is downloaded."""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepmetric.data.base import (
    LabelledImages,
    as_image_size,
    check_channels,
    check_split,
    limit_per_class,
    parse_classes,
)
from deepmetric.registry import register

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")

# IDX type codes (third byte of the magic number) -> big-endian numpy dtypes.
_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not.

    Layout: 2 zero bytes, a type code, the number of dimensions ``n``, ``n`` big-endian uint32 sizes,
    then the data in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"cannot read IDX file {path}: {error}") from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()!r})")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes) but the file holds "
                         f"{len(data) - header} data bytes")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}. Install it with "
        f"`sudo apt-get install dataset-fashion-mnist` (files go to {FASHION_MNIST_ROOT}) or pass root= a "
        f"folder holding the four IDX files.")


def fashion_mnist_available(root: str | os.PathLike | None = None) -> bool:
    root = Path(root or FASHION_MNIST_ROOT)
    try:
        for split in ("train", "t10k"):
            _find_idx(root, f"{split}-images-idx3-ubyte")
            _find_idx(root, f"{split}-labels-idx1-ubyte")
    except FileNotFoundError:
        return False
    return True


@register("dataset", "fashion_mnist", example={"split": "test", "classes": [5, 6], "max_per_class": 8})
class FashionMNIST(LabelledImages):
    """Fashion-MNIST (Xiao et al. 2017): 28x28 grey images of 10 clothing classes, 60k train / 10k test.

    Quality of a metric is measured on classes unseen in training, so pick classes, e.g. train on
    ``classes="0-4"`` of the train split and evaluate on ``classes="5-9"`` of the test split.

    Args:
        split: ``"train"`` (60k) or ``"test"`` (10k) file pair.
        root: folder with the IDX files (default /usr/share/datasets/fashion-mnist, from Debian's
            ``dataset-fashion-mnist``).
        classes: classes to keep (list of ints or ``"0-4"``); kept classes are relabelled 0..K-1.
        image_size: output size (int or [H, W]); default 28.
        channels: 1, or 3 to repeat the grey channel for RGB backbones.
        augment: training augmentations; default True for the train split.
        max_per_class: keep at most this many images per class (a fixed random subset).
    """

    def __init__(self, *, split: str = "train", root: str | None = None, classes: Sequence[int] | str | None = None,
                 image_size: int | Sequence[int] | None = None, channels: int = 1, augment: bool | None = None,
                 max_per_class: int | None = None) -> None:
        check_split(split, ("train", "test"))
        folder = Path(root or FASHION_MNIST_ROOT)
        prefix = "train" if split == "train" else "t10k"
        images = read_idx(_find_idx(folder, f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(_find_idx(folder, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        if images.ndim != 3 or images.dtype != np.uint8 or len(images) != len(labels):
            raise ValueError(f"Fashion-MNIST files in {folder} are inconsistent: images {images.shape} "
                             f"{images.dtype}, labels {labels.shape}")
        chosen = parse_classes(classes, range(10))
        keep = np.flatnonzero(np.isin(labels, chosen))
        keep = keep[limit_per_class(labels[keep], max_per_class)]
        self.root = str(folder)
        self.split = split
        super().__init__(images[keep], labels[keep], class_names=dict(enumerate(FASHION_MNIST_CLASSES)),
                         preprocessing=_grey_preprocessing(as_image_size(image_size, 28), channels),
                         augment=split == "train" if augment is None else augment, hflip=True)


def _grey_preprocessing(image_size: list[int], channels: int) -> dict:
    channels = check_channels(channels)
    return {"image_size": image_size, "channels": channels, "mean": [0.5] * channels, "std": [0.5] * channels}


def split_per_class(labels: np.ndarray, split: str, *, test_fraction: float, seed: int = 0) -> np.ndarray:
    """Indices of a deterministic per-class train/test split (``split="all"`` keeps everything)."""
    if split == "all":
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        where = rng.permutation(np.flatnonzero(labels == label))
        num_test = int(round(len(where) * test_fraction))
        chosen.append(where[:num_test] if split == "test" else where[num_test:])
    return np.sort(np.concatenate(chosen))


@register("dataset", "digits", example={"split": "test", "classes": "0-2"})
class Digits(LabelledImages):
    """scikit-learn's handwritten digits (UCI optdigits): 1797 8x8 grey images of 10 classes.

    Args:
        split: ``"train"`` (70% of each class), ``"test"`` (30%) or ``"all"``; the split is fixed.
        classes: classes to keep (list or ``"0-4"``), relabelled 0..K-1.
        image_size: output size (upsampled from 8x8); default 32.
        channels: 1 or 3.
        augment: training augmentations (never flips); default True for the train split.
    """

    def __init__(self, *, split: str = "train", classes: Sequence[int] | str | None = None,
                 image_size: int | Sequence[int] | None = 32, channels: int = 1,
                 augment: bool | None = None) -> None:
        from sklearn.datasets import load_digits

        check_split(split)
        bunch = load_digits()
        # Pixel values are counts 0..16 of an 4x4 block; scale to 0..255.
        images = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        labels = bunch.target.astype(np.int64)
        chosen = parse_classes(classes, range(10))
        keep = split_per_class(labels, split, test_fraction=0.3)
        keep = keep[np.isin(labels[keep], chosen)]
        self.split = split
        super().__init__(images[keep], labels[keep], class_names={d: str(d) for d in range(10)},
                         preprocessing=_grey_preprocessing(as_image_size(image_size, 32), channels),
                         augment=split == "train" if augment is None else augment, hflip=False)
