"""Face data in the formats people already have: LFW (``pairs.txt`` + image folders), insightface
verification ``.bin`` files (read with a restricted unpickler) and insightface ``train.rec``/``train.idx``
RecordIO training sets (read without MXNet).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepmetric.data.base import TransformedDataset, as_image_size, check_channels
from deepmetric.data.images import ImageError, load_image
from deepmetric.data.transforms import build_transforms
from deepmetric.io import load_plain_pickle
from deepmetric.registry import register

RECORDIO_MAGIC = 0xCED7230A
_IRHEADER = struct.Struct("<IfQQ")  # flag, label, id, id2 (mxnet.recordio.IRHeader)


def _face_preprocessing(image_size: int | Sequence[int], channels: int) -> dict[str, Any]:
    channels = check_channels(channels)
    # insightface normalises faces with (x - 127.5) / 127.5, i.e. mean = std = 0.5 on [0, 1] pixels.
    return {"image_size": as_image_size(image_size, 112), "channels": channels, "mean": [0.5] * channels,
            "std": [0.5] * channels}


def _decode(data: bytes, source: str) -> np.ndarray:
    try:
        return load_image(data)
    except ImageError as error:  # the decoder only knows the bytes; say which record they came from
        raise type(error)(f"{source}: {error}") from error


class _PathLoader:
    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __call__(self, index: int) -> np.ndarray:
        return load_image(self.paths[index])


class _BytesLoader:
    def __init__(self, encoded: list[bytes], source: str) -> None:
        self.encoded = encoded
        self.source = source

    def __call__(self, index: int) -> np.ndarray:
        return _decode(self.encoded[index], f"{self.source} image {index}")


@dataclass(frozen=True)
class VerificationPairs:
    """Pairs over a set of images: ``(first[i], second[i])`` show the same identity when ``same[i]``;
    ``fold[i]`` is the cross-validation fold of the pair (LFW: 10 folds)."""

    first: np.ndarray
    second: np.ndarray
    same: np.ndarray
    fold: np.ndarray

    def __len__(self) -> int:
        return len(self.same)


class PairImages(TransformedDataset):
    """The unique images of a verification set, items ``(image (C, H, W), label)`` (label: identity index,
    or -1 when the format does not say), with ``pairs`` (a ``VerificationPairs`` indexing these items)."""

    def __init__(self, *, loader: Any, count: int, labels: np.ndarray, pairs: VerificationPairs,
                 preprocessing: dict[str, Any], class_names: list[str], paths: list[str] | None = None) -> None:
        self._loader = loader
        self._count = count
        self.labels = np.asarray(labels, np.int64)
        self.num_classes = len(class_names)
        self.class_names = class_names
        self.pairs = pairs
        self.paths = paths
        self.preprocessing = preprocessing
        self.transform = build_transforms(preprocessing, train=False)

    def __len__(self) -> int:
        return self._count

    def raw_image(self, index: int) -> np.ndarray:
        return self._loader(index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.raw_image(index)), int(self.labels[index])


def read_lfw_pairs(pairs_file: str | os.PathLike, images_root: str | os.PathLike, *,
                   extension: str = ".jpg") -> tuple[list[str], VerificationPairs, list[str]]:
    """Parse LFW's ``pairs.txt``: a header ``folds pairs_per_fold`` (or one count), then lines
    ``name n1 n2`` (same person) or ``name1 n1 name2 n2`` (different people); image ``n`` of ``name`` is
    ``images_root/name/name_{n:04d}.jpg``. Returns (unique image paths, pairs, identity names)."""
    pairs_file, images_root = Path(pairs_file), Path(images_root)
    if not pairs_file.is_file():
        raise FileNotFoundError(f"LFW pairs file not found: {pairs_file}")
    lines = [line.split() for line in pairs_file.read_text().splitlines() if line.strip()]
    if not lines:
        raise ValueError(f"{pairs_file} is empty")
    header = lines[0]
    try:
        folds, per_fold = (int(header[0]), int(header[1])) if len(header) == 2 else (1, int(header[0]))
    except ValueError:
        raise ValueError(f"{pairs_file}:1: expected a header 'folds pairs_per_fold', "
                         f"got {' '.join(header)!r}") from None
    body = lines[1:]
    # Each fold holds per_fold same pairs then per_fold different pairs.
    if len(body) != folds * per_fold * 2 and len(body) != folds * per_fold:
        raise ValueError(f"{pairs_file}: header announces {folds} fold(s) x {per_fold} pairs but the file has "
                         f"{len(body)} pair lines")
    pair_lines_per_fold = len(body) // folds
    paths: dict[str, int] = {}
    names: dict[str, int] = {}
    first, second, same, fold = [], [], [], []

    def image(name: str, number: str, line: int) -> int:
        try:
            path = images_root / name / f"{name}_{int(number):04d}{extension}"
        except ValueError:
            raise ValueError(f"{pairs_file}:{line}: image number must be an integer, got {number!r}") from None
        if not path.is_file():
            raise FileNotFoundError(f"{pairs_file}:{line}: image {path} does not exist")
        names.setdefault(name, len(names))
        return paths.setdefault(str(path), len(paths))

    for offset, parts in enumerate(body):
        line = offset + 2
        if len(parts) == 3:
            a, b, is_same = image(parts[0], parts[1], line), image(parts[0], parts[2], line), True
        elif len(parts) == 4:
            a, b, is_same = image(parts[0], parts[1], line), image(parts[2], parts[3], line), False
        else:
            raise ValueError(f"{pairs_file}:{line}: expected 'name n1 n2' or 'name1 n1 name2 n2', got {parts}")
        first.append(a)
        second.append(b)
        same.append(is_same)
        fold.append(offset // pair_lines_per_fold)
    pairs = VerificationPairs(np.asarray(first, np.int64), np.asarray(second, np.int64), np.asarray(same, bool),
                              np.asarray(fold, np.int64))
    return list(paths), pairs, list(names)


@register("dataset", "lfw_pairs", example={"root": "lfw", "pairs_file": "pairs.txt"})
class LFWPairs(PairImages):
    """Labeled Faces in the Wild (Huang et al. 2007) verification pairs from ``pairs.txt`` and the image folders.

    Args:
        root: folder with one sub-folder per person (e.g. ``lfw`` or the aligned ``lfw-deepfunneled``).
        pairs_file: the pairs list (default ``root/../pairs.txt`` or ``root/pairs.txt``).
        image_size: model input size (default 112).
        channels: 1 or 3.
        split: accepted for the common data-set interface; only ``"test"`` (verification) is meaningful.
    """

    def __init__(self, *, root: str, pairs_file: str | None = None, image_size: int | Sequence[int] = 112,
                 channels: int = 3, split: str = "test") -> None:
        if split != "test":
            raise ValueError(f"LFW pairs are a test set: split must be 'test', got {split!r}")
        root_path = Path(root)
        if pairs_file is None:
            candidates = [root_path / "pairs.txt", root_path.parent / "pairs.txt"]
            found = [c for c in candidates if c.is_file()]
            if not found:
                raise FileNotFoundError(f"no pairs.txt in {root_path} or its parent; pass pairs_file=")
            pairs_file = str(found[0])
        paths, pairs, names = read_lfw_pairs(pairs_file, root_path)
        person = {name: index for index, name in enumerate(names)}
        labels = np.asarray([person[Path(p).parent.name] for p in paths], np.int64)
        super().__init__(loader=_PathLoader(paths), count=len(paths), labels=labels, pairs=pairs,
                         preprocessing=_face_preprocessing(image_size, channels), class_names=names, paths=paths)


def read_verification_bin(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """Read an insightface verification file (lfw.bin, cfp_fp.bin, agedb_30.bin, ...): a pickle of
    ``(encoded_images, issame)`` with ``2 * len(issame)`` JPEG/PNG byte strings. Returns (images, same)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"verification file not found: {path}")
    content = load_plain_pickle(path, encoding="bytes")
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise ValueError(f"{path}: expected (images, issame), got a {type(content).__name__}")
    images, issame = content
    if not isinstance(images, list) or not all(isinstance(b, (bytes, bytearray)) for b in images):
        raise ValueError(f"{path}: the first element must be a list of encoded images (bytes)")
    if not isinstance(issame, (list, tuple)) or not all(isinstance(v, (bool, int)) for v in issame):
        raise ValueError(f"{path}: the second element must be a list of booleans")
    if len(images) != 2 * len(issame):
        raise ValueError(f"{path}: {len(images)} images for {len(issame)} pairs; expected twice as many images")
    return [bytes(b) for b in images], np.asarray(issame, bool)


@register("dataset", "verification_bin", example={"path": "lfw.bin"})
class VerificationBin(PairImages):
    """An insightface verification ``.bin`` (LFW, CFP-FP, AgeDB-30, ...): images ``2i`` and ``2i + 1`` form
    pair ``i``; ten folds of consecutive pairs as in insightface's evaluation. Labels are -1 (unknown).

    Args:
        path: the .bin file.
        image_size: model input size (default 112).
        channels: 1 or 3.
        folds: number of cross-validation folds.
        split: only ``"test"``.
    """

    def __init__(self, *, path: str, image_size: int | Sequence[int] = 112, channels: int = 3, folds: int = 10,
                 split: str = "test") -> None:
        if split != "test":
            raise ValueError(f"verification files are test sets: split must be 'test', got {split!r}")
        encoded, same = read_verification_bin(path)
        count = len(same)
        pairs = VerificationPairs(np.arange(0, 2 * count, 2), np.arange(1, 2 * count, 2), same,
                                  (np.arange(count) * folds // max(count, 1)).astype(np.int64))
        super().__init__(loader=_BytesLoader(encoded, str(path)),
                         count=len(encoded), labels=np.full(len(encoded), -1, np.int64), pairs=pairs,
                         preprocessing=_face_preprocessing(image_size, channels), class_names=[])


# ---------------------------------------------------------------------------------------------- RecordIO
@dataclass(frozen=True)
class IRHeader:
    """The header mxnet.recordio puts before each image: ``flag`` > 0 means ``label`` is a float vector of
    that length stored after the header."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def unpack_record(record: bytes) -> tuple[IRHeader, bytes]:
    """Split a record into its IRHeader and payload (mxnet.recordio.unpack without MXNet)."""
    if len(record) < _IRHEADER.size:
        raise ValueError(f"record of {len(record)} bytes is shorter than an IRHeader ({_IRHEADER.size})")
    flag, label, id1, id2 = _IRHEADER.unpack_from(record)
    payload = record[_IRHEADER.size:]
    if flag > 0:
        if len(payload) < 4 * flag:
            raise ValueError(f"record header announces {flag} labels but the record is too short")
        vector = np.frombuffer(payload, dtype="<f4", count=flag).copy()
        return IRHeader(flag, vector, id1, id2), payload[4 * flag:]
    return IRHeader(flag, float(label), id1, id2), payload


class RecordIOReader:
    """Random access to a dmlc RecordIO file (``train.rec``) through its index (``train.idx``: lines
    ``key<TAB>offset``). Each record is ``magic 0xced7230a | lrecord | data | padding to 4 bytes`` where
    ``lrecord`` holds a 3-bit continuation flag and a 29-bit length; records the writer split at embedded
    magic numbers are joined back with the magic in between. Safe to use in DataLoader workers (the file
    is reopened in each process)."""

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> None:
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise FileNotFoundError(f"RecordIO file not found: {self.rec_path}")
        idx = Path(idx_path) if idx_path is not None else self.rec_path.with_suffix(".idx")
        self.offsets: dict[int, int] = self._read_index(idx) if idx.is_file() else self._scan()
        self.keys = sorted(self.offsets)
        self._handle: Any = None
        self._pid: int | None = None

    @staticmethod
    def _read_index(idx: Path) -> dict[int, int]:
        offsets = {}
        for number, line in enumerate(idx.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2:
                raise ValueError(f"{idx}:{number}: expected 'key<TAB>offset', got {line!r}")
            offsets[int(parts[0])] = int(parts[1])
        return offsets

    def _scan(self) -> dict[int, int]:
        """Without an index, records are numbered 0, 1, ... in file order."""
        offsets, position, key = {}, 0, 0
        with open(self.rec_path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            while position < size:
                offsets[key] = position
                self._read_at(handle, position)
                position = handle.tell()
                key += 1
        return offsets

    def _file(self) -> Any:
        if self._handle is None or self._pid != os.getpid():
            self._handle = open(self.rec_path, "rb")  # noqa: SIM115 - kept open for random reads, one per process
            self._pid = os.getpid()
        return self._handle

    def _read_at(self, handle: Any, offset: int) -> bytes:
        handle.seek(offset)
        parts = []
        while True:
            head = handle.read(8)
            if len(head) < 8:
                raise ValueError(f"{self.rec_path}: truncated record at offset {offset}")
            magic, lrecord = struct.unpack("<II", head)
            if magic != RECORDIO_MAGIC:
                raise ValueError(f"{self.rec_path}: bad magic 0x{magic:08x} at offset {handle.tell() - 8} "
                                 f"(expected 0x{RECORDIO_MAGIC:08x}); wrong offset or not a RecordIO file")
            flag, length = lrecord >> 29, lrecord & ((1 << 29) - 1)
            data = handle.read(length)
            if len(data) < length:
                raise ValueError(f"{self.rec_path}: truncated record at offset {offset}")
            handle.seek((4 - length % 4) % 4, os.SEEK_CUR)
            parts.append(data)
            if flag in (0, 3):
                break
            if flag not in (1, 2):
                raise ValueError(f"{self.rec_path}: invalid continuation flag {flag} at offset {offset}")
        return struct.pack("<I", RECORDIO_MAGIC).join(parts)

    def read(self, key: int) -> bytes:
        if key not in self.offsets:
            raise KeyError(f"{self.rec_path} has no record with key {key}")
        return self._read_at(self._file(), self.offsets[key])

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handle"] = None
        return state

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _first_label(header: IRHeader) -> int:
    return int(header.label[0]) if isinstance(header.label, np.ndarray) else int(header.label)


@register("dataset", "insightface_rec", example={"root": "faces_emore"})
class InsightFaceRecord(TransformedDataset):
    """An insightface training set (``train.rec`` + ``train.idx``, e.g. MS1MV2 / Glint360K), read without
    MXNet. Record 0 may be a header whose label ``(a, b)`` says images are keys ``1..a-1`` and keys
    ``a..b-1`` are per-identity records holding each identity's image key range; otherwise every record is
    an image whose label (or first label) is the identity.

    Args:
        root: folder with ``train.rec`` and ``train.idx``.
        image_size: model input size (default 112).
        channels: 1 or 3.
        augment: training augmentations (flip allowed for faces).
        split: only ``"train"``.
    """

    def __init__(self, *, root: str, image_size: int | Sequence[int] = 112, channels: int = 3,
                 augment: bool = True, split: str = "train") -> None:
        if split != "train":
            raise ValueError(f"RecordIO face sets are training sets: split must be 'train', got {split!r}")
        folder = Path(root)
        self.reader = RecordIOReader(folder / "train.rec", folder / "train.idx")
        header, _ = unpack_record(self.reader.read(self.reader.keys[0]))
        if header.flag > 0 and isinstance(header.label, np.ndarray) and len(header.label) >= 2:
            first_identity, end_identity = int(header.label[0]), int(header.label[1])
            image_keys, labels = [], []
            for identity, key in enumerate(range(first_identity, end_identity)):
                ident_header, _ = unpack_record(self.reader.read(key))
                start, stop = int(ident_header.label[0]), int(ident_header.label[1])
                image_keys.extend(range(start, stop))
                labels.extend([identity] * (stop - start))
            if not image_keys:  # a header without identity records: images are keys 1..a-1
                image_keys = list(range(1, first_identity))
                labels = [_first_label(unpack_record(self.reader.read(k))[0]) for k in image_keys]
        else:
            image_keys = list(self.reader.keys)
            labels = [_first_label(unpack_record(self.reader.read(k))[0]) for k in image_keys]
        self.keys = np.asarray(image_keys, np.int64)
        raw = np.asarray(labels, np.int64)
        kept = np.unique(raw)
        self.class_ids = [int(c) for c in kept]
        self.labels = np.searchsorted(kept, raw).astype(np.int64)
        self.num_classes = len(kept)
        self.class_names = [str(c) for c in self.class_ids]
        self.preprocessing = _face_preprocessing(image_size, channels)
        self.augment = bool(augment)
        self.transform = build_transforms(self.preprocessing, train=self.augment, hflip=True)

    def __len__(self) -> int:
        return len(self.keys)

    def raw_image(self, index: int) -> np.ndarray:
        key = int(self.keys[index])
        _, payload = unpack_record(self.reader.read(key))
        return _decode(payload, f"{self.reader.rec_path} record {key}")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.raw_image(index)), int(self.labels[index])
