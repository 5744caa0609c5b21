"""A gallery of identities: enrol people from images or embeddings, then verify (1:1) and identify (1:N)
with decisions from the model's calibrated threshold, and the evidence behind each decision.

Layout on disk: ``<folder>/gallery.sqlite3`` (the truth) and ``<folder>/index/`` (a rebuildable cache).
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepmetric.data.images import load_image
from deepmetric.faces.detection import check_face_choice
from deepmetric.gallery.cache import IdentityIndex
from deepmetric.gallery.model import describe, threshold_from_config
from deepmetric.gallery.store import (
    DuplicateIdentityError,
    GalleryError,
    GalleryStore,
    IdentityRecord,
    TemplateInput,
    UnknownIdentityError,
    check_identity_id,
    refused,
    unit_vectors,
)
from deepmetric.models.protocol import EmbeddingModel, model_fingerprint
from deepmetric.validation import check_in_range, check_positive_int

DATABASE_FILE = "gallery.sqlite3"
INDEX_FOLDER = "index"
EXPORT_FORMAT = "deepmetric-gallery"
EXPORT_VERSION = 1


def _is_export(folder: Path) -> bool:
    """An export written before folders were marked: its ``identities.json`` names the export format."""
    from deepmetric.io import read_json

    try:
        return read_json(folder / "identities.json").get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


class GalleryModelMismatch(GalleryError):
    """The gallery was embedded by another model than the one it is opened with."""


@dataclass(frozen=True)
class TemplateMatch:
    template_id: int
    score: float


@dataclass(frozen=True)
class Match:
    """One identity compared with a probe: ``score`` is the cosine similarity to the identity's aggregated
    template (normalised mean of its template vectors); ``templates`` score each enrolled template."""

    identity_id: str
    name: str
    score: float
    templates: list[TemplateMatch]

    def to_dict(self) -> dict[str, Any]:
        return {"identity_id": self.identity_id, "name": self.name, "score": round(self.score, 6),
                "templates": [{"template_id": t.template_id, "score": round(t.score, 6)} for t in self.templates]}


@dataclass(frozen=True)
class Decision:
    """Answer of ``verify`` / ``identify``.

    ``accepted``: ``score >= threshold``. ``identity_id``: the claimed identity (verify) or the best match
    when accepted, None = unknown person (identify). ``margin``: score minus the best score of any *other*
    identity (None when the gallery holds no other), i.e. how clearly this identity beats the runner-up.
    ``matches``: top identities, best first (identify), or the claimed identity alone (verify).
    """

    accepted: bool
    identity_id: str | None
    score: float | None
    threshold: float
    margin: float | None
    matches: list[Match] = field(default_factory=list)
    best_other: Match | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "identity_id": self.identity_id,
                "score": None if self.score is None else round(self.score, 6), "threshold": self.threshold,
                "margin": None if self.margin is None else round(self.margin, 6),
                "matches": [m.to_dict() for m in self.matches],
                "best_other": None if self.best_other is None else self.best_other.to_dict()}


def _image_bytes(source: Any) -> tuple[bytes | None, str | None]:
    """The original encoded bytes and/or the path of an image source, kept so ``reembed`` can redo it."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), None
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        return path.read_bytes() if path.is_file() else None, str(path.resolve())
    from PIL import Image

    if isinstance(source, (np.ndarray, Image.Image)):
        # The upright pixels, as the model saw them: a PNG keeps no EXIF orientation to turn them by.
        buffer = io.BytesIO()
        Image.fromarray(load_image(source)).save(buffer, format="PNG")
        return buffer.getvalue(), None
    return None, None


def encode_image(model: EmbeddingModel, image: Any, embedding_dim: int) -> np.ndarray:
    """One unit embedding (D,) of an image (path, bytes, stream, PIL image or array) with ``model``, which
    decodes it with ``deepmetric.data.images.load_image`` (face models with their own pixel limit)."""
    return unit_vectors(np.asarray(model.encode([image]))[0], embedding_dim, name="model output")[0]


def _check_model(model: Any) -> None:
    if model is not None and not isinstance(model, EmbeddingModel):
        raise TypeError(f"model must be an EmbeddingModel (embedding_dim, config, encode) such as an Embedder or "
                        f"a face model, or None for embeddings only; got {type(model).__name__}")


class Gallery:
    """Identities with templates, kept durable in SQLite and searchable through a cached index.

    Create with ``Gallery.create(folder, model=...)`` and open with ``Gallery.open(folder, model=...)``; the
    model is whatever embeds images (``deepmetric.models.Embedder``, ``DlibFaceEmbedder``, ...). A gallery
    opened without a model accepts embeddings only.

    Example:
        >>> gallery = Gallery.create("people", embedding_dim=3, model_stamp="demo")
        >>> gallery.enroll("alice", embeddings=[[1.0, 0.0, 0.0]]).num_templates
        1
        >>> gallery.identify([0.9, 0.1, 0.0], k=1, threshold=0.5).identity_id
        'alice'
    """

    def __init__(self, folder: str | Path, store: GalleryStore, *, model: Any = None,
                 threshold: float | None = None, exact_limit: int = 20_000) -> None:
        self.folder = Path(folder)
        self.store = store
        self.model = model
        self.threshold = None if threshold is None else self._check_threshold(threshold)
        self.index = IdentityIndex(store, cache_dir=self.folder / INDEX_FOLDER, exact_limit=exact_limit)

    # -- opening ------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | Path, *, model: Any = None, embedding_dim: int | None = None,
               model_stamp: str | None = None, model_config: dict[str, Any] | None = None,
               store_images: bool = True, threshold: float | None = None, exact_limit: int = 20_000) -> Gallery:
        """Make a new empty gallery in ``folder`` stamped with ``model`` (or with an explicit
        ``embedding_dim`` + ``model_stamp`` for embeddings made elsewhere). ``model_config`` entries are
        stored with (and over) the model's own config."""
        folder = Path(folder)
        _check_model(model)
        if model is not None:
            embedding_dim = int(model.embedding_dim)
            model_stamp = model_fingerprint(model)
            model_config = {**dict(getattr(model, "config", {}) or {}), **(model_config or {})}
        if (folder / DATABASE_FILE).exists():
            raise GalleryError(f"a gallery already exists in {str(folder)!r}")
        store = GalleryStore(folder / DATABASE_FILE, create=True, embedding_dim=embedding_dim,
                             model_stamp=model_stamp, model_config=model_config, store_images=store_images)
        return cls(folder, store, model=model, threshold=threshold, exact_limit=exact_limit)

    @classmethod
    def open(cls, folder: str | Path, *, model: Any = None, threshold: float | None = None,
             exact_limit: int = 20_000) -> Gallery:
        """Open an existing gallery. With ``model``, refuses (``GalleryModelMismatch``) if the gallery was
        embedded by a different model."""
        folder = Path(folder)
        _check_model(model)
        store = GalleryStore(folder / DATABASE_FILE)
        if model is not None:
            stamp = model_fingerprint(model)
            if stamp != store.model_stamp:
                store.close()
                raise GalleryModelMismatch(
                    f"gallery {str(folder)!r} was embedded with {describe(store.model_config, store.embedding_dim)} "
                    f"(stamp {store.model_stamp[:12]}), not with the given "
                    f"{describe(getattr(model, 'config', None), getattr(model, 'embedding_dim', None))} (stamp "
                    f"{stamp[:12]}); their embeddings are not comparable. Open it with its own model, or re-embed "
                    f"the stored images: deepmetric gallery reembed {folder} --model NEW_MODEL")
        return cls(folder, store, model=model, threshold=threshold, exact_limit=exact_limit)

    def close(self) -> None:
        self.index.save()
        self.store.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- embedding ----------------------------------------------------------------------------------------
    @property
    def embedding_dim(self) -> int:
        return self.store.embedding_dim

    def _require_model(self) -> Any:
        if self.model is None:
            raise GalleryError("this gallery was opened without a model, so it takes embeddings only; "
                               "open it with model=... to use images")
        return self.model

    def embed_image(self, image: Any) -> np.ndarray:
        """One unit embedding (D,) for an image (path, bytes, PIL image, array) with the gallery's model."""
        return encode_image(self._require_model(), image, self.embedding_dim)

    def _enrol_face(self, image: Any, face: str | int | None) -> tuple[np.ndarray, int | None]:
        """The vector of one enrolment photo and how many faces it holds (None for a whole-image model).
        A face model refuses a group photo unless ``face`` says which face (see ``FaceEmbedder.embed_one``)."""
        model = self._require_model()
        if callable(getattr(model, "embed_one", None)):
            vector, faces_seen = model.embed_one(image, face=face)
            return unit_vectors(vector, self.embedding_dim, name="model output")[0], faces_seen
        if face is not None:
            raise GalleryError(f"face={face!r} picks a face in a group photo, but this gallery's model embeds "
                               f"whole images ({type(model).__name__}); leave face out")
        return self.embed_image(image), None

    def _templates(self, images: Sequence[Any] | None, embeddings: Any,
                   face: str | int | None = None) -> tuple[list[TemplateInput], list[int | None] | None]:
        """Templates to store, and the faces seen in each image (None for embeddings)."""
        if (images is None) == (embeddings is None):
            raise GalleryError("give exactly one of images= or embeddings=")
        with refused():
            face = check_face_choice(face)
        if embeddings is not None:
            if face is not None:
                raise GalleryError("face= picks a face in a photo; it does not apply to embeddings=")
            return [TemplateInput(vector=v) for v in unit_vectors(embeddings, self.embedding_dim)], None
        if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence) or not images:
            raise GalleryError(f"images must be a non-empty list of images, got {type(images).__name__}")
        templates, faces_seen = [], []
        for position, image in enumerate(images):
            try:
                vector, seen = self._enrol_face(image, face)
            except ValueError as error:  # ImageError, NoFaceError, MultipleFacesError: say which image
                where = f"image {position + 1} of {len(images)}" if len(images) > 1 else "the image"
                if isinstance(image, (str, os.PathLike)):
                    where += f" ({Path(image).name})"
                raise type(error)(f"{where}: {error}") from error
            data, path = _image_bytes(image)
            templates.append(TemplateInput(vector=vector, source="image", image_path=path,
                                           image=data if self.store.store_images else None))
            faces_seen.append(seen)
        return templates, faces_seen

    def _probe(self, probe: Any) -> np.ndarray:
        """A probe is an embedding (1-D numbers of length D) or an image."""
        if isinstance(probe, (list, tuple)) or (isinstance(probe, np.ndarray) and probe.ndim == 1):
            return unit_vectors(probe, self.embedding_dim, name="probe embedding")[0]
        if hasattr(probe, "detach") and getattr(probe, "ndim", 0) == 1:
            return unit_vectors(probe.detach().cpu().numpy(), self.embedding_dim, name="probe embedding")[0]
        return self.embed_image(probe)

    # -- writes ------------------------------------------------------------------------------------------
    def enroll(self, identity_id: str, *, images: Sequence[Any] | None = None, embeddings: Any = None,
               name: str | None = None, metadata: dict[str, Any] | None = None,
               face: str | int | None = None) -> IdentityRecord:
        """Create ``identity_id`` from one or more images or embeddings (one template each). Returns after
        the write is durable; a duplicate id is refused.

        With a face model, a photo holding several faces is refused unless ``face`` says which one:
        ``"largest"`` or a face index, faces ordered largest first. The record's ``faces_seen`` gives the
        number of faces found in each photo (None for a whole-image model)."""
        check_identity_id(identity_id)
        if self.store.contains(identity_id):  # fail before spending time on embedding images
            raise DuplicateIdentityError(f"identity {identity_id!r} already exists")
        templates, faces_seen = self._templates(images, embeddings, face)
        self.store.add_identity(identity_id, name=name, metadata=metadata, templates=templates)
        self.index.sync()
        return dataclasses.replace(self.store.get(identity_id), faces_seen=faces_seen)

    def add(self, identity_id: str, *, images: Sequence[Any] | None = None, embeddings: Any = None,
            face: str | int | None = None) -> list[int]:
        """Add templates to an existing identity; returns their template ids. ``face`` as in ``enroll``."""
        return self._add(identity_id, images, embeddings, face)[0]

    def extend(self, identity_id: str, *, images: Sequence[Any] | None = None, embeddings: Any = None,
               face: str | int | None = None) -> IdentityRecord:
        """``add``, answering the identity's record with ``faces_seen`` for the new photos, as ``enroll`` does."""
        faces_seen = self._add(identity_id, images, embeddings, face)[1]
        return dataclasses.replace(self.store.get(identity_id), faces_seen=faces_seen)

    def _add(self, identity_id: str, images: Sequence[Any] | None, embeddings: Any,
             face: str | int | None) -> tuple[list[int], list[int | None] | None]:
        if not self.store.contains(identity_id):
            raise UnknownIdentityError(f"unknown identity {identity_id!r}")
        templates, faces_seen = self._templates(images, embeddings, face)
        template_ids = self.store.add_templates(identity_id, templates)
        self.index.sync()
        return template_ids, faces_seen

    def rename(self, identity_id: str, name: str) -> IdentityRecord:
        self.store.update(identity_id, name=name)
        return self.store.get(identity_id)

    def update(self, identity_id: str, *, name: str | None = None,
               metadata: dict[str, Any] | None = None) -> IdentityRecord:
        self.store.update(identity_id, name=name, metadata=metadata)
        return self.store.get(identity_id)

    def remove(self, identity_id: str) -> None:
        self.store.remove(identity_id)
        self.index.sync()

    def remove_template(self, template_id: int) -> IdentityRecord:
        identity_id = self.store.remove_template(template_id)
        self.index.sync()
        return self.store.get(identity_id)

    # -- reads -------------------------------------------------------------------------------------------
    def get(self, identity_id: str) -> IdentityRecord:
        return self.store.get(identity_id)

    def list(self, *, offset: int = 0, limit: int | None = None, prefix: str | None = None) -> list[IdentityRecord]:
        return self.store.list(offset=offset, limit=limit, prefix=prefix)

    def __len__(self) -> int:
        return len(self.store)

    def __contains__(self, identity_id: str) -> bool:
        return self.store.contains(identity_id)

    # -- decisions -----------------------------------------------------------------------------------------
    @staticmethod
    def _check_threshold(threshold: Any) -> float:
        with refused():  # a cosine similarity
            return check_in_range("threshold", threshold, -1, 1)

    def resolve_threshold(self, threshold: float | None = None) -> float:
        """Explicit threshold, else the gallery's, else the model's calibrated one (config.json
        ``calibration.threshold``), else the model's published operating point."""
        if threshold is not None:
            return self._check_threshold(threshold)
        if self.threshold is not None:
            return self.threshold
        config = getattr(self.model, "config", None) if self.model is not None else self.store.model_config
        found = threshold_from_config(config)
        if found is None:
            raise GalleryError("no decision threshold: the model has no calibration (calibrate it with "
                               "`deepmetric evaluate --protocol verification`) and none was given; pass threshold=")
        return self._check_threshold(found)

    def _score(self, query: np.ndarray, nums: Sequence[int]) -> list[Match]:
        """Exact scores from the store for candidate identities, best first."""
        matches = []
        for record in self.store.identities_by_num(nums).values():
            templates = sorted((TemplateMatch(template_id=t, score=float(v @ query)) for t, v in record["templates"]),
                               key=lambda m: -m.score)
            matches.append(Match(identity_id=record["identity_id"], name=record["name"],
                                 score=float(record["centroid"] @ query), templates=templates))
        matches.sort(key=lambda m: (-m.score, m.identity_id))
        return matches

    def _candidates(self, query: np.ndarray, k: int) -> list[Match]:
        # Over-fetch: the index ranks identity centroids approximately; exact re-scoring orders them.
        return self._score(query, self.index.candidates(query, max(4 * k, 32)))

    def identify(self, probe: Any, *, k: int = 5, threshold: float | None = None) -> Decision:
        """Who is this? The top ``k`` identities for ``probe`` (image or embedding); accepted when the best
        scores at least the threshold, otherwise ``identity_id`` is None (unknown person)."""
        with refused():
            k = check_positive_int("k", k)
        threshold = self.resolve_threshold(threshold)
        query = self._probe(probe)
        matches = self._candidates(query, k)
        if not matches:
            return Decision(accepted=False, identity_id=None, score=None, threshold=threshold, margin=None)
        best = matches[0]
        accepted = best.score >= threshold
        return Decision(accepted=accepted, identity_id=best.identity_id if accepted else None, score=best.score,
                        threshold=threshold, margin=best.score - matches[1].score if len(matches) > 1 else None,
                        matches=matches[:k], best_other=matches[1] if len(matches) > 1 else None)

    def verify(self, probe: Any, identity_id: str, *, threshold: float | None = None) -> Decision:
        """Is this ``identity_id``? Accepted when the probe's score against that identity reaches the
        threshold; ``margin`` compares it with the best-scoring other identity."""
        threshold = self.resolve_threshold(threshold)
        query = self._probe(probe)
        num = self.store.num_of(identity_id)
        claimed = self._score(query, [num])
        if not claimed:
            raise UnknownIdentityError(f"unknown identity {identity_id!r}")
        others = [m for m in self._candidates(query, 2) if m.identity_id != identity_id]
        best_other = others[0] if others else None
        score = claimed[0].score
        return Decision(accepted=score >= threshold, identity_id=identity_id, score=score, threshold=threshold,
                        margin=None if best_other is None else score - best_other.score, matches=claimed,
                        best_other=best_other)

    # -- export / import / re-embed ----------------------------------------------------------------------
    def export(self, folder: str | Path, *, with_images: bool = False) -> Path:
        """Write ``identities.json`` + ``vectors.npy`` (+ ``images/`` when asked) to ``folder`` atomically.

        ``folder`` must be new, empty, or an earlier export: never the gallery, a folder inside it or one
        holding it, and never a folder of other files (:class:`~deepmetric.io.FolderInUseError`)."""
        from deepmetric.io import atomic_directory, write_json

        target, home = Path(folder).resolve(), self.folder.resolve()
        if target == home or home in target.parents or target in home.parents:
            where = "is" if target == home else "is inside" if home in target.parents else "holds"
            raise ValueError(f"cannot export to {folder}: it {where} the gallery {self.folder}; "
                             "choose a folder outside it")
        identities: dict[str, dict[str, Any]] = {}
        vectors = []
        with atomic_directory(folder, kind="gallery-export", legacy=_is_export) as tmp:
            for record in self.store.list():
                identities[record.identity_id] = {"identity_id": record.identity_id, "name": record.name,
                                                  "metadata": record.metadata, "templates": []}
            for template in self.store.templates(with_images=with_images):
                entry = {"row": len(vectors), "source": template["source"], "image_path": template["image_path"]}
                if with_images and template["image"] is not None:
                    (tmp / "images").mkdir(exist_ok=True)
                    entry["image_file"] = f"images/{template['template_id']}.bin"
                    (tmp / entry["image_file"]).write_bytes(template["image"])
                identities[template["identity_id"]]["templates"].append(entry)
                vectors.append(template["vector"])
            matrix = np.stack(vectors) if vectors else np.zeros((0, self.embedding_dim), dtype=np.float32)
            np.save(tmp / "vectors.npy", matrix.astype(np.float32))
            write_json(tmp / "identities.json", {
                "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "embedding_dim": self.embedding_dim,
                "model_stamp": self.store.model_stamp, "model_config": self.store.model_config,
                "identities": list(identities.values())})
        return Path(folder)

    def import_from(self, folder: str | Path) -> int:
        """Add every identity of an export (same model only) in one transaction; returns how many."""
        from deepmetric.io import load_array, read_json, recover_directory

        folder = recover_directory(folder)
        info = read_json(folder / "identities.json")
        if info.get("format") != EXPORT_FORMAT or info.get("version") != EXPORT_VERSION:
            raise GalleryError(f"{str(folder)!r} is not a deepmetric gallery export (format/version)")
        if info.get("model_stamp") != self.store.model_stamp:
            raise GalleryModelMismatch(f"export {str(folder)!r} was embedded with another model (stamp "
                                       f"{str(info.get('model_stamp'))[:12]}) than this gallery "
                                       f"({self.store.model_stamp[:12]})")
        vectors = load_array(folder / "vectors.npy", what="export vectors")
        vectors = unit_vectors(vectors, self.embedding_dim, name="vectors.npy") if len(vectors) else vectors
        records = []
        for identity in info["identities"]:
            templates = []
            for entry in identity["templates"]:
                row = int(entry["row"])
                if not 0 <= row < len(vectors):
                    raise GalleryError(f"identity {identity['identity_id']!r} points at vector row {row}, but "
                                       f"vectors.npy has {len(vectors)} rows")
                image = None
                if entry.get("image_file"):
                    image_file = (folder / entry["image_file"]).resolve()
                    if folder.resolve() not in image_file.parents:
                        raise GalleryError(f"image file {entry['image_file']!r} is outside the export folder")
                    image = image_file.read_bytes()
                templates.append(TemplateInput(vector=vectors[row], source=entry.get("source", "embedding"),
                                               image=image, image_path=entry.get("image_path")))
            records.append((identity["identity_id"], identity.get("name"), identity.get("metadata"), templates))
        self.store.add_identities(records)
        self.index.sync()
        return len(records)

    def reembed(self, model: Any, *, drop_without_images: bool = False,
                model_config: dict[str, Any] | None = None) -> dict[str, int]:
        """Re-embed every template from its stored image (bytes, else path) with a new ``model`` and restamp
        the gallery, in one transaction. Templates without an image are refused unless
        ``drop_without_images`` (they, and identities left empty, are then deleted). ``model_config``
        entries are stored with the new model's config."""
        if model is None:
            raise TypeError("reembed needs a model (an EmbeddingModel) to embed the stored images, got None")
        _check_model(model)
        previous_model, self.model = self.model, model
        new_dim = int(model.embedding_dim)
        vectors: dict[int, np.ndarray] = {}
        missing = []
        try:
            templates = list(self.store.templates(with_images=True))
            for template in templates:
                source = template["image"]
                if source is None and template["image_path"] and Path(template["image_path"]).is_file():
                    source = template["image_path"]
                if source is None:
                    missing.append(template["template_id"])
                    continue
                vectors[template["template_id"]] = encode_image(model, source, new_dim)
            if missing and not drop_without_images:
                raise GalleryError(f"{len(missing)} templates have no stored image (e.g. template {missing[0]}); "
                                   f"they cannot be re-embedded. Pass drop_without_images=True to delete them")
            self.store.replace_vectors(vectors, model_stamp=model_fingerprint(model), embedding_dim=new_dim,
                                       model_config={**dict(getattr(model, "config", {}) or {}),
                                                     **(model_config or {})})
        except BaseException:
            self.model = previous_model
            raise
        self.index.sync()
        return {"reembedded": len(vectors), "dropped": len(missing), "identities": len(self.store)}
