"""Face embedders: image -> detected faces -> one L2-normalised embedding per face.

``DlibFaceEmbedder`` is dlib's pretrained 128-d ResNet face descriptor (ready on day one);
``AlignedFaceEmbedder`` plugs a deepmetric ``Embedder`` trained on aligned crops into the same pipeline.
Both are ``deepmetric.models.protocol.FaceModel`` s (``encode``, ``embed``, ``embedding_dim``, ``config``,
``fingerprint``), registered by name ("dlib-face" face model, "aligned" pipeline) for ``load_model``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from deepmetric.data.images import DEFAULT_MAX_PIXELS, is_image_source, load_image
from deepmetric.faces.alignment import align_face
from deepmetric.faces.detection import (
    DESCRIPTOR_FILE,
    SHAPE_PREDICTOR_FILE,
    Face,
    FaceDetector,
    NoFaceError,
    check_face_choice,
    choose_face,
    import_dlib,
    model_file,
)
from deepmetric.models.protocol import FACE_MODEL_KIND, FACE_PIPELINE_KIND, EmbeddingModel, model_fingerprint
from deepmetric.registry import register
from deepmetric.validation import check_int


@dataclass(frozen=True)
class FaceEmbeddings:
    """The faces found in one image (largest first) and their embeddings ``(F, D)``; ``image`` is the
    decoded upright RGB array the boxes refer to."""

    image: np.ndarray
    faces: list[Face]
    embeddings: np.ndarray


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def _file_digest(path, digest) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


class FaceEmbedder:
    """Base class: subclasses implement ``embed_faces(image, faces)`` and ``config``."""

    embedding_dim: int

    def __init__(self, *, detector: FaceDetector, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if not isinstance(detector, FaceDetector):
            raise TypeError(f"detector must be a FaceDetector, got {type(detector).__name__}")
        self.detector = detector
        self.max_pixels = max_pixels

    def embed_faces(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        raise NotImplementedError

    @property
    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def load(self, source: Any) -> np.ndarray:
        return load_image(source, max_pixels=self.max_pixels)

    def detect(self, source: Any) -> list[Face]:
        """Faces in an image (path, bytes, PIL image or array), largest first; may be empty."""
        return self.detector.detect(self.load(source))

    def embed(self, source: Any, *, all_faces: bool = False) -> FaceEmbeddings:
        """Detect and embed the largest face, or every face when ``all_faces``; no face -> empty result."""
        image = self.load(source)
        faces = self.detector.detect(image)
        if not all_faces:
            faces = faces[:1]
        embeddings = (self.embed_faces(image, faces) if faces
                      else np.zeros((0, self.embedding_dim), dtype=np.float32))
        return FaceEmbeddings(image=image, faces=faces, embeddings=embeddings)

    def embed_one(self, source: Any, *, face: str | int | None = None) -> tuple[np.ndarray, int]:
        """The unit embedding (D,) of one face of an image, and how many faces the image holds.

        ``face``: None takes the only face and refuses a group photo (``MultipleFacesError``), ``"largest"``
        the largest face, an int the face at that index, largest first (the order of ``detect``).

        Raises:
            NoFaceError: no face in the image.
        """
        face = check_face_choice(face)  # a wrong choice fails before decoding
        image = self.load(source)
        faces = self.detector.detect(image)
        return self.embed_faces(image, [choose_face(faces, face)])[0], len(faces)

    def encode(self, inputs: Any, *, batch_size: int = 256, device: Any = None,
               progress: bool = False) -> np.ndarray:
        """One embedding per input image, from its largest face: ``(N, embedding_dim)`` float32.

        ``inputs`` is one image or a list of images (paths, bytes, PIL images, arrays).
        ``batch_size`` and ``device`` exist for interface parity with ``Embedder.encode``; dlib runs
        where it was built (CPU wheels here).

        Raises:
            NoFaceError: naming the first input without a detectable face.
        """
        if is_image_source(inputs) or (isinstance(inputs, np.ndarray) and inputs.ndim in (2, 3)) \
                or not isinstance(inputs, Iterable):
            inputs = [inputs]
        inputs = list(inputs)
        rows = []
        for position, source in enumerate(inputs):
            found = self.embed(source)
            if not found.faces:
                label = (repr(source) if isinstance(source, str) else "the image" if len(inputs) == 1
                         else f"image {position + 1} of {len(inputs)}")
                raise NoFaceError(f"no face found in {label}")
            rows.append(found.embeddings[0])
        if not rows:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        return np.stack(rows).astype(np.float32)


@register(FACE_MODEL_KIND, "dlib-face")
class DlibFaceEmbedder(FaceEmbedder):
    """dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1``, 128-d; King 2017,
    99.38 % on LFW), on dlib's own 150 x 150 face chips aligned from the 5 landmarks.

    Descriptors are L2-normalised and compared by cosine similarity. dlib's published operating point is a
    Euclidean distance of 0.6 between raw descriptors; ``config["operating_point"]`` gives its cosine
    equivalent for unit vectors. It is not calibrated on local data: calibrate on your own pairs when a
    false-accept rate matters.

    Args:
        detector: ``"hog"`` or ``"mmod"``; see ``FaceDetector``.
        upsample: detector upsampling (1 finds faces down to about 40 px).
        min_score: minimum detector score.
        num_jitters: dlib re-samples each chip this many extra times and averages (slower, a little
            more accurate).
        max_pixels: images with more pixels are refused before decoding.
    """

    embedding_dim = 128
    #: Raw descriptors have norm ~1.43, so dlib's d = 0.6 maps to cos = 1 - d^2 / (2 * 1.43^2) ~ 0.91 on
    #: unit vectors (two different people in public-domain test photos score 0.88 here).
    COSINE_OPERATING_POINT = 0.91

    def __init__(self, *, detector: str = "hog", upsample: int = 1, min_score: float = 0.3,
                 num_jitters: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        num_jitters = check_int("num_jitters", num_jitters, low=0, high=100)
        super().__init__(detector=FaceDetector(detector=detector, upsample=upsample, min_score=min_score),
                         max_pixels=max_pixels)
        self.num_jitters = num_jitters
        dlib = import_dlib()
        self._model = dlib.face_recognition_model_v1(str(model_file(DESCRIPTOR_FILE)))
        self._lock = threading.Lock()

    @property
    def config(self) -> dict[str, Any]:
        return {
            "name": "dlib_face_resnet_v1",
            "embedding_dim": self.embedding_dim,
            "detection": self.detector.config,
            "preprocessing": {"alignment": "dlib face chip from 5 landmarks", "image_size": [150, 150],
                              "padding": 0.25, "num_jitters": self.num_jitters},
            "operating_point": {"metric": "cosine", "threshold": self.COSINE_OPERATING_POINT,
                                "source": "dlib's 0.6 Euclidean distance, not calibrated locally"},
        }

    @cached_property
    def _fingerprint(self) -> str:
        digest = hashlib.sha256(b"dlib_face_resnet_v1")
        for name in (SHAPE_PREDICTOR_FILE, DESCRIPTOR_FILE):
            _file_digest(model_file(name), digest)
        return digest.hexdigest()

    def fingerprint(self) -> str:
        """Hash of the landmark and descriptor model files: the embedding space, not detector settings."""
        return self._fingerprint

    def embed_faces(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        if not faces:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        dlib = import_dlib()
        image = np.ascontiguousarray(image)
        shapes = dlib.full_object_detections()
        for face in faces:
            points = [dlib.point(int(round(x)), int(round(y))) for x, y in face.landmarks]
            shapes.append(dlib.full_object_detection(dlib.rectangle(*face.box), points))
        with self._lock:
            chips = dlib.get_face_chips(image, shapes, size=150, padding=0.25)
            descriptors = self._model.compute_face_descriptor(chips, self.num_jitters)
        return _normalise(np.array([np.array(d) for d in descriptors]))


@register(FACE_PIPELINE_KIND, "aligned")
class AlignedFaceEmbedder(FaceEmbedder):
    """A deepmetric ``Embedder`` trained on aligned face crops, behind the face pipeline: faces are aligned
    by a similarity transform of the eye centres onto the ArcFace template at the model's input size
    (``config["preprocessing"]["image_size"]``), then encoded by the model.

    Args:
        embedder: the trained model (a ``deepmetric.models.protocol.EmbeddingModel`` such as ``Embedder``).
        detector: face detector, or the name of one (``"hog"``, ``"mmod"``); dlib HOG when None.
    """

    def __init__(self, embedder: EmbeddingModel, *, detector: FaceDetector | str | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        if not isinstance(embedder, EmbeddingModel):
            raise TypeError(f"embedder must be an EmbeddingModel (encode, embedding_dim, config) such as an "
                            f"Embedder, got {type(embedder).__name__}")
        if detector is None or isinstance(detector, str):
            detector = FaceDetector() if detector is None else FaceDetector(detector=detector)
        super().__init__(detector=detector, max_pixels=max_pixels)
        self.embedder = embedder
        self.embedding_dim = int(embedder.embedding_dim)
        size = (embedder.config.get("preprocessing") or {}).get("image_size") or [112, 112]
        self.crop_size = (int(size[0]), int(size[1]))

    @property
    def config(self) -> dict[str, Any]:
        return {**self.embedder.config, "detection": self.detector.config,
                "alignment": {"template": "arcface", "points": ["left_eye", "right_eye"],
                              "image_size": list(self.crop_size)}}

    def fingerprint(self) -> str:
        """The wrapped model's fingerprint: detection and alignment settings do not change its space."""
        return model_fingerprint(self.embedder)

    def embed_faces(self, image: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
        from PIL import Image

        if not faces:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        crops = [Image.fromarray(align_face(image, face.eye_centres, size=self.crop_size,
                                            point_names=("left_eye", "right_eye"))) for face in faces]
        return _normalise(self.embedder.encode(crops))
