"""Landmark data in its published formats: Google Landmarks v2 (GLDv2) CSV files, solutions and submissions
over the ``a/b/c/abc....jpg`` image tree, and the revisited Oxford / Paris ground truth (``gnd_*.pkl``).

Every reader validates as it goes and names the file and line of the first problem; the ``gnd`` pickles are
read by an unpickler that resolves no class or function at all.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepmetric.data.base import LabelledImages
from deepmetric.data.table import DataTable, TableDataset
from deepmetric.io import atomic_write_text, load_plain_pickle
from deepmetric.registry import register
from deepmetric.validation import check_choice, check_in_range, check_non_negative_float, check_positive_int

#: The ``Usage`` values of the GLDv2 solution files.
USAGES = ("Public", "Private", "Ignored")
_IMAGE_ID = re.compile(r"[0-9A-Za-z]{3,}")
_NON_LANDMARK = -1


# -- GLDv2 CSV files ---------------------------------------------------------------------------------------

def _rows(path: str | os.PathLike, allowed_headers: Sequence[Sequence[str]], what: str):
    """Yield ``(line, {column: value})`` of a CSV whose header is one of ``allowed_headers`` (exactly)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = [c.strip() for c in next(reader)]
        except StopIteration:
            raise ValueError(f"{path}: empty file; a {what} starts with the header "
                             f"{','.join(allowed_headers[0])}") from None
        if header not in [list(h) for h in allowed_headers]:
            expected = " or ".join(",".join(h) for h in allowed_headers)
            raise ValueError(f"{path}:1: a {what} has the header {expected}, got {','.join(header)}")
        try:
            for row in reader:
                if not row or row == [""]:
                    continue
                if len(row) != len(header):
                    raise ValueError(f"{path}:{reader.line_num}: expected {len(header)} fields "
                                     f"({','.join(header)}), got {len(row)}: {row!r}")
                yield reader.line_num, dict(zip(header, (v.strip() for v in row)))
        except csv.Error as error:
            raise ValueError(f"{path}:{reader.line_num}: not valid CSV: {error}") from None


def _image_id(value: str, where: str) -> str:
    if not _IMAGE_ID.fullmatch(value):
        raise ValueError(f"{where}: an image id is 3 or more letters and digits (GLDv2: 16 hex digits), got "
                         f"{value!r}")
    return value


def _landmark_id(value: str, where: str) -> int:
    try:
        landmark = int(value)
    except ValueError:
        raise ValueError(f"{where}: landmark_id must be an integer, got {value!r}") from None
    if landmark < 0:
        raise ValueError(f"{where}: landmark_id must be >= 0, got {landmark}")
    return landmark


def _once(seen: dict[str, int], image_id: str, line: int, where: str) -> None:
    if image_id in seen:
        raise ValueError(f"{where}: image id {image_id!r} is listed twice (first on line {seen[image_id]})")
    seen[image_id] = line


@dataclass(frozen=True)
class LandmarkImages:
    """Image ids of a GLDv2 file, with their landmark (``-1``: not known, as in index.csv and test.csv) and
    URL (``""`` when the file has none)."""

    ids: list[str]
    landmark_ids: np.ndarray
    urls: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def read_gldv2_train(path: str | os.PathLike) -> LandmarkImages:
    """GLDv2 ``train.csv``: ``id,url,landmark_id``, one image per line.

    Example:
        >>> import tempfile, pathlib
        >>> folder = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (folder / "train.csv").write_text("id,url,landmark_id\\n6e158a47eb2ca3f6,https://x/1.jpg,142820\\n")
        >>> read_gldv2_train(folder / "train.csv").landmark_ids.tolist()
        [142820]
    """
    ids, landmarks, urls, seen = [], [], [], {}
    for line, row in _rows(path, [("id", "url", "landmark_id")], "GLDv2 train.csv"):
        where = f"{path}:{line}"
        ids.append(_image_id(row["id"], where))
        _once(seen, row["id"], line, where)
        urls.append(row["url"])
        landmarks.append(_landmark_id(row["landmark_id"], where))
    return LandmarkImages(ids, np.asarray(landmarks, np.int64), urls)


def read_gldv2_train_clean(path: str | os.PathLike) -> LandmarkImages:
    """GLDv2 ``train_clean.csv``: ``landmark_id,images``, one landmark per line with its image ids separated by
    spaces; returned one image per entry, in file order."""
    ids, landmarks, seen_ids, seen_landmarks = [], [], {}, {}
    for line, row in _rows(path, [("landmark_id", "images")], "GLDv2 train_clean.csv"):
        where = f"{path}:{line}"
        landmark = _landmark_id(row["landmark_id"], where)
        if landmark in seen_landmarks:
            raise ValueError(f"{where}: landmark_id {landmark} is listed twice (first on line "
                             f"{seen_landmarks[landmark]})")
        seen_landmarks[landmark] = line
        images = row["images"].split()
        if not images:
            raise ValueError(f"{where}: landmark {landmark} lists no image")
        for image in images:
            _once(seen_ids, _image_id(image, where), line, where)
            ids.append(image)
            landmarks.append(landmark)
    return LandmarkImages(ids, np.asarray(landmarks, np.int64), [""] * len(ids))


def read_gldv2_image_list(path: str | os.PathLike) -> LandmarkImages:
    """GLDv2 ``index.csv`` or ``test.csv``: ``id`` (or ``id,url``), landmarks unknown (-1)."""
    ids, urls, seen = [], [], {}
    for line, row in _rows(path, [("id",), ("id", "url")], "GLDv2 index.csv / test.csv"):
        where = f"{path}:{line}"
        ids.append(_image_id(row["id"], where))
        _once(seen, row["id"], line, where)
        urls.append(row.get("url", ""))
    return LandmarkImages(ids, np.full(len(ids), _NON_LANDMARK, np.int64), urls)


@dataclass(frozen=True)
class Solution:
    """A GLDv2 solution file: per query id its ground truth (a frozenset of landmark ids for recognition, empty
    for a non-landmark query; a frozenset of index image ids for retrieval) and its ``Usage``."""

    truth: dict[str, frozenset]
    usage: dict[str, str]

    def scored(self, usages: Sequence[str] = ("Public", "Private")) -> dict[str, frozenset]:
        """The ground truth of the queries whose Usage is one of ``usages`` (the challenge scores Public and
        Private, never Ignored)."""
        for usage in usages:
            check_choice("usages", usage, USAGES)
        return {key: value for key, value in self.truth.items() if self.usage[key] in usages}


def _usage(value: str, where: str) -> str:
    if value not in USAGES:
        raise ValueError(f"{where}: Usage must be one of {list(USAGES)}, got {value!r}")
    return value


def read_recognition_solution(path: str | os.PathLike) -> Solution:
    """The GLDv2 recognition solution: ``id,landmarks,Usage``; ``landmarks`` holds the query's landmark ids
    separated by spaces, empty for a query that shows no landmark."""
    truth, usage, seen = {}, {}, {}
    for line, row in _rows(path, [("id", "landmarks", "Usage")], "recognition solution"):
        where = f"{path}:{line}"
        _once(seen, _image_id(row["id"], where), line, where)
        truth[row["id"]] = frozenset(_landmark_id(v, where) for v in row["landmarks"].split())
        usage[row["id"]] = _usage(row["Usage"], where)
    return Solution(truth, usage)


def read_retrieval_solution(path: str | os.PathLike) -> Solution:
    """The GLDv2 retrieval solution: ``id,images,Usage``; ``images`` holds the relevant index image ids
    separated by spaces (``None`` or empty for a query without any, which is then Ignored)."""
    truth, usage, seen = {}, {}, {}
    for line, row in _rows(path, [("id", "images", "Usage")], "retrieval solution"):
        where = f"{path}:{line}"
        _once(seen, _image_id(row["id"], where), line, where)
        images = [] if row["images"] in ("", "None") else row["images"].split()
        truth[row["id"]] = frozenset(_image_id(v, where) for v in images)
        usage[row["id"]] = _usage(row["Usage"], where)
        if not images and usage[row["id"]] != "Ignored":
            raise ValueError(f"{where}: query {row['id']!r} has no relevant image but Usage {usage[row['id']]}; "
                             f"only Ignored queries may be empty")
    return Solution(truth, usage)


def write_recognition_submission(path: str | os.PathLike, predictions: Mapping[str, tuple[Any, float] | None]) -> None:
    """The recognition submission (``id,landmarks`` with ``landmarks`` = ``"<landmark_id> <confidence>"``, empty
    for no prediction), written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "landmarks"])
    for key, prediction in predictions.items():
        writer.writerow([key, "" if prediction is None else f"{prediction[0]} {float(prediction[1]):.6g}"])
    atomic_write_text(path, buffer.getvalue())


def read_recognition_submission(path: str | os.PathLike) -> dict[str, tuple[int, float]]:
    """A recognition submission: ``id,landmarks`` -> ``{id: (landmark_id, confidence)}`` (empty cells: no
    prediction, left out)."""
    out, seen = {}, {}
    for line, row in _rows(path, [("id", "landmarks")], "recognition submission"):
        where = f"{path}:{line}"
        _once(seen, _image_id(row["id"], where), line, where)
        fields = row["landmarks"].split()
        if not fields:
            continue
        if len(fields) != 2:
            raise ValueError(f"{where}: landmarks must be '<landmark_id> <confidence>' or empty, got "
                             f"{row['landmarks']!r}")
        try:
            confidence = float(fields[1])
        except ValueError:
            raise ValueError(f"{where}: confidence must be a number, got {fields[1]!r}") from None
        if not math.isfinite(confidence):
            raise ValueError(f"{where}: confidence must be finite, got {fields[1]!r}")
        out[row["id"]] = (_landmark_id(fields[0], where), confidence)
    return out


def write_retrieval_submission(path: str | os.PathLike, rankings: Mapping[str, Sequence[str]]) -> None:
    """The retrieval submission (``id,images``, index ids best first separated by spaces), written atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "images"])
    for key, ranked in rankings.items():
        writer.writerow([key, " ".join(ranked)])
    atomic_write_text(path, buffer.getvalue())


def read_retrieval_submission(path: str | os.PathLike) -> dict[str, list[str]]:
    """A retrieval submission: ``id,images`` -> ``{id: [index ids, best first]}``."""
    out, seen = {}, {}
    for line, row in _rows(path, [("id", "images")], "retrieval submission"):
        where = f"{path}:{line}"
        _once(seen, _image_id(row["id"], where), line, where)
        out[row["id"]] = [_image_id(v, where) for v in row["images"].split()]
    return out


def gldv2_image_path(root: str | os.PathLike, image_id: str) -> Path:
    """Where GLDv2 keeps an image: ``root/a/b/c/abc....jpg`` (the id's first three characters as folders).

    Example:
        >>> gldv2_image_path("train", "6e158a47eb2ca3f6").as_posix()
        'train/6/e/1/6e158a47eb2ca3f6.jpg'
    """
    image_id = _image_id(image_id, "image_id")
    return Path(root) / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


@dataclass(frozen=True)
class ClassSizeBin:
    """Classes with ``low <= images < high`` (``high`` may be inf): how many, and how many images they hold."""

    low: int
    high: float
    num_classes: int
    num_images: int


def class_size_histogram(landmark_ids: Sequence[int] | np.ndarray,
                         edges: Sequence[float] = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, math.inf)
                         ) -> list[ClassSizeBin]:
    """The long tail of a landmark data set: the number of classes (and of their images) per images-per-class
    bin ``[edges[i], edges[i + 1])``; labels below 0 (non-landmarks) are not a class.

    Example:
        >>> [(b.low, b.num_classes, b.num_images) for b in class_size_histogram([3, 3, 3, 5, 7, 7], (1, 2, 3, 9))]
        [(1, 1, 1), (2, 1, 2), (3, 1, 3)]
    """
    labels = np.asarray(landmark_ids)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"landmark_ids must be a 1-D integer array, got {labels.dtype} array of shape {labels.shape}")
    edges = [float(e) for e in edges]
    if len(edges) < 2 or any(b <= a for a, b in itertools.pairwise(edges)) or edges[0] < 1:
        raise ValueError(f"edges must increase from at least 1, got {edges}")
    _, sizes = np.unique(labels[labels >= 0], return_counts=True)
    out = []
    for low, high in itertools.pairwise(edges):
        inside = (sizes >= low) & (sizes < high)
        out.append(ClassSizeBin(int(low), high, int(inside.sum()), int(sizes[inside].sum())))
    return out


# -- revisited Oxford and Paris --------------------------------------------------------------------------

@dataclass(frozen=True)
class RevisitedGroundTruth:
    """A revisited Oxford / Paris benchmark (Radenovic et al. 2018): database image names, query image names,
    each query's box ``(x1, y1, x2, y2)`` in pixels, and per query the database indices of its ``easy``,
    ``hard`` and ``junk`` images (``ground_truth``: the dicts ``deepmetric.eval.retrieval.revisited_from_rankings``
    takes)."""

    name: str
    images: list[str]
    queries: list[str]
    boxes: np.ndarray
    ground_truth: list[dict[str, list[int]]]


def _index_list(value: Any, where: str, size: int) -> list[int]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool)
                                                        for v in value):
        raise ValueError(f"{where} must be a list of database indices, got {type(value).__name__}")
    bad = [v for v in value if not 0 <= v < size]
    if bad:
        raise ValueError(f"{where}: indices {bad[:5]} are outside the {size} database images")
    return list(value)


def read_revisited_ground_truth(path: str | os.PathLike) -> RevisitedGroundTruth:
    """Read ``gnd_roxford5k.pkl`` / ``gnd_rparis6k.pkl``: a dict with ``imlist`` (database names), ``qimlist``
    (query names) and ``gnd`` (one dict per query: ``bbx`` [x1, y1, x2, y2], ``easy``, ``hard``, ``junk``),
    through an unpickler that admits no class."""
    path = Path(path)
    content = load_plain_pickle(path)
    if not isinstance(content, dict) or not {"imlist", "qimlist", "gnd"} <= set(content):
        keys = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"{path}: expected a dict with imlist, qimlist and gnd, got {keys}")
    images, queries, gnd = content["imlist"], content["qimlist"], content["gnd"]
    for key, names in (("imlist", images), ("qimlist", queries)):
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"{path}: {key} must be a list of image names")
    if not isinstance(gnd, list) or len(gnd) != len(queries):
        raise ValueError(f"{path}: gnd must hold one entry per query ({len(queries)}), got "
                         f"{len(gnd) if isinstance(gnd, list) else type(gnd).__name__}")
    boxes, truth = [], []
    for number, entry in enumerate(gnd):
        where = f"{path}: gnd[{number}]"
        if not isinstance(entry, dict) or "bbx" not in entry:
            raise ValueError(f"{where} must be a dict with bbx, easy, hard and junk")
        box = entry["bbx"]
        if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
                and box[2] > box[0] and box[3] > box[1]):
            raise ValueError(f"{where}['bbx'] must be [x1, y1, x2, y2] with x2 > x1 and y2 > y1, got {box!r}")
        boxes.append([float(v) for v in box])
        truth.append({key: _index_list(entry.get(key, []), f"{where}[{key!r}]", len(images))
                      for key in ("easy", "hard", "junk")})
    name = path.stem[4:] if path.stem.startswith("gnd_") else path.stem
    return RevisitedGroundTruth(name, list(images), list(queries), np.asarray(boxes, np.float64).reshape(-1, 4),
                                truth)


def crop_to_box(image: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """The query region of the revisited protocol: ``image`` (H, W[, C]) cut to ``box`` = (x1, y1, x2, y2) in
    pixels, rounded to the nearest pixel as PIL's ``Image.crop`` does and clipped to the image.

    Example:
        >>> crop_to_box(np.zeros((10, 20, 3), np.uint8), (2.4, 1.6, 12.5, 30)).shape
        (8, 10, 3)
    """
    height, width = image.shape[:2]
    x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    x1, x2 = max(0, min(x1, width)), max(0, min(x2, width))
    y1, y2 = max(0, min(y1, height)), max(0, min(y2, height))
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"box {tuple(box)} leaves nothing of a {width}x{height} image")
    return image[y1:y2, x1:x2]


# -- data sets ---------------------------------------------------------------------------------------------

_GLDV2_FILES = {"train": read_gldv2_train, "train_clean": read_gldv2_train_clean, "index": read_gldv2_image_list,
                "test": read_gldv2_image_list}


def gldv2_table(root: str | os.PathLike, part: str = "train_clean", *, images: str | None = None,
                min_images_per_class: int = 1, check_files: bool = True) -> DataTable:
    """A GLDv2 part as a data-set table: ``root/<part>.csv`` over the image tree ``root/<images>`` (default:
    ``train`` for train and train_clean, else the part's name). Classes with fewer than
    ``min_images_per_class`` images are dropped; index and test images have label -1 (unknown)."""
    check_choice("part", part, tuple(_GLDV2_FILES))
    min_images_per_class = check_positive_int("min_images_per_class", min_images_per_class)
    root = Path(root).resolve()
    listed = _GLDV2_FILES[part](root / f"{part}.csv")
    tree = root / (images or ("train" if part.startswith("train") else part))
    labels = listed.landmark_ids
    keep = np.ones(len(labels), bool)
    if min_images_per_class > 1 and (labels >= 0).any():
        values, counts = np.unique(labels, return_counts=True)
        keep = np.isin(labels, values[counts >= min_images_per_class])
    paths = [str(gldv2_image_path(tree, image_id)) for image_id, kept in zip(listed.ids, keep) if kept]
    if not paths:
        raise ValueError(f"{root / (part + '.csv')}: no image left with min_images_per_class={min_images_per_class}")
    if check_files:
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} GLDv2 image(s) listed in {part}.csv are missing under {tree}, "
                                    f"e.g. {missing[:3]}")
    size = len(paths)
    return DataTable(root, paths, labels[keep], np.full(size, "", dtype=object), np.ones(size, bool),
                     np.ones(size, bool), np.full(size, "", dtype=object))


@register("dataset", "gldv2", example={"root": "gldv2"})
class GLDv2(TableDataset):
    """Google Landmarks v2 from its own files (Weyand et al. 2020): ``root/train.csv`` or
    ``root/train_clean.csv`` (or ``index.csv`` / ``test.csv``, label -1) over the ``a/b/c/abc....jpg`` tree.

    Args:
        root: the folder holding the CSV files and the image folders.
        part: ``train``, ``train_clean`` (default), ``index`` or ``test``.
        images: the image folder under root (default: ``train`` for the training parts, else ``part``).
        min_images_per_class: drop rarer landmarks (training only).
        image_size, channels, mean, std, augment, hflip: preprocessing, as ``CsvDataset``.
    """

    def __init__(self, *, root: str, part: str = "train_clean", images: str | None = None,
                 min_images_per_class: int = 1, image_size: int | Sequence[int] = 224, channels: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 augment: bool | None = None, hflip: bool = True) -> None:
        table = gldv2_table(root, part, images=images, min_images_per_class=min_images_per_class)
        super().__init__(table, image_size=image_size, channels=channels, mean=mean, std=std,
                         augment=part.startswith("train") if augment is None else augment, hflip=hflip)
        self.image_ids = [Path(p).stem for p in self.paths]
        if part in ("index", "test"):  # no landmark known: no class, labels stay -1
            self.labels = np.full(len(self.paths), _NON_LANDMARK, np.int64)
            self.class_ids, self.class_names, self.num_classes = [], [], 0


@register("dataset", "revisited", example={"ground_truth": "gnd_roxford5k.pkl"})
class RevisitedOxfordParis(TableDataset):
    """The revisited Oxford or Paris images (Radenovic et al. 2018): the queries cropped to their boxes, as the
    protocol demands, or the database images; labels are -1 (the ground truth is per query, see
    ``read_revisited_ground_truth``).

    Args:
        ground_truth: ``gnd_roxford5k.pkl`` or ``gnd_rparis6k.pkl``.
        images: the folder of ``<name>.jpg`` files (default: ``jpg`` beside the pickle).
        part: ``query`` or ``database``.
        image_size, channels, mean, std: preprocessing (no augmentation).
    """

    def __init__(self, *, ground_truth: str, images: str | None = None, part: str = "query",
                 image_size: int | Sequence[int] = 224, channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        check_choice("part", part, ("query", "database"))
        self.ground_truth = read_revisited_ground_truth(ground_truth)
        folder = Path(images) if images is not None else Path(ground_truth).resolve().parent / "jpg"
        names = self.ground_truth.queries if part == "query" else self.ground_truth.images
        paths = [str(folder / f"{name}.jpg") for name in names]
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} {self.ground_truth.name} image(s) are missing under {folder}, "
                                    f"e.g. {missing[:3]}")
        size = len(paths)
        table = DataTable(folder.resolve(), paths, np.zeros(size, np.int64), np.full(size, "", dtype=object),
                          np.full(size, part == "query"), np.full(size, part == "database"),
                          np.full(size, "", dtype=object))
        super().__init__(table, image_size=image_size, channels=channels, mean=mean, std=std, augment=False)
        self.part = part
        self.labels = np.full(size, _NON_LANDMARK, np.int64)
        self.class_ids, self.class_names, self.num_classes = [], [], 0

    def raw_image(self, index: int) -> np.ndarray:
        image = super().raw_image(index)  # decoded by deepmetric.data.images.load_image
        if self.part == "query":
            return crop_to_box(image, self.ground_truth.boxes[index])
        return image


# -- a landmarks-like stand-in built from Glyphs ------------------------------------------------------------

def zipf_counts(available: np.ndarray, *, exponent: float, minimum: int, rng: np.random.Generator) -> np.ndarray:
    """How many images each class keeps for a long tail: classes in a random order get
    ``max(minimum, round(max(available) * rank^-exponent))`` images (rank 1, 2, ...), at most what they have."""
    order = rng.permutation(len(available))
    ranks = np.empty(len(available), np.float64)
    ranks[order] = np.arange(1, len(available) + 1)
    wanted = np.maximum(minimum, np.round(available.max(initial=1) * ranks ** -float(exponent))).astype(np.int64)
    return np.minimum(wanted, available)


def _take_per_class(labels: np.ndarray, counts: dict[int, int], rng: np.random.Generator) -> np.ndarray:
    keep = [rng.permutation(np.flatnonzero(labels == label))[:count] for label, count in counts.items()]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)


@register("dataset", "glyph_landmarks", example={"scripts": ["latin", "digits"], "min_designs": 2, "max_fonts": 6})
class GlyphLandmarks(LabelledImages):
    """A long-tailed training set with Google Landmarks' shape, built from Glyphs' train split (a stand-in:
    characters play landmarks and typefaces play photos). Class sizes follow a Zipf-like law, as GLDv2's
    images-per-class histogram does, so dynamic margins from class counts have something to act on.

    Args:
        exponent: Zipf exponent of the class sizes (0: keep everything).
        min_per_class: smallest class kept (2 lets a P x K sampler draw pairs).
        seed: seed of the size ranking and of which typefaces a class keeps.
        image_size, scripts, max_cjk, min_designs, max_fonts, cache_dir, augment, progress: see ``Glyphs``
            (its split is always ``train``).
    """

    def __init__(self, *, exponent: float = 0.8, min_per_class: int = 2, seed: int = 0, image_size: int = 32,
                 scripts: Sequence[str] | None = None, max_cjk: int | None = None, min_designs: int = 4,
                 max_fonts: int | None = None, cache_dir: str | None = None, augment: bool = True,
                 progress: bool = True) -> None:
        from deepmetric.data.glyphs import SCRIPTS, Glyphs

        min_per_class = check_positive_int("min_per_class", min_per_class)
        glyphs = Glyphs(split="train", image_size=image_size, scripts=SCRIPTS if scripts is None else scripts,
                        max_cjk=max_cjk, min_designs=max(min_designs, min_per_class), max_fonts=max_fonts,
                        cache_dir=cache_dir, augment=False, progress=progress)
        rng = np.random.default_rng(seed)
        available = np.bincount(glyphs.labels, minlength=glyphs.num_classes)
        counts = zipf_counts(available, exponent=check_non_negative_float("exponent", exponent),
                             minimum=min_per_class, rng=rng)
        keep = _take_per_class(glyphs.labels, dict(enumerate(counts.tolist())), rng)
        super().__init__(glyphs.images[keep], glyphs.original_labels[keep],
                         class_names=dict(zip(glyphs.class_ids, glyphs.class_names)),
                         preprocessing=glyphs.preprocessing, augment=augment, hflip=False)
        self.font_index = glyphs.font_index[keep]


@dataclass(frozen=True)
class LandmarksLikeSplit:
    """Positions into an evaluation set (unseen classes) laid out as a GLDv2 recognition test: ``index`` images
    of landmark classes (long-tailed counts), ``queries`` in other typefaces, a ``non_landmark_share`` of them
    from classes that have no index image, and ``distractors`` from further classes that are neither (the known
    non-landmark set). ``query_truth`` is each query's class, -1 for a non-landmark."""

    index: np.ndarray
    queries: np.ndarray
    distractors: np.ndarray
    query_truth: np.ndarray

    @property
    def non_landmark_share(self) -> float:
        return float((self.query_truth < 0).mean())


def landmarks_like_split(labels: np.ndarray, *, landmark_fraction: float = 0.4,
                         distractor_fraction: float = 0.3, non_landmark_share: float = 0.6,
                         exponent: float = 1.0, seed: int = 0) -> LandmarksLikeSplit:
    """Lay an evaluation set's ``labels`` (one per image; in Glyphs each image of a class is another typeface) out
    as a GLDv2 recognition test (see
    ``LandmarksLikeSplit``): a ``landmark_fraction`` of the classes are landmarks with Zipf-like index counts
    (at least one typeface left for one query each), a ``distractor_fraction`` give the distractor set, and the
    rest give the non-landmark queries, as many as make ``non_landmark_share`` of all queries.

    Example:
        >>> split = landmarks_like_split(np.repeat(np.arange(10), 4), landmark_fraction=0.4,
        ...                              distractor_fraction=0.3, non_landmark_share=0.5)
        >>> len(split.queries), split.non_landmark_share, len(split.distractors)
        (8, 0.5, 12)
    """
    labels = np.asarray(labels)
    for name, value in (("landmark_fraction", landmark_fraction), ("distractor_fraction", distractor_fraction),
                        ("non_landmark_share", non_landmark_share)):
        check_in_range(name, value, 0, 1, low_inclusive=False, high_inclusive=False)
    if landmark_fraction + distractor_fraction >= 1:
        raise ValueError(f"landmark_fraction + distractor_fraction must leave classes for non-landmark queries, "
                         f"got {landmark_fraction} + {distractor_fraction}")
    rng = np.random.default_rng(seed)
    classes, available = np.unique(labels, return_counts=True)
    usable = classes[available >= 2]  # a landmark needs an index image and a query
    order = rng.permutation(classes)
    num_landmarks = max(1, int(round(len(classes) * landmark_fraction)))
    landmarks = [c for c in order if c in set(usable.tolist())][:num_landmarks]
    rest = [c for c in order if c not in set(landmarks)]
    num_distractor = max(1, int(round(len(classes) * distractor_fraction)))
    distractor_classes, non_landmark_classes = rest[:num_distractor], rest[num_distractor:]
    sizes = np.array([int((labels == c).sum()) - 1 for c in landmarks])
    index_counts = zipf_counts(sizes, exponent=exponent, minimum=1, rng=rng)
    index, queries = [], []
    for label, count in zip(landmarks, index_counts.tolist()):
        members = rng.permutation(np.flatnonzero(labels == label))
        index.extend(members[:count].tolist())
        queries.append(int(members[count]))
    pool = rng.permutation(np.flatnonzero(np.isin(labels, non_landmark_classes)))
    wanted = int(round(len(queries) * non_landmark_share / (1 - non_landmark_share)))
    if wanted > len(pool):
        raise ValueError(f"non_landmark_share={non_landmark_share} needs {wanted} non-landmark queries but the "
                         f"{len(non_landmark_classes)} non-landmark classes have {len(pool)} images; lower it or "
                         f"the landmark and distractor fractions")
    queries.extend(pool[:wanted].tolist())
    query_index = np.asarray(queries, np.int64)
    truth = np.where(np.isin(labels[query_index], landmarks), labels[query_index], -1).astype(np.int64)
    distractors = np.flatnonzero(np.isin(labels, distractor_classes))
    return LandmarksLikeSplit(np.sort(np.asarray(index, np.int64)), query_index, distractors, truth)
