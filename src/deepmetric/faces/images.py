"""Kept only until every caller imports the decoder from its home, ``deepmetric.data.images``."""

from deepmetric.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    ImageTooLargeError,
    load_image,
)

__all__ = ["DEFAULT_MAX_PIXELS", "ImageError", "ImageTooLargeError", "load_image"]
