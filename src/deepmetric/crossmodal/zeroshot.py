"""Zero-shot recognition: classes given as text (names or descriptions, optionally inside prompt templates)
become averaged, normalised text embeddings; images are classified by their nearest class, and texts search
a gallery of image embeddings. The classifier is a versioned artifact bound to the model that made it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepmetric.crossmodal.texts import PLAIN_TEMPLATES, apply_templates
from deepmetric.index.topk import knn
from deepmetric.io import atomic_directory, load_weights, read_json, recover_directory, save_weights, write_json
from deepmetric.types import SearchResult
from deepmetric.validation import check_embeddings, check_positive_int

ARTIFACT_FORMAT = "deepmetric-zeroshot"
ARTIFACT_VERSION = 1
ARTIFACT_FILE = "zeroshot.json"
EMBEDDINGS_FILE = "class_embeddings.safetensors"


def class_embeddings(model: Any, descriptions: Sequence[Sequence[str]],
                     templates: Sequence[str] = PLAIN_TEMPLATES) -> np.ndarray:
    """(C, D) unit rows: per class, the mean of the normalised embeddings of every description inside every
    template, normalised again (CLIP's prompt ensembling, Radford et al. 2021)."""
    texts, owners = [], []
    for position, class_descriptions in enumerate(descriptions):
        if isinstance(class_descriptions, str) or not class_descriptions:
            raise ValueError(f"descriptions[{position}] must be a non-empty list of strings")
        for description in class_descriptions:
            filled = apply_templates(description, templates)
            texts.extend(filled)
            owners.extend([position] * len(filled))
    embeddings = model.encode_texts(texts)
    sums = np.zeros((len(descriptions), embeddings.shape[1]), np.float64)
    np.add.at(sums, np.asarray(owners), embeddings.astype(np.float64))
    sums /= np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)
    return sums.astype(np.float32)


@dataclass
class ZeroShotClassifier:
    """Class names, the descriptions and templates that made each class's text embedding, the (C, D)
    embeddings, and the fingerprint of the two-tower model that computed them.

    Build with ``ZeroShotClassifier.build(model, names)``; ``save``/``load`` it as a folder.
    """

    names: list[str]
    descriptions: list[list[str]]
    templates: list[str]
    embeddings: np.ndarray
    model_fingerprint: str
    model_info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, model: Any, names: Sequence[str], descriptions: Sequence[Sequence[str]] | None = None,
              templates: Sequence[str] = PLAIN_TEMPLATES) -> ZeroShotClassifier:
        """Classes ``names`` described by ``descriptions`` (default: each name itself) in ``templates``."""
        names = [str(n) for n in names]
        if not names or len(set(names)) != len(names):
            raise ValueError("names must be a non-empty list of distinct class names")
        described = [[n] for n in names] if descriptions is None else [list(d) for d in descriptions]
        if len(described) != len(names):
            raise ValueError(f"{len(described)} description lists for {len(names)} classes")
        embeddings = class_embeddings(model, described, templates)
        info = {"embedding_dim": int(embeddings.shape[1]), "text": dict(model.config.get("text", {}))}
        info["text"].pop("vocabulary", None)
        return cls(names, described, list(templates), embeddings, model.fingerprint(), info)

    def check_model(self, model: Any) -> None:
        """Refuse a model other than the one that computed the class embeddings."""
        fingerprint = model.fingerprint()
        if fingerprint != self.model_fingerprint:
            raise ValueError(f"this zero-shot classifier was built with model {self.model_fingerprint[:12]}, not "
                             f"with the given model {fingerprint[:12]}: rebuild it with that model "
                             f"(`deepmetric zeroshot build`)")

    def predict(self, image_embeddings: Any, *, k: int = 5) -> SearchResult:
        """The ``k`` most similar classes of each image embedding (cosine; ids index ``names``)."""
        queries = check_embeddings("image_embeddings", image_embeddings, dim=self.embeddings.shape[1])
        k = min(check_positive_int("k", k), len(self.names))
        return knn(np.asarray(queries, np.float32), self.embeddings, k=k, metric="cosine")

    def classify(self, model: Any, images: Any, *, k: int = 5) -> list[list[tuple[str, float]]]:
        """Top-``k`` (class name, cosine similarity) of each image (paths, arrays, a data set)."""
        self.check_model(model)
        result = self.predict(model.encode_images(images), k=k)
        return [[(self.names[i], float(s)) for i, s in zip(ids, scores) if i >= 0]
                for ids, scores in zip(result.ids, result.scores)]

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``zeroshot.json`` (format, version, names, descriptions, templates, model stamp) and the class
        embeddings as safetensors, atomically."""
        folder = Path(folder)
        with atomic_directory(folder, kind="zeroshot") as tmp:
            save_weights(tmp / EMBEDDINGS_FILE, {"embeddings": torch.from_numpy(self.embeddings)},
                         metadata={"format": ARTIFACT_FORMAT})
            write_json(tmp / ARTIFACT_FILE, {
                "format": ARTIFACT_FORMAT, "format_version": ARTIFACT_VERSION, "names": self.names,
                "descriptions": self.descriptions, "templates": self.templates,
                "model_fingerprint": self.model_fingerprint, "model_info": self.model_info})
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike, *, model: Any = None) -> ZeroShotClassifier:
        """Read a saved classifier; with ``model``, refuse it unless that model made it."""
        folder = recover_directory(folder)
        if not (folder / ARTIFACT_FILE).is_file():
            raise FileNotFoundError(f"no zero-shot classifier at {folder} (no {ARTIFACT_FILE})")
        meta = read_json(folder / ARTIFACT_FILE)
        if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
            raise ValueError(f"{folder / ARTIFACT_FILE} is not a zero-shot classifier")
        if meta.get("format_version") != ARTIFACT_VERSION:
            raise ValueError(f"{folder}: zero-shot format_version {meta.get('format_version')!r} is not supported "
                             f"(this deepmetric reads {ARTIFACT_VERSION})")
        embeddings = load_weights(folder / EMBEDDINGS_FILE)["embeddings"].numpy()
        if embeddings.shape[0] != len(meta["names"]):
            raise ValueError(f"{folder}: {embeddings.shape[0]} class embeddings for {len(meta['names'])} names")
        classifier = cls(list(meta["names"]), [list(d) for d in meta["descriptions"]], list(meta["templates"]),
                         embeddings, str(meta["model_fingerprint"]), dict(meta.get("model_info") or {}))
        if model is not None:
            classifier.check_model(model)
        return classifier


def search_images(model: Any, texts: Sequence[str], gallery_embeddings: Any, *, k: int = 10) -> SearchResult:
    """Text -> image search: the ``k`` gallery images (rows of ``gallery_embeddings``, from
    ``model.encode_images``) most similar to each text query, by the exact top-k engine."""
    gallery = check_embeddings("gallery_embeddings", gallery_embeddings, dim=model.embedding_dim)
    queries = model.encode_texts(list(texts))
    return knn(queries, np.asarray(gallery, np.float32), k=min(check_positive_int("k", k), len(gallery)),
               metric="cosine")
