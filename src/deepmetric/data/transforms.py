"""Image preprocessing (resize + normalise) and training augmentations, built from a ``preprocessing`` dict.

Two forms of the same augmentations: ``ImageTransform`` maps one uint8 image (H, W[, C]) to a float tensor
(C, H, W) with albumentations (OpenCV underneath, imported on first use); ``BatchAugment`` maps a whole
collated uint8 batch (B, C, h, w) to float (B, C, H, W) with torch, which is what the trainer uses.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from deepmetric.validation import check_non_negative_float, check_number, check_positive_float, check_positive_int

PREPROCESSING_KEYS = ("image_size", "channels", "mean", "std")


def validate_preprocessing(preprocessing: Mapping[str, Any]) -> dict[str, Any]:
    """Check a ``preprocessing`` dict ``{"image_size": [H, W], "channels": C, "mean": [...], "std": [...]}``
    and return a clean copy (lists of floats, ints)."""
    if not isinstance(preprocessing, Mapping):
        raise TypeError(f"preprocessing must be a mapping, got {type(preprocessing).__name__}: {preprocessing!r}")
    unknown = sorted(set(preprocessing) - set(PREPROCESSING_KEYS))
    if unknown:
        raise ValueError(f"preprocessing has unknown key {unknown[0]!r}; expected keys {list(PREPROCESSING_KEYS)}")
    missing = [key for key in PREPROCESSING_KEYS if key not in preprocessing]
    if missing:
        raise ValueError(f"preprocessing {dict(preprocessing)!r} lacks {missing}; "
                         f"expected keys {list(PREPROCESSING_KEYS)}")
    size = _sequence("preprocessing image_size", preprocessing["image_size"], 2, "[height, width]")
    channels = check_positive_int("preprocessing channels", preprocessing["channels"])
    if channels not in (1, 3):
        raise ValueError(f"preprocessing channels must be 1 or 3, got {channels!r}")
    clean: dict[str, Any] = {
        "image_size": [check_positive_int(f"preprocessing image_size[{i}]", v) for i, v in enumerate(size)],
        "channels": channels}
    for key, check in (("mean", check_number), ("std", check_positive_float)):
        values = _sequence(f"preprocessing {key}", preprocessing[key], channels, "one number per channel")
        clean[key] = [check(f"preprocessing {key}[{i}]", v) for i, v in enumerate(values)]
    return clean


def _sequence(name: str, value: Any, length: int, what: str) -> Sequence[Any]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise TypeError(f"{name} must be a list of {length} ({what}), got {type(value).__name__}: {value!r}")
    if len(value) != length:
        raise ValueError(f"{name} must be a list of {length} ({what}), got {value!r}")
    return value


def match_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """(H, W) or (H, W, C) uint8 -> (H, W, channels): grey is repeated to RGB, RGB becomes luma (ITU-R 601)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3:
        raise ValueError(f"an image must be (H, W) or (H, W, C), got shape {image.shape}")
    have = image.shape[2]
    if have == 4:  # RGBA: drop alpha
        image, have = image[:, :, :3], 3
    if have == channels:
        return image
    if have == 1 and channels == 3:
        return np.repeat(image, 3, axis=2)
    if have == 3 and channels == 1:
        grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)[:, :, None]
    raise ValueError(f"cannot convert an image with {have} channels to {channels}")


class ImageTransform:
    """Callable: uint8 image (H, W[, C]) -> float32 tensor (C, H, W). Picklable, so it works in DataLoader
    worker processes; the albumentations pipeline is built lazily in each process."""

    def __init__(self, preprocessing: Mapping[str, Any], *, train: bool, hflip: bool, crop_scale: tuple[float, float],
                 color_jitter: float) -> None:
        self.preprocessing = validate_preprocessing(preprocessing)
        self.train = bool(train)
        self.hflip = bool(hflip)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.color_jitter = float(color_jitter)
        self._pipeline: Callable[..., Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pipeline"] = None
        return state

    def _build(self) -> Callable[..., Any]:
        # albumentations otherwise checks for a newer version over the network on import.
        os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
        import albumentations as A
        import cv2

        height, width = self.preprocessing["image_size"]
        steps: list[Any] = []
        if self.train:
            steps.append(A.RandomResizedCrop(size=(height, width), scale=self.crop_scale, ratio=(3 / 4, 4 / 3)))
            if self.hflip:
                steps.append(A.HorizontalFlip(p=0.5))
            if self.color_jitter > 0:
                saturation = self.color_jitter if self.preprocessing["channels"] == 3 else 0.0
                steps.append(A.ColorJitter(brightness=self.color_jitter, contrast=self.color_jitter,
                                           saturation=saturation, hue=0.0, p=0.8))
        else:
            steps.append(A.Resize(height=height, width=width, interpolation=cv2.INTER_AREA))
        steps.append(A.Normalize(mean=self.preprocessing["mean"], std=self.preprocessing["std"],
                                 max_pixel_value=255.0))
        return A.Compose(steps)

    def reseed(self, seed: int) -> None:
        """Make the next random augmentations a function of ``seed`` alone (albumentations keeps a private
        generator that global seeding does not reach); the trainer calls this once per batch."""
        if self._pipeline is None:
            self._pipeline = self._build()
        self._pipeline.set_random_seed(int(seed) % 2**32)

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise TypeError(f"image must be a uint8 numpy array, got {type(image).__name__} "
                            f"{getattr(image, 'dtype', '')}")
        if self._pipeline is None:
            self._pipeline = self._build()
        image = match_channels(image, self.preprocessing["channels"])
        out = self._pipeline(image=image)["image"]
        if out.ndim == 2:
            out = out[:, :, None]
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32))

    def __repr__(self) -> str:
        return (f"ImageTransform(train={self.train}, preprocessing={self.preprocessing}, hflip={self.hflip}, "
                f"crop_scale={self.crop_scale}, color_jitter={self.color_jitter})")


def resize_image(image: np.ndarray, preprocessing: Mapping[str, Any]) -> np.ndarray:
    """uint8 image (H, W[, C]) -> uint8 (height, width, channels) at the preprocessing's size and channels,
    with OpenCV's area interpolation (the evaluation transform's resize, so a stored copy encodes the same)."""
    import cv2

    image = match_channels(image, preprocessing["channels"])
    height, width = preprocessing["image_size"]
    if image.shape[:2] != (height, width):
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    return image.reshape(height, width, preprocessing["channels"])


class BatchAugment:
    r"""The training augmentations of ``ImageTransform``, on a whole batch at once: uint8 (B, C, h, w) ->
    float32 (B, C, H, W), every image with its own random draw, in a few vectorised torch operations.

    Per image: a random resized crop (area fraction ``s ~ U(crop_scale)``, aspect ratio ``r`` log-uniform in
    [3/4, 4/3], so the crop spans ``sqrt(s r)`` x ``sqrt(s / r)`` of the image, clipped to 1, at a uniform
    position inside it), resampled bilinearly to ``image_size`` (one ``affine_grid`` + ``grid_sample``); a
    horizontal flip with probability 1/2 when ``hflip``; with probability 0.8 brightness ``x b`` and contrast
    ``(x - mean) c + mean``, ``b, c ~ U(1 - j, 1 + j)`` for ``j = color_jitter``; clamp to [0, 1]; then
    ``(x - mean) / std``. With ``train=False``: resize (as OpenCV's area interpolation) and normalise only.

    Draws come from a ``torch.Generator`` seeded with the batch's seed, so a batch's augmentations depend on
    (run seed, rank, epoch, batch number) only: resume stays exact.

    Example:
        >>> augment = BatchAugment({"image_size": [16, 16], "channels": 1, "mean": [0.5], "std": [0.5]})
        >>> augment(torch.zeros(4, 1, 8, 8, dtype=torch.uint8), seed=0).shape
        torch.Size([4, 1, 16, 16])
    """

    def __init__(self, preprocessing: Mapping[str, Any], *, train: bool = True, hflip: bool = False,
                 crop_scale: tuple[float, float] = (0.7, 1.0), color_jitter: float = 0.2) -> None:
        self.preprocessing = validate_preprocessing(preprocessing)
        _check_augmentation(crop_scale, color_jitter)
        self.train = bool(train)
        self.hflip = bool(hflip)
        self.crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
        self.color_jitter = float(color_jitter)

    def __call__(self, images: torch.Tensor, *, seed: int) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise TypeError(f"images must be a uint8 tensor (B, C, H, W), got {type(images).__name__} "
                            f"{getattr(images, 'dtype', '')} {tuple(getattr(images, 'shape', ()))}")
        channels = self.preprocessing["channels"]
        if images.shape[1] != channels:
            raise ValueError(f"images have {images.shape[1]} channels, the preprocessing expects {channels}")
        height, width = self.preprocessing["image_size"]
        batch = images.shape[0]
        x = images.float().div_(255.0)
        if not self.train or batch == 0:
            if tuple(x.shape[2:]) != (height, width):
                # The per-image transform's OpenCV INTER_AREA: averaging to shrink, repeating pixels to enlarge
                # by whole factors (what torch's "area" mode does too).
                x = torch.nn.functional.interpolate(x, size=(height, width), mode="area")
            return self._normalise(x)
        generator = torch.Generator().manual_seed(int(seed) % 2**63)

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(batch, generator=generator) * (high - low) + low

        area = uniform(*self.crop_scale)
        ratio = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
        crop_w = torch.sqrt(area * ratio).clamp(max=1.0)
        crop_h = torch.sqrt(area / ratio).clamp(max=1.0)
        # affine_grid's coordinates span [-1, 1]: a crop of relative width w is centred within +-(1 - w).
        centre_x = (uniform(-1.0, 1.0)) * (1 - crop_w)
        centre_y = (uniform(-1.0, 1.0)) * (1 - crop_h)
        flip = torch.ones(batch)
        if self.hflip:
            flip = torch.where(torch.rand(batch, generator=generator) < 0.5, -1.0, 1.0)
        theta = torch.zeros(batch, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = crop_w * flip, centre_x
        theta[:, 1, 1], theta[:, 1, 2] = crop_h, centre_y
        grid = torch.nn.functional.affine_grid(theta.to(x.device), [batch, channels, height, width],
                                               align_corners=False)
        x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.color_jitter > 0:
            jitter = self.color_jitter
            apply = torch.rand(batch, generator=generator) < 0.8
            brightness = torch.where(apply, uniform(1 - jitter, 1 + jitter), 1.0).to(x.device)
            contrast = torch.where(apply, uniform(1 - jitter, 1 + jitter), 1.0).to(x.device)
            x = x * brightness.view(-1, 1, 1, 1)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x - mean) * contrast.view(-1, 1, 1, 1) + mean).clamp_(0.0, 1.0)
        return self._normalise(x)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.preprocessing["mean"], device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.preprocessing["std"], device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def __repr__(self) -> str:
        return (f"BatchAugment(train={self.train}, preprocessing={self.preprocessing}, hflip={self.hflip}, "
                f"crop_scale={self.crop_scale}, color_jitter={self.color_jitter})")


def _check_augmentation(crop_scale: Sequence[float], color_jitter: float) -> None:
    if not (0 < crop_scale[0] <= crop_scale[1] <= 1):
        raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {crop_scale!r}")
    check_non_negative_float("color_jitter", color_jitter)


def build_transforms(preprocessing: Mapping[str, Any], *, train: bool, hflip: bool = True,
                     crop_scale: tuple[float, float] = (0.7, 1.0), color_jitter: float = 0.2) -> ImageTransform:
    """The transform for ``preprocessing``: at evaluation a resize to ``image_size`` and normalisation; in
    training a random resized crop (area fraction ``crop_scale``), a horizontal flip (unless ``hflip`` is
    False: flips change the identity of characters and digits), brightness/contrast jitter of strength
    ``color_jitter``, then the same normalisation.

    Example:
        >>> t = build_transforms({"image_size": [32, 32], "channels": 1, "mean": [0.5], "std": [0.5]}, train=False)
        >>> t(np.zeros((28, 28), np.uint8)).shape
        torch.Size([1, 32, 32])
    """
    _check_augmentation(crop_scale, color_jitter)
    return ImageTransform(preprocessing, train=train, hflip=hflip, crop_scale=tuple(crop_scale),
                          color_jitter=color_jitter)
