"""The data-set table: a CSV of ``path, label`` with optional ``split, is_query, is_gallery, category``,
validated with errors that name the row; image folders (one sub-folder per identity) convert to it.

Paths are relative to a data root (default: the CSV's folder) and may not point outside it.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepmetric.data.base import TransformedDataset, as_image_size, check_channels, check_split
from deepmetric.data.images import load_image
from deepmetric.data.transforms import resize_image
from deepmetric.io import atomic_write_text
from deepmetric.registry import register
from deepmetric.validation import check_bool, check_in_range, check_non_negative_float

log = logging.getLogger(__name__)

DEFAULT_MEMORY_LIMIT_MB = 2048.0

REQUIRED_COLUMNS = ("path", "label")
OPTIONAL_COLUMNS = ("split", "is_query", "is_gallery", "category")
SPLIT_VALUES = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".pgm", ".ppm")
_TRUE = {"1", "true", "yes", "y", "t"}
_FALSE = {"0", "false", "no", "n", "f", ""}


@dataclass
class DataTable:
    """Validated rows of a data-set table. ``paths`` are absolute; ``split`` is '' when not given."""

    root: Path
    paths: list[str]
    labels: np.ndarray
    split: np.ndarray
    is_query: np.ndarray
    is_gallery: np.ndarray
    category: np.ndarray
    class_names: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def select(self, split: str | None) -> DataTable:
        """Rows of one split (all rows when None)."""
        if split is None:
            return self
        if split not in SPLIT_VALUES:
            raise ValueError(f"split must be one of {list(SPLIT_VALUES)} or None, got {split!r}")
        mask = self.split == split
        if not mask.any():
            raise ValueError(f"the table has no rows with split={split!r}; splits present: "
                             f"{sorted(set(self.split.tolist()))}")
        index = np.flatnonzero(mask)
        return DataTable(self.root, [self.paths[i] for i in index], self.labels[index], self.split[index],
                         self.is_query[index], self.is_gallery[index], self.category[index], self.class_names)

    def to_csv(self, csv_path: str | os.PathLike) -> None:
        """Write atomically, paths relative to the root; optional columns only when they carry information."""
        columns = list(REQUIRED_COLUMNS)
        if (self.split != "").any():
            columns.append("split")
        if not (self.is_query & self.is_gallery).all():
            columns += ["is_query", "is_gallery"]
        if (self.category != "").any():
            columns.append("category")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        for i, path in enumerate(self.paths):
            values = {"path": Path(path).relative_to(self.root).as_posix(), "label": int(self.labels[i]),
                      "split": self.split[i], "is_query": int(self.is_query[i]), "is_gallery": int(self.is_gallery[i]),
                      "category": self.category[i]}
            writer.writerow([values[c] for c in columns])
        atomic_write_text(csv_path, buffer.getvalue())


def parse_bool(value: str, column: str, where: str) -> bool:
    """A true/false cell of ``column`` (1/0, yes/no, y/n, t/f, any case; empty is false); ``where`` (e.g.
    "table.csv:7") starts the error message."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{where}: {column} must be true/false (or 1/0), got {value!r}")


def _resolve_inside(root: Path, relative: str, line: int, csv_path: Path) -> Path:
    if not relative.strip():
        raise ValueError(f"{csv_path}:{line}: empty path")
    # normpath, not resolve: a symlink inside the root may point to storage elsewhere; ".." may not.
    candidate = Path(os.path.normpath(root / relative))
    if not candidate.is_relative_to(root):
        raise ValueError(f"{csv_path}:{line}: path {relative!r} points outside the data root {root}; paths must "
                         f"stay inside it")
    return candidate


def read_table(csv_path: str | os.PathLike, *, root: str | os.PathLike | None = None,
               check_files: bool = True) -> DataTable:
    """Read and validate a data-set table.

    Checked: required columns, unknown columns, integer labels, split values, booleans, paths inside
    ``root`` (default: the CSV's folder), files that exist (``check_files``), duplicate paths, and that
    every query's label has at least one gallery item in its split.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise FileNotFoundError(f"table not found: {csv_path}")
    root_path = Path(root).resolve() if root is not None else csv_path.resolve().parent
    if not root_path.is_dir():
        raise FileNotFoundError(f"data root is not a folder: {root_path}")
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"{csv_path}: missing column(s) {missing}; a table needs {list(REQUIRED_COLUMNS)} and may "
                             f"have {list(OPTIONAL_COLUMNS)}; found {columns}")
        unknown = [c for c in columns if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
        if unknown:
            raise ValueError(f"{csv_path}: unknown column(s) {unknown}; allowed: "
                             f"{list(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}")
        rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    if not rows:
        raise ValueError(f"{csv_path}: the table has no rows")
    paths, labels, splits, queries, galleries, categories = [], [], [], [], [], []
    seen: dict[Path, int] = {}
    missing_files: list[str] = []
    for offset, row in enumerate(rows):
        line = offset + 2  # header is line 1
        try:
            label = int(row["label"])
        except ValueError:
            raise ValueError(f"{csv_path}:{line}: label must be an integer, got {row['label']!r} (map class names to "
                             f"integers, e.g. with `image_folder_to_table`)") from None
        if label < 0:
            raise ValueError(f"{csv_path}:{line}: label must be >= 0, got {label}")
        path = _resolve_inside(root_path, row["path"], line, csv_path)
        if path in seen:
            raise ValueError(f"{csv_path}:{line}: path {row['path']!r} is listed twice (first on line {seen[path]})")
        seen[path] = line
        if check_files and not path.is_file():
            missing_files.append(row["path"])
        split = row.get("split", "")
        if split and split not in SPLIT_VALUES:
            raise ValueError(f"{csv_path}:{line}: split must be one of {list(SPLIT_VALUES)}, got {split!r}")
        paths.append(str(path))
        labels.append(label)
        splits.append(split)
        queries.append(parse_bool(row.get("is_query", "1") or "1", "is_query", f"{csv_path}:{line}"))
        galleries.append(parse_bool(row.get("is_gallery", "1") or "1", "is_gallery", f"{csv_path}:{line}"))
        categories.append(row.get("category", ""))
    if missing_files:
        raise FileNotFoundError(f"{csv_path}: {len(missing_files)} listed file(s) do not exist under {root_path}, "
                                f"e.g. {missing_files[:5]}")
    table = DataTable(root_path, paths, np.asarray(labels, np.int64), np.asarray(splits, dtype=object),
                      np.asarray(queries, bool), np.asarray(galleries, bool), np.asarray(categories, dtype=object))
    if "is_query" in columns or "is_gallery" in columns:
        check_queries_have_gallery(table, csv_path)
    return table


def check_queries_have_gallery(table: DataTable, source: Any = "table") -> None:
    """Every query needs a gallery item with its label in its split, other than itself."""
    for split in sorted(set(table.split.tolist())):
        in_split = table.split == split
        for label in np.unique(table.labels[in_split & table.is_query]):
            same = in_split & (table.labels == label)
            gallery_count = int((same & table.is_gallery).sum())
            # A query that is also a gallery item cannot be its own match.
            lonely = same & table.is_query & (gallery_count - table.is_gallery.astype(int) < 1)
            if lonely.any():
                where = f" in split {split!r}" if split else ""
                first = table.paths[int(np.flatnonzero(lonely)[0])]
                raise ValueError(f"{source}: queries with label {int(label)}{where} (e.g. {first}) have no other "
                                 f"gallery item with that label; mark one as is_gallery or drop the queries")


def image_folder_to_table(folder: str | os.PathLike, *, extensions: Sequence[str] = IMAGE_EXTENSIONS,
                          test_class_fraction: float | None = None, seed: int = 0) -> DataTable:
    """A table from a folder with one sub-folder per identity (sorted names -> labels 0..K-1).

    With ``test_class_fraction`` a fixed random share of the identities gets ``split=test`` (the rest
    ``train``), so the test classes are unseen in training. Empty identity folders are an error.
    """
    root = Path(folder).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    suffixes = tuple(e.lower() for e in extensions)
    identities = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not identities:
        raise ValueError(f"{root} has no sub-folders: put each identity's images in its own sub-folder")
    paths, labels, names = [], [], {}
    empty = []
    for label, identity in enumerate(identities):
        files = sorted(p for p in identity.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not files:
            empty.append(identity.name)
            continue
        names[label] = identity.name
        paths += [str(p) for p in files]
        labels += [label] * len(files)
    if empty:
        raise ValueError(f"{root}: identity folder(s) without images ({', '.join(suffixes)}): {empty[:10]}; "
                         f"remove them or add images")
    labels_array = np.asarray(labels, np.int64)
    split = np.full(len(paths), "", dtype=object)
    if test_class_fraction is not None:
        check_in_range("test_class_fraction", test_class_fraction, 0, 1, low_inclusive=False, high_inclusive=False)
        classes = np.unique(labels_array)
        count = min(max(1, int(round(len(classes) * test_class_fraction))), len(classes) - 1)
        test = np.random.default_rng(seed).permutation(classes)[:count]
        split[:] = np.where(np.isin(labels_array, test), "test", "train")
    size = len(paths)
    return DataTable(root, paths, labels_array, split, np.ones(size, bool), np.ones(size, bool),
                     np.full(size, "", dtype=object), names)


class TableDataset(TransformedDataset):
    """Images listed in a ``DataTable``. Labels are relabelled to ``0..num_classes-1`` (``class_ids`` keeps
    the table's labels).

    When the images, decoded and resized to ``image_size``, fit in ``memory_limit_mb`` they are decoded once
    at construction into one uint8 array (``in_memory``); otherwise each is decoded (``load_image``) when it
    is used. A log line says which, and why.

    Args:
        table: the validated table.
        image_size: model input size (int or [H, W]).
        channels: 1 or 3.
        mean, std: normalisation per channel (default 0.5).
        augment: training augmentations.
        hflip: allow horizontal flips when augmenting.
        in_memory: None (decode into memory when it fits), True (always; an error when it does not fit) or
            False (never).
        memory_limit_mb: the most memory the decoded images may take.
    """

    def __init__(self, table: DataTable, *, image_size: int | Sequence[int] = 112, channels: int = 3,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, augment: bool = False,
                 hflip: bool = True, in_memory: bool | None = None,
                 memory_limit_mb: float = DEFAULT_MEMORY_LIMIT_MB) -> None:
        channels = check_channels(channels)
        if in_memory is not None:
            check_bool("in_memory", in_memory)
        memory_limit_mb = check_non_negative_float("memory_limit_mb", memory_limit_mb)
        self.table = table
        self.paths = list(table.paths)
        kept = np.unique(table.labels)
        self.class_ids = [int(c) for c in kept]
        self.class_names = [table.class_names.get(c, str(c)) for c in self.class_ids]
        self.labels = np.searchsorted(kept, table.labels).astype(np.int64)
        self.num_classes = len(kept)
        self.is_query = table.is_query.copy()
        self.is_gallery = table.is_gallery.copy()
        self.preprocessing = {"image_size": as_image_size(image_size, 112), "channels": channels,
                              "mean": list(mean) if mean is not None else [0.5] * channels,
                              "std": list(std) if std is not None else [0.5] * channels}
        self._set_transforms(augment=augment, hflip=hflip)
        self.images: np.ndarray | None = None
        self.in_memory = False
        self._load_into_memory(in_memory, memory_limit_mb)

    def _load_into_memory(self, in_memory: bool | None, memory_limit_mb: float) -> None:
        height, width = self.preprocessing["image_size"]
        shape = (len(self.paths), height, width, self.preprocessing["channels"])
        megabytes = float(np.prod(shape, dtype=np.float64)) / 2**20
        where = f"{len(self.paths)} images of {self.table.root}"
        if in_memory is False:
            log.info("%s: decoding each image when it is used (in_memory=False)", where)
            return
        if megabytes > memory_limit_mb:
            message = (f"{where} at {height}x{width}x{shape[3]} would take {megabytes:,.0f} MB as uint8, more "
                       f"than memory_limit_mb={memory_limit_mb:,.0f}")
            if in_memory:
                raise ValueError(f"{message}; raise memory_limit_mb or set in_memory=false")
            log.info("%s: decoding each image when it is used (raise memory_limit_mb to keep them in memory)",
                     message)
            return
        from tqdm.auto import tqdm

        images = np.empty(shape, np.uint8)
        for index in tqdm(range(len(self.paths)), desc="decoding images into memory", unit="image",
                          disable=len(self.paths) < 2000, leave=False):
            images[index] = resize_image(load_image(self.paths[index]), self.preprocessing)
        self.images, self.in_memory = images, True
        log.info("%s: decoded once into memory as uint8 (%.1f MB of memory_limit_mb=%.0f)", where, megabytes,
                 memory_limit_mb)

    def __len__(self) -> int:
        return len(self.paths)

    def raw_image(self, index: int) -> np.ndarray:
        """The image as stored on disk (for grids and inspection)."""
        return load_image(self.paths[index])

    def uint8_image(self, index: int) -> np.ndarray:
        if self.images is not None:
            return self.images[index]
        return resize_image(self.raw_image(index), self.preprocessing)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index] if self.images is not None else self.raw_image(index)
        return self.transform(image), int(self.labels[index])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(items={len(self)}, num_classes={self.num_classes}, root={self.table.root}, "
                f"in_memory={self.in_memory})")


@register("dataset", "csv", example={"table": "data.csv"})
class CsvDataset(TableDataset):
    """Images listed in a CSV table (``path,label[,split,is_query,is_gallery,category]``).

    Args:
        table: path of the CSV file.
        root: folder the paths are relative to (default: the CSV's folder).
        split: keep only rows of this split (``train``, ``val``, ``test``); None keeps all.
        image_size, channels, mean, std: preprocessing.
        augment: training augmentations (default: True for the train split).
        hflip: allow horizontal flips when augmenting.
        in_memory, memory_limit_mb: decode the images once into memory when they fit (see ``TableDataset``).
    """

    def __init__(self, *, table: str, root: str | None = None, split: str | None = None,
                 image_size: int | Sequence[int] = 112, channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, augment: bool | None = None, hflip: bool = True,
                 in_memory: bool | None = None, memory_limit_mb: float = DEFAULT_MEMORY_LIMIT_MB) -> None:
        super().__init__(read_table(table, root=root).select(split), image_size=image_size, channels=channels,
                         mean=mean, std=std, augment=split == "train" if augment is None else augment, hflip=hflip,
                         in_memory=in_memory, memory_limit_mb=memory_limit_mb)


@register("dataset", "image_folder", example={"root": "images"})
class ImageFolderDataset(TableDataset):
    """Images in a folder with one sub-folder per identity.

    Args:
        root: the folder.
        split: ``"all"``, or ``"train"``/``"test"`` with identities held out by ``test_class_fraction``.
        test_class_fraction: share of identities in the test split (used when split is not "all").
        seed: seed of the identity split.
        image_size, channels, mean, std: preprocessing.
        augment: training augmentations (default: True for the train split).
        hflip: allow horizontal flips when augmenting.
        in_memory, memory_limit_mb: decode the images once into memory when they fit (see ``TableDataset``).
    """

    def __init__(self, *, root: str, split: str = "all", test_class_fraction: float = 0.3, seed: int = 0,
                 image_size: int | Sequence[int] = 112, channels: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, augment: bool | None = None, hflip: bool = True,
                 in_memory: bool | None = None, memory_limit_mb: float = DEFAULT_MEMORY_LIMIT_MB) -> None:
        check_split(split)
        table = image_folder_to_table(root, test_class_fraction=None if split == "all" else test_class_fraction,
                                      seed=seed)
        super().__init__(table.select(None if split == "all" else split), image_size=image_size, channels=channels,
                         mean=mean, std=std, augment=split == "train" if augment is None else augment, hflip=hflip,
                         in_memory=in_memory, memory_limit_mb=memory_limit_mb)
