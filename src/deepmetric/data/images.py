"""The one image decoder: any image source (path, bytes, stream, PIL image, array) -> upright RGB uint8 (H, W, 3).

EXIF orientation is applied, alpha is composited on white, grey / palette / 1-bit / 16-bit are converted, and
the decode cost (pixels x bit depth) is checked from the header before any pixel is decoded (decompression
bombs); ``check_image_header`` runs that check alone, for a caller that must refuse an upload before queueing it.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deepmetric.validation import check_positive_int

#: Default ceiling on width * height: 40 megapixels is a large phone photo; more is refused unread.
DEFAULT_MAX_PIXELS = 40_000_000

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# What PIL raises for broken data while decoding pixels or parsing EXIF (truncated files, bad chunks).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error)


class ImageError(ValueError):
    """The input is not a usable image (not an image, truncated, too large, unsupported layout)."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than allowed (checked from the header, before decoding)."""


class ImageNotFoundError(ImageError, FileNotFoundError):
    """The image file does not exist: a bad value for an image argument and a missing file at once, so
    callers catching either ``ValueError`` or ``FileNotFoundError`` see it."""


def is_image_source(value: Any) -> bool:
    """True for a path, encoded bytes, a binary stream or a PIL image: one image whatever its contents.
    Arrays are left out: only their caller knows whether (N, H, W) is a batch or one image."""
    return (isinstance(value, (str, os.PathLike, bytes, bytearray, memoryview)) or _is_pil(value)
            or callable(getattr(value, "read", None)))


def _is_pil(value: Any) -> bool:
    # Checked by module name so that deciding what an input is never imports PIL.
    return type(value).__module__.startswith("PIL.") and hasattr(value, "getexif")


@contextlib.contextmanager
def _opened(source: Any) -> Iterator[tuple[Any, str, bool]]:
    """The PIL image of ``source`` with only its header read, a label naming it for error messages, and
    whether the image is ours to modify (False for the caller's own PIL image)."""
    from PIL import Image, UnidentifiedImageError

    if _is_pil(source):
        yield source, f"PIL image ({source.mode}, {source.width}x{source.height})", False
        return
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError("image is empty (0 bytes)")
        handle: Any = io.BytesIO(bytes(source))
        label = f"image of {len(source)} bytes"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageNotFoundError(f"image file not found: {str(path)!r}")
        handle, label = path, f"image {str(path)!r}"
    elif callable(getattr(source, "read", None)):
        handle = source
        name = getattr(source, "name", None)
        label = f"image stream {name!r}" if isinstance(name, str) else "image stream"
    else:
        raise TypeError(f"image source must be a path, bytes, a binary stream, a PIL image or an array, "
                        f"got {type(source).__name__}")
    try:
        # PIL checks Image.MAX_IMAGE_PIXELS here too (a warning above it, an error above twice it); our own
        # limit is checked from the header by the caller, without touching that process-wide setting.
        image = Image.open(handle)
    except UnidentifiedImageError as error:
        raise ImageError(f"not an image: cannot decode {label}: unknown or unsupported format") from error
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"image too large: {label}: {error}") from error
    except _DECODE_ERRORS as error:  # a header PIL recognises but cannot parse
        raise ImageError(f"cannot read the header of {label}: corrupt or truncated data ({error})") from error
    with image:
        yield image, label, True


def _bits_per_pixel(mode: str) -> int:
    from PIL import Image

    if mode == "1":
        return 1
    if mode.startswith("I;16"):
        return 16
    if mode in ("I", "F"):
        return 32
    try:
        return 8 * Image.getmodebands(mode)
    except (KeyError, ValueError):  # a mode PIL opens but cannot name the bands of: count the widest
        return 32


def decode_cost(width: int, height: int, mode: str) -> int:
    """What decoding a ``width`` x ``height`` image of PIL ``mode`` costs, in 24-bit RGB pixels: width x height
    x max(bit depth, 24) / 24. A 48-bit photo counts double; a 1-bit or grey one counts as colour, since it is
    converted to 24-bit RGB.

    Example:
        >>> decode_cost(100, 100, "RGB"), decode_cost(100, 100, "RGBA"), decode_cost(100, 100, "1")
        (10000, 13333, 10000)
    """
    return width * height * max(_bits_per_pixel(mode), 24) // 24


def _check_decode_cost(image: Any, label: str, max_pixels: int) -> None:
    width, height = image.size
    cost = decode_cost(width, height, image.mode)
    if cost > max_pixels:
        raise ImageTooLargeError(f"image too large: {label} is {width}x{height} pixels (mode {image.mode}), which "
                                 f"costs {cost} pixels to decode; the limit is max_pixels={max_pixels}")


def check_image_header(source: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Read only the header of ``source`` (as ``load_image`` takes it) and refuse it before any pixel is decoded:
    not an image (an ``ImageError`` whose message starts "not an image"), or a decode costing more than
    ``max_pixels`` (``ImageTooLargeError``; see ``decode_cost``). Returns (width, height) as stored.

    Example:
        >>> import io
        >>> from PIL import Image
        >>> buffer = io.BytesIO()
        >>> Image.new("1", (6300, 6300)).save(buffer, format="PNG")  # 4.9 kB, 40 megapixels decoded
        >>> check_image_header(buffer.getvalue(), max_pixels=3_000_000)
        Traceback (most recent call last):
            ...
        deepmetric.data.images.ImageTooLargeError: image too large: image of ... bytes is 6300x6300 pixels
        (mode 1), which costs 39690000 pixels to decode; the limit is max_pixels=3000000
    """
    max_pixels = check_positive_int("max_pixels", max_pixels)
    if isinstance(source, np.ndarray):
        raise TypeError("check_image_header reads an encoded image (path, bytes, stream, PIL image), not an array")
    with _opened(source) as (image, label, _):
        _check_decode_cost(image, label, max_pixels)
        return image.size


def _rescale_to_uint8(pixels: np.ndarray, full_scale: float | None) -> np.ndarray:
    """Map ``pixels`` to 0..255: by ``full_scale`` (16-bit: 65535), or by their own range when None."""
    if full_scale is None:
        low, high = float(np.min(pixels)), float(np.max(pixels))
        if high <= low:
            return np.zeros(pixels.shape, dtype=np.uint8)
        pixels = (pixels - low) / (high - low) * 255.0
    else:
        pixels = pixels / full_scale * 255.0
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[:, :, None], 3, axis=2)


def _pil_to_rgb(image: Any) -> np.ndarray:
    from PIL import Image

    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "F"):
        # 16-bit scans keep their full scale; 32-bit int / float images have none, so their own range is
        # stretched instead of being clipped to black and white.
        pixels = np.asarray(image, dtype=np.float64)
        return _grey_to_rgb(_rescale_to_uint8(pixels, 65535.0 if mode in _SIXTEEN_BIT_MODES else None))
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        # Transparent areas become white rather than whatever colour is stored under alpha = 0.
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(image if mode == "RGB" else image.convert("RGB"))


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ImageError(f"an image array must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
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
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ImageError(f"a float image array must hold values in [0, 1], got values in [{low}, {high}]; "
                             f"pass uint8 for 0..255 pixels")
        pixels = _rescale_to_uint8(array.astype(np.float64), 1.0)
    else:
        raise ImageError(f"an image array's dtype must be uint8, uint16 or float in [0, 1], got {array.dtype}")
    if pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    if pixels.shape[2] == 4:
        alpha = pixels[:, :, 3:4].astype(np.float64) / 255.0
        blended = pixels[:, :, :3] * alpha + 255.0 * (1.0 - alpha)
        return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels)


def load_image(source: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode ``source`` into an upright RGB ``uint8`` array of shape (H, W, 3).

    Args:
        source: a file path, encoded bytes, a binary stream, a PIL image, or an array (H, W[, C]) of uint8,
            uint16 or float in [0, 1]; arrays are taken as already upright grey, RGB or RGBA.
        max_pixels: refuse images whose decode costs more than this many 24-bit pixels (width x height, counted
            double for 48-bit colour; see ``decode_cost``). For encoded images it is read from the header,
            before decoding, so a decompression bomb costs nothing. PIL's own guard
            (twice ``PIL.Image.MAX_IMAGE_PIXELS``, about 179 megapixels) still applies above this; it is
            never changed here, since it is process-wide.

    Raises:
        TypeError: ``source`` is none of the kinds above.
        ImageNotFoundError: the path does not exist (a ``FileNotFoundError`` and an ``ImageError``).
        ImageTooLargeError: a decode costing more than ``max_pixels`` pixels.
        ImageError: not an image, truncated or corrupt data, unsupported layout; the message names the file.

    Example:
        >>> load_image(np.zeros((4, 6), np.uint8)).shape
        (4, 6, 3)
    """
    max_pixels = check_positive_int("max_pixels", max_pixels)
    if isinstance(source, np.ndarray):
        height, width = (source.shape + (1, 1))[:2]
        if height * width > max_pixels:
            raise ImageTooLargeError(f"image too large: array of {width}x{height} = {width * height} pixels, "
                                     f"limit max_pixels={max_pixels}")
        return _array_to_rgb(source)
    from PIL import Image, ImageOps

    with _opened(source) as (image, label, owned):
        _check_decode_cost(image, label, max_pixels)
        width, height = image.size
        if width == 0 or height == 0:
            raise ImageError(f"image is empty: {label} has {width}x{height} pixels")
        try:
            image.load()
            if owned:  # in place: a copy of every dataset image would cost time for nothing
                ImageOps.exif_transpose(image, in_place=True)
                upright = image
            else:  # the caller's image stays as it was
                upright = ImageOps.exif_transpose(image)
        except Image.DecompressionBombError as error:
            raise ImageTooLargeError(f"image too large: {label}: {error}") from error
        except _DECODE_ERRORS as error:
            raise ImageError(f"cannot decode {label}: corrupt or truncated data ({error})") from error
        try:
            return _pil_to_rgb(upright)
        except (ValueError, OSError) as error:  # e.g. a colour space PIL cannot convert to RGB
            raise ImageError(f"cannot convert {label} (mode {upright.mode}) to RGB: {error}") from error
