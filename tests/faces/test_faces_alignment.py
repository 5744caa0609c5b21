from __future__ import annotations

import numpy as np
import pytest

from deepmetric.faces.alignment import ARCFACE_TEMPLATE_112, align_face, estimate_similarity, face_template, warp_affine


def test_estimate_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 200, size=(5, 2))
    angle, scale, shift = 0.4, 0.7, np.array([12.0, -5.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    target = scale * source @ rotation.T + shift
    transform = estimate_similarity(source, target)
    np.testing.assert_allclose(transform[:, :2], scale * rotation, atol=1e-10)
    np.testing.assert_allclose(transform[:, 2], shift, atol=1e-8)


def test_estimate_similarity_matches_scikit_image_least_squares():
    transform_module = pytest.importorskip("skimage.transform")
    rng = np.random.default_rng(1)
    for _ in range(5):
        source = rng.uniform(0, 300, size=(5, 2))
        target = ARCFACE_TEMPLATE_112 + rng.normal(scale=3.0, size=(5, 2))
        if hasattr(transform_module.SimilarityTransform, "from_estimate"):
            reference = transform_module.SimilarityTransform.from_estimate(source, target)
        else:
            reference = transform_module.SimilarityTransform()
            reference.estimate(source, target)
        np.testing.assert_allclose(estimate_similarity(source, target), reference.params[:2], atol=1e-8)


def test_templates_for_other_sizes():
    np.testing.assert_allclose(face_template((112, 112)), ARCFACE_TEMPLATE_112)
    shifted = ARCFACE_TEMPLATE_112.copy()
    shifted[:, 0] -= 8.0
    np.testing.assert_allclose(face_template((112, 96)), shifted)
    np.testing.assert_allclose(face_template((224, 224)), 2 * ARCFACE_TEMPLATE_112)
    with pytest.raises(ValueError, match="size"):
        face_template((8, 8))


def test_bad_landmarks_are_refused():
    with pytest.raises(ValueError, match="coincide"):
        estimate_similarity(np.ones((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"source must hold at least 2 points, got shape \(1, 2\)"):
        estimate_similarity(np.ones((1, 2)), np.zeros((1, 2)))
    with pytest.raises(ValueError, match=r"source must be a matrix of shape \(N, 2\), got shape \(3, 3\)"):
        estimate_similarity(np.ones((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"target must have the shape of source \(3, 2\), got \(4, 2\)"):
        estimate_similarity(np.eye(3, 2), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="target must hold finite values, got 1 NaN"):
        estimate_similarity(np.eye(3, 2), [[0.0, 0.0], [1.0, np.nan], [2.0, 2.0]])
    with pytest.raises(ValueError, match="unknown names"):
        align_face(np.zeros((50, 50, 3), np.uint8), np.ones((1, 2)), point_names=("chin",))


@pytest.mark.parametrize("size", [(112, 112), (112, 96), (160, 160)])
def test_aligned_crop_puts_the_landmarks_on_the_template(size):
    """Bright dots drawn at landmark positions of a rotated, scaled face must land on the template points."""
    angle, scale = 0.3, 2.5
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = scale * ARCFACE_TEMPLATE_112 @ rotation.T + np.array([140.0, 60.0])
    image = np.zeros((480, 520, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:480, 0:520]
    for x, y in landmarks:
        image[(xx - x) ** 2 + (yy - y) ** 2 <= 25] = 255
    crop = align_face(image, landmarks, size=size)
    assert crop.shape == (*size, 3)
    template = face_template(size)
    for x, y in template:
        window = crop[int(y) - 6:int(y) + 7, int(x) - 6:int(x) + 7, 0].astype(float)
        wy, wx = np.mgrid[int(y) - 6:int(y) + 7, int(x) - 6:int(x) + 7]
        centre = np.array([(window * wx).sum(), (window * wy).sum()]) / window.sum()
        assert np.linalg.norm(centre - (x, y)) < 1.0, (centre, (x, y))


def test_warp_identity_keeps_pixels():
    image = np.random.default_rng(3).integers(0, 256, size=(40, 30, 3), dtype=np.uint8)
    out = warp_affine(image, np.array([[1.0, 0, 0], [0, 1.0, 0]]), (40, 30))
    assert np.array_equal(out, image)
