"""The landmark pipeline as functions the CLI and the service call: build and store a landmark index (index and
distractor embeddings, optional whitening, the scales used), recognise queries into a GLDv2 submission, and score
solution files (GAP, mAP@100) or a revisited Oxford/Paris benchmark."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepmetric.io import atomic_directory, load_weights, read_json, recover_directory, save_weights, write_json
from deepmetric.landmarks.embedding import PCAWhitening, multiscale_encode
from deepmetric.landmarks.recognition import Recognition, Recognizer
from deepmetric.landmarks.rerank import DatabaseAugmentation, QueryExpansion, retrieve
from deepmetric.validation import check_positive_int

INDEX_KIND = "landmark-index"
_META = "landmarks.json"
_VECTORS = "vectors.safetensors"
_WHITENING = "whitening.safetensors"


@dataclass
class LandmarkIndex:
    """What recognition needs at query time: the index embeddings (already whitened when ``whitening`` is set)
    with their landmark ids and image ids, the distractor (known non-landmark) embeddings, and how queries must be
    embedded to match (``scales``, ``whitening``)."""

    embeddings: np.ndarray
    labels: np.ndarray
    image_ids: list[str]
    distractors: np.ndarray | None = None
    whitening: PCAWhitening | None = None
    scales: tuple[float, ...] = (1.0,)
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def embed(self, embedder: Any, images: Any, *, batch_size: int = 256, progress: bool = False) -> np.ndarray:
        """Embed queries the way the index was embedded (same scales, same whitening)."""
        vectors = multiscale_encode(embedder, images, scales=self.scales, batch_size=batch_size, progress=progress)
        return self.whitening.transform(vectors) if self.whitening is not None else vectors

    def recognizer(self, **options: Any) -> Recognizer:
        """A ``Recognizer`` over this index; ``suppression`` defaults to on when distractors are stored."""
        options.setdefault("suppression", self.distractors is not None and len(self.distractors) > 0)
        return Recognizer(self.embeddings, self.labels, distractor_embeddings=self.distractors, **options)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the folder atomically: vectors (safetensors), whitening (safetensors), ``landmarks.json``."""
        tensors = {"embeddings": torch.from_numpy(np.ascontiguousarray(self.embeddings, np.float32)),
                   "labels": torch.from_numpy(np.asarray(self.labels, np.int64))}
        if self.distractors is not None:
            tensors["distractors"] = torch.from_numpy(np.ascontiguousarray(self.distractors, np.float32))
        with atomic_directory(folder, kind=INDEX_KIND) as tmp:
            save_weights(tmp / _VECTORS, tensors, metadata={"format": "deepmetric-landmark-index"})
            if self.whitening is not None:
                self.whitening.save(tmp / _WHITENING)
            write_json(tmp / _META, {"image_ids": list(self.image_ids), "scales": list(self.scales),
                                     "model": self.model, "whitening": self.whitening is not None,
                                     "extra": self.extra})
        return Path(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike) -> LandmarkIndex:
        folder = recover_directory(folder)
        if not (folder / _META).is_file():
            raise FileNotFoundError(f"{folder} is not a landmark index (no {_META}); build one with "
                                    f"`deepmetric landmarks index`")
        meta = read_json(folder / _META)
        tensors = load_weights(folder / _VECTORS)
        embeddings, labels = tensors["embeddings"].numpy(), tensors["labels"].numpy()
        if len(meta["image_ids"]) != len(embeddings) or len(labels) != len(embeddings):
            raise ValueError(f"{folder}: {len(embeddings)} vectors but {len(labels)} labels and "
                             f"{len(meta['image_ids'])} image ids")
        whitening = PCAWhitening.load(folder / _WHITENING) if meta.get("whitening") else None
        distractors = tensors["distractors"].numpy() if "distractors" in tensors else None
        return cls(embeddings, labels, list(meta["image_ids"]), distractors, whitening,
                   tuple(float(s) for s in meta["scales"]), meta.get("model", ""), dict(meta.get("extra") or {}))


def build_landmark_index(embedder: Any, images: Any, labels: Sequence[int] | np.ndarray, image_ids: Sequence[str],
                         *, distractor_images: Any = None, scales: Sequence[float] = (1.0,), whiten: bool = False,
                         whitening_dim: int | None = None, whitening_shrinkage: float = 0.1, model: str = "",
                         batch_size: int = 256, progress: bool = False) -> LandmarkIndex:
    """Embed the index images (and distractors) at ``scales``; with ``whiten``, learn PCA whitening on the index
    embeddings and apply it to both."""
    labels = np.asarray(labels, np.int64)
    vectors = multiscale_encode(embedder, images, scales=scales, batch_size=batch_size, progress=progress)
    if len(vectors) != len(labels) or len(image_ids) != len(labels):
        raise ValueError(f"{len(vectors)} index images but {len(labels)} labels and {len(image_ids)} image ids")
    distractors = None
    if distractor_images is not None:
        distractors = multiscale_encode(embedder, distractor_images, scales=scales, batch_size=batch_size,
                                        progress=progress)
    whitening = None
    if whiten:
        whitening = PCAWhitening(dim=whitening_dim, shrinkage=whitening_shrinkage).fit(vectors)
        vectors = whitening.transform(vectors)
        distractors = whitening.transform(distractors) if distractors is not None else None
    return LandmarkIndex(vectors, labels, [str(i) for i in image_ids], distractors, whitening, tuple(scales), model)


def recognize(index: LandmarkIndex, query_embeddings: np.ndarray, **options: Any) -> Recognition:
    """Recognise already-embedded queries (see ``LandmarkIndex.embed``) with ``Recognizer`` options (k, voting,
    power, suppression, suppression_k, suppression_weight)."""
    return index.recognizer(**options).recognize(query_embeddings)


def evaluate_solutions(*, recognition_solution: str | os.PathLike | None = None,
                       recognition_submission: str | os.PathLike | None = None,
                       retrieval_solution: str | os.PathLike | None = None,
                       retrieval_submission: str | os.PathLike | None = None,
                       usages: Sequence[str] = ("Public", "Private"), k: int = 100) -> dict[str, float]:
    """Score GLDv2 submission files against solution files, as the challenges do: recognition GAP over the
    queries of ``usages``, retrieval mAP@``k``. Pass a solution with its submission (either pair or both)."""
    from deepmetric.data.landmarks import (
        read_recognition_solution,
        read_recognition_submission,
        read_retrieval_solution,
        read_retrieval_submission,
    )
    from deepmetric.eval.retrieval import gap_from_solution, map_at_k_from_predictions

    out: dict[str, float] = {}
    pairs = (("recognition", recognition_solution, recognition_submission),
             ("retrieval", retrieval_solution, retrieval_submission))
    for task, solution, submission in pairs:
        if (solution is None) != (submission is None):
            raise ValueError(f"the {task} solution and submission go together; got only the "
                             f"{'solution' if submission is None else 'submission'}")
    if recognition_solution is not None:
        truth = read_recognition_solution(recognition_solution).scored(usages)
        predictions = {key: value for key, value in read_recognition_submission(recognition_submission).items()
                       if key in truth}
        out["recognition/gap"] = gap_from_solution(predictions, truth)
    if retrieval_solution is not None:
        truth = read_retrieval_solution(retrieval_solution).scored(usages)
        rankings = {key: value for key, value in read_retrieval_submission(retrieval_submission).items()
                    if key in truth}
        out[f"retrieval/map@{check_positive_int('k', k)}"] = map_at_k_from_predictions(rankings, truth, k=k)
    if not out:
        raise ValueError("nothing to evaluate: give a recognition and/or a retrieval solution with its submission")
    return out


def evaluate_revisited(embedder: Any, ground_truth: str | os.PathLike, *, images: str | None = None,
                       scales: Sequence[float] = (1.0,), query_expansion: bool = False, dba: bool = False,
                       top_n: int = 2, alpha: float = 3.0, batch_size: int = 64,
                       progress: bool = False) -> dict[str, float]:
    """Revisited Oxford or Paris (Radenovic et al. 2018) with a model: queries cropped to their boxes, the
    database ranked (optionally after alpha-DBA and alpha-QE), scored Easy / Medium / Hard."""
    from deepmetric.data.landmarks import RevisitedOxfordParis
    from deepmetric.eval.retrieval import revisited_from_rankings
    from deepmetric.landmarks.embedding import RawImages

    queries = RevisitedOxfordParis(ground_truth=str(ground_truth), images=images, part="query")
    database = RevisitedOxfordParis(ground_truth=str(ground_truth), images=images, part="database")
    query_vectors = multiscale_encode(embedder, RawImages(queries), scales=scales, batch_size=batch_size,
                                      progress=progress)
    database_vectors = multiscale_encode(embedder, RawImages(database), scales=scales, batch_size=batch_size,
                                         progress=progress)
    stages = ([DatabaseAugmentation(top_n=top_n, alpha=alpha)] if dba else []) + \
        ([QueryExpansion(top_n=top_n, alpha=alpha)] if query_expansion else [])
    ranked = retrieve(query_vectors, database_vectors, k=len(database_vectors), stages=stages)
    return revisited_from_rankings(ranked.result.ids, queries.ground_truth.ground_truth)
