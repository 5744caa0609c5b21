"""Parity between a PyTorch ``Embedder`` and its exported graph, measured on real inputs: per-sample cosine at several
batch sizes, and what retrieval sees downstream (top-10 neighbour overlap and MAP@R on the Glyphs test set).

The inputs are Glyphs test images (unseen characters in unseen typefaces, ``deepmetric.data.glyphs``) and, when the
face extra (dlib, scikit-image) is installed and the model takes colour images, aligned crops of the sample face
photo. Both runtimes get the same decoded images through the same ``encode``, so only the graphs differ.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepmetric.validation import check_in_range, check_non_negative_float, check_positive_int

#: Batch sizes parity is checked at: one image, an odd size, a full batch.
PARITY_BATCH_SIZES = (1, 7, 32)
#: How many neighbours the downstream overlap compares.
OVERLAP_K = 10
#: Glyph renders are made at this size (the render cache holds it); each model resizes them to its own input.
GLYPH_SIZE = 32


class ParityError(ValueError):
    """The exported graph does not reproduce the PyTorch model within the tolerances."""


@dataclasses.dataclass(frozen=True)
class ParityTolerances:
    """What an export must meet: every sample's cosine to the PyTorch embedding, the mean share of common top-10
    neighbours, and the largest MAP@R difference (absolute)."""

    min_cosine: float = 0.99999
    min_overlap: float = 0.999
    max_map_difference: float = 1e-4

    def __post_init__(self) -> None:
        check_in_range("min_cosine", self.min_cosine, -1.0, 1.0)
        check_in_range("min_overlap", self.min_overlap, 0.0, 1.0)
        check_non_negative_float("max_map_difference", self.max_map_difference)


@dataclasses.dataclass
class ParityReport:
    """What was measured. ``cosine`` maps each batch size to the lowest per-sample cosine seen at it."""

    cosine: dict[int, float]
    overlap: float
    map_at_r_torch: float
    map_at_r_exported: float
    num_images: int
    num_classes: int
    sources: list[str]
    tolerances: ParityTolerances
    failures: list[str] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def min_cosine(self) -> float:
        return min(self.cosine.values())

    def to_dict(self) -> dict[str, Any]:
        return {"cosine_min_by_batch_size": {str(k): v for k, v in self.cosine.items()},
                "top10_overlap": self.overlap, "map_at_r_torch": self.map_at_r_torch,
                "map_at_r_exported": self.map_at_r_exported,
                "map_at_r_difference": abs(self.map_at_r_exported - self.map_at_r_torch),
                "downstream_images": self.num_images, "downstream_classes": self.num_classes,
                "sources": list(self.sources), "tolerances": dataclasses.asdict(self.tolerances),
                "passed": self.passed, "failures": list(self.failures)}


def glyph_test_set(max_images: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Whole classes of the Glyphs test split, in a seeded order, until at least ``max_images`` renders (or all):
    uint8 images (N, 32, 32) and their labels."""
    from deepmetric.data.glyphs import Glyphs

    max_images = check_positive_int("max_images", max_images)
    test = Glyphs(split="test", image_size=GLYPH_SIZE, progress=False)
    labels = np.asarray(test.labels)
    order = np.random.default_rng(seed).permutation(test.num_classes)
    counts = np.bincount(labels, minlength=test.num_classes)[order]
    classes = order[: int(np.searchsorted(np.cumsum(counts), max_images)) + 1]
    keep = np.flatnonzero(np.isin(labels, classes))
    return np.asarray(test.images)[keep], labels[keep]


def as_vectors(images: np.ndarray, input_dim: int, *, seed: int = 0) -> np.ndarray:
    """Real inputs for a vector model of any width: the images flattened and projected by a fixed Gaussian matrix
    to ``input_dim`` features, each standardised (a random projection keeps the classes' geometry)."""
    flat = images.reshape(len(images), -1).astype(np.float32) / 255.0
    projection = np.random.default_rng(seed).standard_normal((flat.shape[1], input_dim)).astype(np.float32)
    vectors = flat @ projection / np.sqrt(flat.shape[1])
    return ((vectors - vectors.mean(0)) / (vectors.std(0) + 1e-6)).astype(np.float32)


def face_extra_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("dlib", "skimage"))


@functools.lru_cache(maxsize=4)
def aligned_faces(image_size: tuple[int, int], *, count: int = 12) -> list[np.ndarray]:
    """Aligned face crops (RGB uint8 at ``image_size``) from the sample photo in several poses, scales and
    exposures, aligned onto the ArcFace template as the face pipeline does. Needs the face extra."""
    from deepmetric.faces.alignment import align_face
    from deepmetric.faces.detection import FaceDetector
    from deepmetric.faces.samples import astronaut, moved

    detector = FaceDetector()
    photo = astronaut()
    crops = []
    for index in range(count):
        degrees = -12.0 + 24.0 * index / max(1, count - 1)
        variant = moved(photo, degrees=degrees, size=(360, 420, 480)[index % 3])
        variant = np.clip(variant.astype(np.float32) * (0.8 + 0.05 * (index % 5)), 0, 255).astype(np.uint8)
        found = detector.detect(variant)
        if found:
            crops.append(align_face(variant, found[0].eye_centres, size=tuple(image_size),
                                    point_names=("left_eye", "right_eye")))
    return crops


def _cosines(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    reference = reference.astype(np.float64)
    candidate = candidate.astype(np.float64)
    norms = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    return (reference * candidate).sum(1) / np.maximum(norms, 1e-30)


def neighbour_overlap(reference: np.ndarray, candidate: np.ndarray, *, k: int = OVERLAP_K) -> float:
    """Mean share of each query's exact top-``k`` neighbours (itself left out) that two embeddings of the same
    items have in common, from the exact engine ``deepmetric.index.topk``."""
    from deepmetric.index.topk import knn

    k = min(check_positive_int("k", k), len(reference) - 1)
    ids_a = knn(reference, k=k).ids
    ids_b = knn(candidate, k=k).ids
    common = [len(np.intersect1d(a, b)) for a, b in zip(ids_a, ids_b)]
    return float(np.mean(common) / k)


def measure_parity(model: Any, exported: Any, *, max_images: int = 1000, faces: bool | None = None,
                   tolerances: ParityTolerances | None = None, batch_sizes: Sequence[int] = PARITY_BATCH_SIZES,
                   progress: bool = False) -> ParityReport:
    """Compare ``model`` (the PyTorch ``Embedder``) and ``exported`` (anything with the same ``encode``, such as an
    ``OnnxEmbedder``) on real inputs; the report's ``failures`` say what missed ``tolerances``.

    Args:
        max_images: size of the downstream Glyphs test subset (whole classes, at least this many images).
        faces: add aligned face crops to the batch checks (default: when the face extra is installed and the model
            takes colour images).
        batch_sizes: the batch sizes the per-sample cosine is checked at.
    """
    from deepmetric.eval.retrieval import map_at_r

    tolerances = tolerances or ParityTolerances()
    images, labels = glyph_test_set(max_images)
    sources = [f"glyphs test split ({len(images)} renders, {len(np.unique(labels))} unseen classes)"]
    vector = model.input_kind == "vector"
    if vector:
        inputs: Any = as_vectors(images, model.input_dim)
        probes: list[Any] = list(inputs)
    else:
        inputs = images
        probes = list(images)
        if faces is None:
            faces = model.preprocessing["channels"] == 3 and face_extra_installed()
        if faces:
            crops = aligned_faces(tuple(model.preprocessing["image_size"]))
            sources.append(f"{len(crops)} aligned face crops of the sample photo")
            # Faces and glyphs alternate, so every batch size sees both.
            mixed = [item for pair in zip(crops, probes) for item in pair]
            probes = mixed + probes[len(crops):]
    cosine: dict[int, float] = {}
    failures: list[str] = []
    for batch_size in batch_sizes:
        batch_size = check_positive_int("batch size", batch_size)
        count = max(2 * batch_size, 16)
        sample = probes[:count]
        if vector:
            sample = np.stack(sample)
        reference = model.encode(sample, batch_size=batch_size, device="cpu")
        candidate = exported.encode(sample, batch_size=batch_size)
        if candidate.shape != reference.shape or not np.isfinite(candidate).all():
            failures.append(f"batch size {batch_size}: exported output {candidate.shape} (finite: "
                            f"{bool(np.isfinite(candidate).all())}), PyTorch {reference.shape}")
            cosine[batch_size] = float("nan")
            continue
        cosine[batch_size] = float(_cosines(reference, candidate).min())
        if not cosine[batch_size] >= tolerances.min_cosine:
            failures.append(f"batch size {batch_size}: lowest per-sample cosine to PyTorch {cosine[batch_size]:.7f} "
                            f"< {tolerances.min_cosine}")
    reference = model.encode(inputs, batch_size=32, device="cpu", progress=progress)
    candidate = exported.encode(inputs, batch_size=32, progress=progress)
    if candidate.shape != reference.shape or not np.isfinite(candidate).all():
        failures.append(f"downstream: exported output {candidate.shape}, PyTorch {reference.shape}")
        overlap, map_torch, map_exported = float("nan"), float("nan"), float("nan")
    else:
        overlap = neighbour_overlap(reference, candidate)
        map_torch = float(map_at_r(reference, labels))
        map_exported = float(map_at_r(candidate, labels))
        if not overlap >= tolerances.min_overlap:
            failures.append(f"top-{OVERLAP_K} neighbour overlap {overlap:.5f} < {tolerances.min_overlap}")
        if not abs(map_exported - map_torch) <= tolerances.max_map_difference:
            failures.append(f"MAP@R {map_exported:.6f} exported vs {map_torch:.6f} PyTorch: difference "
                            f"{abs(map_exported - map_torch):.2e} > {tolerances.max_map_difference}")
    return ParityReport(cosine=cosine, overlap=overlap, map_at_r_torch=map_torch, map_at_r_exported=map_exported,
                        num_images=len(images), num_classes=int(len(np.unique(labels))), sources=sources,
                        tolerances=tolerances, failures=failures)
