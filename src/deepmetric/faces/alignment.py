"""Face alignment: a least-squares similarity transform (rotation, uniform scale, translation) that maps
detected landmarks onto a canonical template, and the warp that produces the aligned crop.

The canonical template is the 5-point layout used by ArcFace-family models for 112 x 112 crops
(eyes, nose tip, mouth corners, in image coordinates of the crop); other sizes scale it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deepmetric.validation import check_embeddings

#: ArcFace 112 x 112 template: left eye, right eye, nose tip, left mouth corner, right mouth corner (x, y),
#: "left" meaning the left side of the image.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)
TEMPLATE_POINTS = ("left_eye", "right_eye", "nose_tip", "mouth_left", "mouth_right")


def face_template(size: Sequence[int] = (112, 112)) -> np.ndarray:
    """The 5-point template for an output crop of ``size = (height, width)``.

    The 112 x 112 template is scaled by ``height / 112`` and centred horizontally, so (112, 96) gives the
    classic SphereFace/CosFace crop (x shifted by -8) and (224, 224) doubles every coordinate.
    """
    height, width = _check_size(size)
    scale = height / 112.0
    template = ARCFACE_TEMPLATE_112 * scale
    template[:, 0] += (width - 112.0 * scale) / 2.0
    return template


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError) as error:
        raise ValueError(f"size must be (height, width), got {size!r}") from error
    if height < 16 or width < 16:
        raise ValueError(f"size must be at least (16, 16), got {size!r}")
    return height, width


def estimate_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity transform ``T`` minimising ``sum_i ||T [s_i; 1] - t_i||^2``.

    Closed form of Umeyama (1991), "Least-squares estimation of transformation parameters between two
    point patterns", without reflections: with centred points ``S, D`` and ``U diag(sigma) V^T = svd(D^T S / n)``,
    ``R = U diag(1, det(U V^T)) V^T``, ``c = trace(diag(sigma) diag(1, det)) / var(S)``, ``t = mean(D) - c R mean(S)``.

    Args:
        source: (N, 2) points, N >= 2, not all equal.
        target: (N, 2) points.
    """
    # Points are (N, 2) matrices, so the shared matrix check words the shape and NaN mistakes.
    source = check_embeddings("source", np.asarray(source, dtype=np.float64), dim=2)
    target = check_embeddings("target", np.asarray(target, dtype=np.float64), dim=2)
    if source.shape[0] < 2:
        raise ValueError(f"source must hold at least 2 points, got shape {source.shape}")
    if target.shape != source.shape:
        raise ValueError(f"target must have the shape of source {source.shape}, got {target.shape}")
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    source_variance = float(np.mean(np.sum(source_centred**2, axis=1)))
    if source_variance <= 1e-12:
        raise ValueError("source landmarks coincide; cannot estimate a similarity transform")
    covariance = target_centred.T @ source_centred / source.shape[0]
    u, sigma, vt = np.linalg.svd(covariance)
    signs = np.array([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rotation = u @ np.diag(signs) @ vt
    scale = float(np.sum(sigma * signs)) / source_variance
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


def warp_affine(image: np.ndarray, transform: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Warp ``image`` (H, W, C) uint8 with the 2 x 3 ``transform`` (source -> output pixel coordinates)
    into an output of ``size = (height, width)``, bilinear, black outside the source."""
    from PIL import Image

    height, width = _check_size(size)
    forward = np.vstack([np.asarray(transform, dtype=np.float64), [0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(forward)
    # PIL maps output -> input pixel centres with the inverse transform's first two rows.
    coefficients = tuple(inverse[:2].reshape(-1))
    warped = Image.fromarray(image).transform((width, height), Image.Transform.AFFINE, coefficients,
                                              resample=Image.Resampling.BILINEAR, fillcolor=0)
    return np.asarray(warped)


def align_face(image: np.ndarray, points: np.ndarray, *, size: Sequence[int] = (112, 112),
               point_names: Sequence[str] = TEMPLATE_POINTS) -> np.ndarray:
    """Crop ``image`` (H, W, 3) uint8 so that ``points`` (N, 2) land on the template points named by
    ``point_names`` (a subset of ``TEMPLATE_POINTS``, e.g. just the two eyes) at output ``size``."""
    unknown = [name for name in point_names if name not in TEMPLATE_POINTS]
    if unknown:
        raise ValueError(f"point_names contains unknown names {unknown}; known: {list(TEMPLATE_POINTS)}")
    template = face_template(size)[[TEMPLATE_POINTS.index(name) for name in point_names]]
    transform = estimate_similarity(np.asarray(points, dtype=np.float64), template)
    return warp_affine(image, transform, size)
