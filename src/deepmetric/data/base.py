"""The data-set contract shared by every built-in set: items ``(image (C, H, W) float, label int)`` and
attributes ``labels``, ``num_classes``, ``class_names``, ``preprocessing``; image sets also give the item
before augmentation (``uint8_item``) and the batch form of their augmentations (``batch_transform``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from deepmetric.data.transforms import BatchAugment, build_transforms, match_channels
from deepmetric.validation import check_choice, check_int, check_positive_int

SPLITS = ("train", "test", "all")


def check_split(split: str, allowed: Sequence[str] = SPLITS) -> str:
    return check_choice("split", split, allowed)


def check_channels(channels: object) -> int:
    """Images are read as greyscale (1 channel) or RGB (3): return ``channels`` as an int if it is one of them."""
    channels = check_int("channels", channels)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels}")
    return channels


def as_image_size(image_size: int | Sequence[int] | None, default: int) -> list[int]:
    """``32`` or ``[32, 32]`` -> ``[32, 32]``; None -> the default square size."""
    if image_size is None:
        return [default, default]
    if isinstance(image_size, Sequence) and not isinstance(image_size, str):
        if len(image_size) != 2:
            raise ValueError(f"image_size must be an integer or [height, width], got {image_size!r}")
        size = list(image_size)
    else:  # one side of a square; check_int names the type when it is neither
        size = [image_size, image_size]
    return [check_int("image_size", side, low=4) for side in size]


def parse_classes(classes: Sequence[int] | str | None, available: Sequence[int], *, name: str = "classes") -> list[int]:
    """Select classes: None (all), a list of ints, or a string of ranges ``"0-4"``, ``"0-4,7"``."""
    available_set = {int(c) for c in available}
    if classes is None:
        return sorted(available_set)
    if isinstance(classes, str):
        chosen: list[int] = []
        for part in classes.split(","):
            part = part.strip()
            try:
                if "-" in part:
                    low, high = (int(v) for v in part.split("-", 1))
                    chosen.extend(range(low, high + 1))
                else:
                    chosen.append(int(part))
            except ValueError:
                raise ValueError(f"{name} string must look like '0-4' or '0-4,7', got {classes!r}") from None
    elif isinstance(classes, Sequence):
        if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in classes):
            raise TypeError(f"{name} must be integers, got {classes!r}")
        chosen = [int(c) for c in classes]
    else:
        raise TypeError(f"{name} must be None, a list of ints or a string like '0-4', got {classes!r}")
    missing = sorted(set(chosen) - available_set)
    if missing:
        raise ValueError(f"{name} {missing} do not exist; available: {sorted(available_set)}")
    if not chosen:
        raise ValueError(f"{name} selects no class: {classes!r}")
    return sorted(set(chosen))


def limit_per_class(labels: np.ndarray, max_per_class: int | None, seed: int = 0) -> np.ndarray:
    """Indices keeping at most ``max_per_class`` items of each label (a fixed random choice), in order."""
    if max_per_class is None:
        return np.arange(len(labels))
    max_per_class = check_positive_int("max_per_class", max_per_class)
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(labels):
        where = np.flatnonzero(labels == label)
        if len(where) > max_per_class:
            where = np.sort(rng.choice(where, max_per_class, replace=False))
        keep.append(where)
    return np.sort(np.concatenate(keep)) if keep else np.arange(0)


class TransformedDataset(Dataset):
    """Base of data sets whose items pass through ``self.transform`` (an ``ImageTransform``, one image at a
    time). The trainer instead collates ``uint8_item`` s and runs ``self.batch_transform`` (the same
    augmentations as a ``BatchAugment``) on the whole batch."""

    transform: Any
    batch_transform: BatchAugment
    labels: np.ndarray
    preprocessing: dict[str, Any]
    in_memory: bool = False

    def _set_transforms(self, *, augment: bool, hflip: bool) -> None:
        self.augment = bool(augment)
        self.transform = build_transforms(self.preprocessing, train=self.augment, hflip=hflip)
        self.batch_transform = BatchAugment(self.preprocessing, train=self.augment, hflip=hflip)

    def reseed(self, seed: int) -> None:
        """Seed the augmentations (see ``ImageTransform.reseed``)."""
        self.transform.reseed(seed)

    def uint8_image(self, index: int) -> np.ndarray:  # pragma: no cover - abstract
        """The image an item is made from, uint8 (h, w, channels), before any augmentation."""
        raise NotImplementedError

    def uint8_item(self, index: int) -> tuple[torch.Tensor, int]:
        """``(uint8 image (C, h, w), label)``: the item before augmentation, for batch augmentation."""
        image = self.uint8_image(index)
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), int(self.labels[index])


class LabelledImages(TransformedDataset):
    """In-memory uint8 images with integer labels; relabels the chosen classes to ``0..num_classes-1``.

    Args:
        images: (N, H, W) or (N, H, W, C) uint8.
        labels: (N,) original class ids.
        class_names: name of every original class id (dict id -> name).
        preprocessing: the ``preprocessing`` dict (see ``deepmetric.data.transforms``).
        augment: apply training augmentations.
        hflip: allow horizontal flips when augmenting.
    """

    in_memory = True  # decoded already: the trainer loads its batches in the main process

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, class_names: dict[int, str],
                 preprocessing: dict[str, Any], augment: bool, hflip: bool) -> None:
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise ValueError(f"images must be (N, H, W[, C]) uint8, got {images.shape} {images.dtype}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        original = np.asarray(labels, dtype=np.int64)
        self.original_labels = original
        kept = np.unique(original)
        self.class_ids = [int(c) for c in kept]
        self.class_names = [class_names.get(c, str(c)) for c in self.class_ids]
        self.labels = np.searchsorted(kept, original).astype(np.int64)
        self.num_classes = len(self.class_ids)
        self.preprocessing = preprocessing
        self._set_transforms(augment=augment, hflip=hflip)

    def __len__(self) -> int:
        return len(self.labels)

    def uint8_image(self, index: int) -> np.ndarray:
        return match_channels(self.images[index], self.preprocessing["channels"])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])

    def raw_image(self, index: int) -> np.ndarray:
        """The stored uint8 image (for grids and inspection)."""
        return self.images[index]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(items={len(self)}, num_classes={self.num_classes}, "
                f"image_size={self.preprocessing['image_size']}, augment={self.augment})")
