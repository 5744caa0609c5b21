from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deepmetric.faces import AlignedFaceEmbedder, NoFaceError
from deepmetric.faces.detection import model_file
from deepmetric.faces.samples import astronaut, encode, no_face, rotated_with_exif, two_faces


def test_model_files_found_without_importing_the_package():
    import sys

    assert model_file("shape_predictor_5_face_landmarks.dat").stat().st_size > 1_000_000
    assert "face_recognition_models" not in sys.modules


def test_detects_the_astronaut_with_five_landmarks(face_embedder):
    faces = face_embedder.detect(astronaut())
    assert len(faces) == 1
    left, top, right, bottom = faces[0].box
    assert 160 < left < 190 and 60 < top < 90 and 250 < right < 280 and 150 < bottom < 180
    landmarks = faces[0].landmarks
    assert landmarks.shape == (5, 2)
    image_left_eye, image_right_eye = faces[0].eye_centres
    assert image_left_eye[0] < image_right_eye[0]  # template order: left of the image first
    assert abs(image_left_eye[1] - image_right_eye[1]) < 8  # she holds her head upright
    assert landmarks[4, 1] > max(image_left_eye[1], image_right_eye[1]) + 15  # nose below the eyes


def test_same_face_under_transformations_scores_above_the_operating_point(face_embedder):
    image = astronaut()
    reference = face_embedder.encode(image)
    assert reference.shape == (1, 128) and reference.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(reference, axis=1), 1.0, atol=1e-5)
    variants = {
        "exif-rotated jpeg": rotated_with_exif(image),
        "mirrored": image[:, ::-1].copy(),
        "grayscale": encode(np.asarray(Image.fromarray(image).convert("L"))),
        "half size": np.asarray(Image.fromarray(image).resize((384, 384))),
        "16-bit png": encode(np.asarray(Image.fromarray(image).convert("L")).astype(np.uint16) * 257),
    }
    threshold = face_embedder.config["operating_point"]["threshold"]
    for name, variant in variants.items():
        score = float(face_embedder.encode(variant)[0] @ reference[0])
        assert score > threshold, (name, score)


def test_several_faces_largest_first_and_no_face(face_embedder):
    found = face_embedder.embed(two_faces(astronaut()), all_faces=True)
    assert len(found.faces) == 2 and found.embeddings.shape == (2, 128)
    assert found.faces[0].area > 3 * found.faces[1].area and found.faces[0].box[0] < 512 <= found.faces[1].box[0]
    assert float(found.embeddings[0] @ found.embeddings[1]) > face_embedder.config["operating_point"]["threshold"]
    assert len(face_embedder.embed(two_faces(astronaut())).faces) == 1
    empty = face_embedder.embed(no_face(astronaut()), all_faces=True)
    assert empty.faces == [] and empty.embeddings.shape == (0, 128)
    with pytest.raises(NoFaceError, match="no face found"):
        face_embedder.encode([astronaut(), no_face(astronaut())])


def test_fingerprint_is_the_hash_of_the_landmark_and_descriptor_models(face_embedder):
    import hashlib

    digest = hashlib.sha256(b"dlib_face_resnet_v1")
    for name in ("shape_predictor_5_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat"):
        digest.update(model_file(name).read_bytes())
    assert face_embedder.fingerprint() == digest.hexdigest()


class _PixelEmbedder:
    """Whole-crop pixels as the embedding: equal embeddings mean equal aligned crops."""

    embedding_dim = 112 * 96

    def __init__(self) -> None:
        self.config = {"name": "pixels", "embedding_dim": self.embedding_dim,
                       "preprocessing": {"image_size": [112, 96]}}
        self.seen_sizes = []

    def encode(self, images) -> np.ndarray:
        self.seen_sizes += [image.size for image in images]
        return np.stack([np.asarray(image.convert("L"), dtype=np.float32).reshape(-1) - 128.0 for image in images])


def test_aligned_face_embedder_normalises_pose_and_scale(face_embedder):
    pixels = _PixelEmbedder()
    aligned = AlignedFaceEmbedder(pixels, detector=face_embedder.detector)
    image = astronaut()
    moved = np.asarray(Image.fromarray(image).rotate(12, resample=Image.Resampling.BILINEAR)
                       .resize((400, 400)))
    first, second = aligned.encode(image)[0], aligned.encode(moved)[0]
    assert pixels.seen_sizes == [(96, 112), (96, 112)]
    # The same face after rotation and scaling gives nearly the same aligned crop...
    assert float(first @ second) > 0.9
    # ...while the unaligned pictures differ a lot.
    raw = [np.asarray(Image.fromarray(x).convert("L").resize((96, 112)), dtype=np.float32).reshape(-1) - 128
           for x in (image, moved)]
    assert float(raw[0] @ raw[1] / np.linalg.norm(raw[0]) / np.linalg.norm(raw[1])) < float(first @ second) - 0.1


def test_mmod_detector_agrees_with_hog(face_embedder):
    from deepmetric.faces import FaceDetector

    crop = np.ascontiguousarray(astronaut()[30:230, 120:320])  # small input: the CNN is slow on CPU
    [cnn] = FaceDetector(detector="mmod", upsample=0).detect(crop)
    [hog] = face_embedder.detector.detect(crop)
    ax0, ay0, ax1, ay1 = cnn.box
    bx0, by0, bx1, by1 = hog.box
    intersection = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
    assert intersection / (cnn.area + hog.area - intersection) > 0.7
    assert np.abs(cnn.landmarks - hog.landmarks).max() < 6  # same 5-point predictor, similar boxes
    with pytest.raises(ValueError, match="detector"):
        FaceDetector(detector="haar")


@pytest.mark.parametrize("args, error, message", [
    ({"detector": "haar"}, ValueError, r"detector must be one of \['hog', 'mmod'\], got 'haar'"),
    ({"detector": None}, TypeError, "detector must be one of .*got NoneType: None"),
    ({"upsample": 4}, ValueError, r"upsample must be an integer in \[0, 3\], got 4"),
    ({"upsample": True}, TypeError, "upsample must be an integer .*got bool: True"),
    ({"min_score": float("inf")}, ValueError, "min_score must be a finite number, got inf"),
    ({"min_score": "0.3"}, TypeError, "min_score must be a finite number, got str: '0.3'"),
    ({"num_jitters": 101}, ValueError, r"num_jitters must be an integer in \[0, 100\], got 101"),
    ({"num_jitters": 1.0}, TypeError, "num_jitters must be an integer .*got float: 1.0"),
])
def test_face_pipeline_arguments_are_checked_before_dlib_loads(args, error, message):
    # The checks run first, so they hold (and this test runs) without dlib installed.
    from deepmetric.faces import DlibFaceEmbedder

    with pytest.raises(error, match=message):
        DlibFaceEmbedder(**args)


def test_face_detector_accepts_numpy_arguments(face_embedder):
    from deepmetric.faces import FaceDetector

    detector = FaceDetector(upsample=np.int64(0), min_score=np.float32(0.5))
    assert (detector.upsample, detector.min_score) == (0, 0.5) and type(detector.upsample) is int
