"""Face detection and 5-point landmarks with dlib (HOG or MMOD detector, 5-point shape predictor).

Model files come from the ``face_recognition_models`` package; we locate them on disk without importing
it, because its ``__init__`` needs ``pkg_resources``, which new setuptools no longer ships.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepmetric.validation import check_choice, check_int, check_number

SHAPE_PREDICTOR_FILE = "shape_predictor_5_face_landmarks.dat"
DESCRIPTOR_FILE = "dlib_face_recognition_resnet_model_v1.dat"
MMOD_DETECTOR_FILE = "mmod_human_face_detector.dat"
DETECTORS = ("hog", "mmod")


class NoFaceError(ValueError):
    """No face was found in an image that needed one."""


class MultipleFacesError(ValueError):
    """An image holds several faces and the caller did not say which one to use."""


#: ``face=`` values: the only face (None: several are refused), the largest one, or an index largest first.
LARGEST_FACE = "largest"


def check_face_choice(face: Any) -> str | int | None:
    """``face`` as given when it is None, ``"largest"`` or a face index >= 0 (faces are ordered largest first);
    the text ``"largest"`` or ``"2"`` of a command line or form field is read the same way."""
    if isinstance(face, str) and face.strip().isdigit():
        face = int(face)
    if face is None or face == LARGEST_FACE:
        return face
    if isinstance(face, bool) or not isinstance(face, (int, str)):
        raise TypeError(f"face must be None, 'largest' or a face index (int >= 0), got {type(face).__name__}")
    if isinstance(face, str) or face < 0:
        raise ValueError(f"face must be 'largest' or a face index >= 0 (faces are ordered largest first), "
                         f"got {face!r}")
    return face


def choose_face(faces: list[Face], face: str | int | None) -> Face:
    """The face ``face`` picks among ``faces`` (largest first, as ``FaceDetector.detect`` gives them)."""
    face = check_face_choice(face)
    if not faces:
        raise NoFaceError("no face found")
    if face is None:
        if len(faces) > 1:
            raise MultipleFacesError(f"{len(faces)} faces found; say which one to use: face='largest' or a face "
                                     f"index 0-{len(faces) - 1} (largest first)")
        return faces[0]
    if face == LARGEST_FACE:
        return faces[0]
    if face >= len(faces):
        raise ValueError(f"face index {face} is out of range: {len(faces)} face{'s' if len(faces) > 1 else ''} "
                         f"found (indexes 0-{len(faces) - 1}, largest first)")
    return faces[face]


def model_file(name: str) -> Path:
    """Path of a model file shipped by ``face_recognition_models`` (found without importing it)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the face pipeline needs the 'face_recognition_models' package: pip install 'deepmetric[face]'")
    for location in spec.submodule_search_locations:
        path = Path(location) / "models" / name
        if path.is_file():
            return path
    raise FileNotFoundError(f"face model file {name!r} not found in face_recognition_models "
                            f"({list(spec.submodule_search_locations)})")


def import_dlib() -> Any:
    try:
        import dlib
    except ImportError as error:
        raise ModuleNotFoundError("the face pipeline needs dlib: pip install 'deepmetric[face]'") from error
    return dlib


@dataclass(frozen=True)
class Face:
    """A detected face: ``box`` (left, top, right, bottom) in pixels, detector ``score`` (higher = surer) and
    dlib's 5 landmarks ``(5, 2)`` as (x, y): outer and inner corner of the image-right eye, outer and inner
    corner of the image-left eye, base of the nose."""

    box: tuple[int, int, int, int]
    score: float
    landmarks: np.ndarray

    @property
    def area(self) -> int:
        left, top, right, bottom = self.box
        return max(0, right - left) * max(0, bottom - top)

    @property
    def eye_centres(self) -> np.ndarray:
        """(2, 2): image-left eye centre then image-right eye centre, the order of the alignment template."""
        return np.stack([self.landmarks[2:4].mean(axis=0), self.landmarks[0:2].mean(axis=0)])

    def to_dict(self) -> dict[str, Any]:
        return {"box": list(self.box), "score": round(float(self.score), 4),
                "landmarks": np.round(self.landmarks, 2).tolist()}


class FaceDetector:
    """Finds faces and their 5 landmarks, largest face first.

    Args:
        detector: ``"hog"`` (fast on CPU) or ``"mmod"`` (dlib's CNN, more robust to pose, slow without CUDA).
        upsample: times the image is doubled before detection; 1 finds faces down to about 40 px.
        min_score: HOG detections scoring below this are dropped (dlib's raw threshold is 0, which lets
            through textures that only vaguely look like faces); MMOD confidences are compared alike.
    """

    def __init__(self, *, detector: str = "hog", upsample: int = 1, min_score: float = 0.3) -> None:
        self.detector_name = check_choice("detector", detector, DETECTORS)
        self.upsample = check_int("upsample", upsample, low=0, high=3)
        self.min_score = check_number("min_score", min_score)
        dlib = import_dlib()
        if detector == "hog":
            self._detector = dlib.get_frontal_face_detector()
        else:
            self._detector = dlib.cnn_face_detection_model_v1(str(model_file(MMOD_DETECTOR_FILE)))
        self._predictor = dlib.shape_predictor(str(model_file(SHAPE_PREDICTOR_FILE)))
        # dlib objects are not documented as thread-safe; the service calls us from a thread pool.
        self._lock = threading.Lock()

    @property
    def config(self) -> dict[str, Any]:
        return {"detector": self.detector_name, "upsample": self.upsample, "min_score": self.min_score}

    def _rectangles(self, image: np.ndarray) -> list[tuple[Any, float]]:
        if self.detector_name == "hog":
            rects, scores, _ = self._detector.run(image, self.upsample, 0.0)
            return list(zip(rects, scores))
        return [(found.rect, float(found.confidence)) for found in self._detector(image, self.upsample)]

    def detect(self, image: np.ndarray) -> list[Face]:
        """All faces in ``image`` (H, W, 3) uint8 RGB scoring at least ``min_score``, largest first."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be an RGB uint8 array (H, W, 3), got "
                             f"{getattr(image, 'shape', type(image).__name__)} {getattr(image, 'dtype', '')}")
        image = np.ascontiguousarray(image)
        with self._lock:
            found = self._rectangles(image)
            faces = []
            for rect, score in found:
                if score < self.min_score:
                    continue
                shape = self._predictor(image, rect)
                points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
                faces.append(Face(box=(rect.left(), rect.top(), rect.right(), rect.bottom()),
                                  score=float(score), landmarks=points))
        faces.sort(key=lambda face: (-face.area, -face.score))
        return faces
