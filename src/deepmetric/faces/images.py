"""Decode untrusted images into RGB uint8 arrays: EXIF orientation applied, grayscale / alpha / 16-bit
converted, and size limits checked from the header before any pixel is decoded (decompression bombs).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

#: Default ceiling on width * height: 40 megapixels is a large phone photo; more is refused unread.
DEFAULT_MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """The input is not a usable image (not an image, truncated, too large, unsupported mode)."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than allowed (checked from the header, before decoding)."""


def _open_pil(source: Any):
    from PIL import Image, UnidentifiedImageError

    if isinstance(source, Image.Image):
        return source
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("image is empty (0 bytes)")
        handle: Any = io.BytesIO(bytes(source))
        label = f"{len(source)} bytes"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"image file not found: {str(path)!r}")
        handle = io.BytesIO(path.read_bytes())
        label = repr(str(path))
    elif hasattr(source, "read"):
        handle = source
        label = "stream"
    else:
        raise TypeError(f"image must be a path, bytes, a PIL image or an array, got {type(source).__name__}")
    try:
        with warnings.catch_warnings():
            # PIL warns between MAX_IMAGE_PIXELS and twice that; we check the size ourselves below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(handle)
    except UnidentifiedImageError as error:
        raise ImageError(f"not an image: cannot identify image format of {label}") from error
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"image too large: {error}") from error


def _to_rgb_array(image) -> np.ndarray:
    from PIL import Image

    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16-bit / 32-bit scans: rescale the actual range to 0..255 instead of clipping to black/white.
        pixels = np.asarray(image, dtype=np.float64)
        return _stack_gray(_rescale_to_uint8(pixels, 65535.0 if mode.startswith("I;16") else None))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        # Transparent areas become white rather than the arbitrary colour stored under alpha = 0.
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def _rescale_to_uint8(pixels: np.ndarray, full_scale: float | None) -> np.ndarray:
    if full_scale is None:
        low, high = float(np.min(pixels)), float(np.max(pixels))
        if high <= low:
            return np.zeros(pixels.shape, dtype=np.uint8)
        pixels = (pixels - low) / (high - low) * 255.0
    else:
        pixels = pixels / full_scale * 255.0
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _stack_gray(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"image array must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                         f"got {array.shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"image array is empty: shape {array.shape}")
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype == np.uint16:
        pixels = _rescale_to_uint8(array.astype(np.float64), 65535.0)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise ImageError("image array contains NaN or infinite values")
        pixels = _rescale_to_uint8(array.astype(np.float64), 1.0)
    else:
        raise ImageError(f"image array dtype must be uint8, uint16 or float in [0, 1], got {array.dtype}")
    if pixels.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(pixels, 3, axis=2))
    if pixels.shape[2] == 4:
        alpha = pixels[:, :, 3:4].astype(np.float64) / 255.0
        blended = pixels[:, :, :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels)


def load_image(source: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``source`` into an RGB ``uint8`` array of shape (H, W, 3).

    Args:
        source: a file path, encoded bytes, a binary stream, a PIL image, or an array (H, W[, C]) of uint8,
            uint16 or float in [0, 1]; arrays are taken as already upright RGB(A).
        max_pixels: refuse images with more than this many pixels; the size is read from the header,
            before decoding, so a decompression bomb costs nothing.

    Raises:
        ImageError: not an image, truncated data, too many pixels, unsupported layout.
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    if isinstance(source, np.ndarray):
        if source.shape[0] * (source.shape[1] if source.ndim > 1 else 1) > max_pixels:
            raise ImageTooLargeError(f"image too large: {source.shape[1]}x{source.shape[0]} pixels, limit {max_pixels}")
        return _array_to_rgb(source)
    from PIL import Image, ImageOps

    image = _open_pil(source)
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(f"image too large: {width}x{height} = {width * height} pixels, limit {max_pixels}")
    if width == 0 or height == 0:
        raise ImageError(f"image is empty: {width}x{height} pixels")
    try:
        image.load()
        image = ImageOps.exif_transpose(image) or image
        return _to_rgb_array(image)
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"image too large: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:
        # PIL reports truncated or corrupt data as OSError ("image file is truncated") or SyntaxError.
        raise ImageError(f"corrupt or truncated image: {error}") from error
