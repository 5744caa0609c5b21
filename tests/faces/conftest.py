"""Test photos: only scikit-image's public-domain ``astronaut`` (shipped with the package, no download) and
transformed copies of it."""

from __future__ import annotations

import io

import numpy as np
import pytest


def astronaut() -> np.ndarray:
    skimage_data = pytest.importorskip("skimage.data")
    return skimage_data.astronaut()


def encode(image: np.ndarray, fmt: str = "PNG", **save_args) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


def rotated_with_exif(image: np.ndarray) -> bytes:
    """A JPEG whose pixels are stored rotated, with EXIF orientation 6 ("rotate 90 CW to view") so a correct
    reader shows it upright."""
    from PIL import Image

    stored = Image.fromarray(np.rot90(image, k=1))  # 90 degrees counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def two_faces(image: np.ndarray) -> np.ndarray:
    """The astronaut beside a half-size mirrored copy of herself: two faces, the left one larger."""
    from PIL import Image

    small = np.asarray(Image.fromarray(image[:, ::-1]).resize((image.shape[1] // 2, image.shape[0] // 2)))
    canvas = np.full((image.shape[0], image.shape[1] + small.shape[1], 3), 255, dtype=np.uint8)
    canvas[:, : image.shape[1]] = image
    canvas[: small.shape[0], image.shape[1]:] = small
    return canvas


def no_face(image: np.ndarray) -> np.ndarray:
    """Same size and colours, no face: a smooth gradient made from the photo's mean colour."""
    ramp = np.linspace(0.3, 1.0, image.shape[1])[None, :, None]
    return np.clip(image.mean(axis=(0, 1))[None, None, :] * ramp * np.ones(image.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def face_embedder():
    pytest.importorskip("dlib")
    from deepmetric.faces import DlibFaceEmbedder

    return DlibFaceEmbedder()
