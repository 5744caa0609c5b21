"""Sample photos for tests, docs and demos, made only from scikit-image's public-domain ``astronaut``
photo (NASA; shipped inside scikit-image, no download) and transformed copies of it.

``python -m deepmetric.faces.samples FOLDER`` writes them as files (see the README walk-through).
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np


def astronaut() -> np.ndarray:
    """The astronaut photo (Eileen Collins), RGB uint8 (512, 512, 3). Needs scikit-image."""
    try:
        from skimage import data
    except ImportError as error:
        raise ModuleNotFoundError("sample photos need scikit-image: pip install scikit-image") from error
    return data.astronaut()


def encode(image: np.ndarray, fmt: str = "PNG", **save_args) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def rotated_with_exif(image: np.ndarray) -> bytes:
    """A JPEG whose pixels are stored rotated 90 degrees, with EXIF orientation 6 ("rotate 90 clockwise to
    view"), so only a reader that applies EXIF shows it upright."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(np.rot90(image, k=1), "JPEG", quality=95, exif=exif.tobytes())


def moved(image: np.ndarray, *, degrees: float = 10.0, size: int = 400) -> np.ndarray:
    """Rotated and rescaled copy: the same face in another pose and scale."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).rotate(degrees, resample=Image.Resampling.BILINEAR).resize((size, size)))


def two_faces(image: np.ndarray) -> np.ndarray:
    """The photo beside a half-size mirrored copy of itself: two faces, the left one larger."""
    from PIL import Image

    small = np.asarray(Image.fromarray(image[:, ::-1]).resize((image.shape[1] // 2, image.shape[0] // 2)))
    canvas = np.full((image.shape[0], image.shape[1] + small.shape[1], 3), 255, dtype=np.uint8)
    canvas[:, : image.shape[1]] = image
    canvas[: small.shape[0], image.shape[1]:] = small
    return canvas


def no_face(image: np.ndarray) -> np.ndarray:
    """Same size and mean colour, no face: a smooth horizontal gradient."""
    ramp = np.linspace(0.3, 1.0, image.shape[1])[None, :, None]
    return np.clip(image.mean(axis=(0, 1))[None, None, :] * ramp * np.ones(image.shape), 0, 255).astype(np.uint8)


def write_samples(folder: str | Path) -> list[Path]:
    """Write astronaut.png, astronaut_rotated_exif.jpg, astronaut_moved.jpg, two_faces.png, no_face.png."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image = astronaut()
    files = {
        "astronaut.png": encode(image),
        "astronaut_rotated_exif.jpg": rotated_with_exif(image),
        "astronaut_moved.jpg": encode(moved(image), "JPEG", quality=92),
        "two_faces.png": encode(two_faces(image)),
        "no_face.png": encode(no_face(image)),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]


if __name__ == "__main__":
    for path in write_samples(sys.argv[1] if len(sys.argv) > 1 else "sample_photos"):
        print(path)
