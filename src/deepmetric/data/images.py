"""Reading image files into uint8 arrays with errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def pil_to_array(image: Any) -> np.ndarray:
    """A PIL image as uint8 (H, W, 1) for grey modes or (H, W, 3) for everything else; 16-bit and float
    images are stretched to 0..255."""
    if image.mode in ("I", "I;16", "F"):
        array = np.asarray(image, dtype=np.float64)
        span = max(float(array.max() - array.min()), 1e-12)
        return np.rint((array - array.min()) * (255.0 / span)).astype(np.uint8)[:, :, None]
    array = np.asarray(image.convert("L" if image.mode in _GREY_MODES else "RGB"), dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file (see ``pil_to_array``); a missing file or a corrupt image is an error naming it."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return pil_to_array(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot decode image {path}: {error} (corrupt or not an image file)") from error
