import io
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from deepmetric import registry
from deepmetric.data.faces import RECORDIO_MAGIC, RecordIOReader, read_lfw_pairs, read_verification_bin, unpack_record


def png_bytes(value, size=(6, 5)):
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, 255 - value, 7)).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ LFW
def make_lfw(tmp_path):
    people = {"Ann_Lee": 3, "Bo_Chu": 2, "Cy_Dee": 1}
    for index, (name, count) in enumerate(people.items()):
        (tmp_path / "lfw" / name).mkdir(parents=True)
        for n in range(1, count + 1):
            Image.new("RGB", (8, 8), (index * 60, n * 50, 0)).save(tmp_path / "lfw" / name / f"{name}_{n:04d}.jpg")
    (tmp_path / "pairs.txt").write_text(
        "2\t1\n"
        "Ann_Lee\t1\t2\n"
        "Ann_Lee\t3\tCy_Dee\t1\n"
        "Bo_Chu\t1\t2\n"
        "Bo_Chu\t2\tAnn_Lee\t1\n")
    return tmp_path


def test_lfw_pairs_parsing(tmp_path):
    root = make_lfw(tmp_path)
    paths, pairs, names = read_lfw_pairs(root / "pairs.txt", root / "lfw")
    assert names == ["Ann_Lee", "Cy_Dee", "Bo_Chu"]
    assert [os.path.basename(p) for p in paths] == ["Ann_Lee_0001.jpg", "Ann_Lee_0002.jpg", "Ann_Lee_0003.jpg",
                                                    "Cy_Dee_0001.jpg", "Bo_Chu_0001.jpg", "Bo_Chu_0002.jpg"]
    assert pairs.same.tolist() == [True, False, True, False]
    assert pairs.fold.tolist() == [0, 0, 1, 1]
    assert pairs.first.tolist() == [0, 2, 4, 5] and pairs.second.tolist() == [1, 3, 5, 0]


def test_lfw_dataset_items_and_errors(tmp_path):
    root = make_lfw(tmp_path)
    data = registry.build({"name": "lfw_pairs", "args": {"root": str(root / "lfw"), "image_size": 16}}, "dataset")
    assert len(data) == 6 and len(data.pairs) == 4 and data.num_classes == 3
    assert data.labels.tolist() == [0, 0, 0, 1, 2, 2]  # identities in order of appearance: Ann, Cy, Bo
    assert data.class_names == ["Ann_Lee", "Cy_Dee", "Bo_Chu"]
    assert data[0][0].shape == (3, 16, 16)
    (root / "pairs.txt").write_text("1\t1\nAnn_Lee\t1\t9\n")
    with pytest.raises(FileNotFoundError, match=r"pairs\.txt:2: image .*Ann_Lee_0009\.jpg"):
        read_lfw_pairs(root / "pairs.txt", root / "lfw")
    (root / "pairs.txt").write_text("1\t2\nAnn_Lee\t1\t2\n")
    with pytest.raises(ValueError, match="announces 1 fold"):
        read_lfw_pairs(root / "pairs.txt", root / "lfw")


# ------------------------------------------------------------------------------------ verification .bin
def test_verification_bin_round_trip(tmp_path):
    images = [png_bytes(v) for v in (0, 50, 100, 150)]
    path = tmp_path / "lfw.bin"
    for protocol in (2, 4):
        path.write_bytes(pickle.dumps((images, [True, False]), protocol=protocol))
        encoded, same = read_verification_bin(path)
        assert encoded == images and same.tolist() == [True, False]
    data = registry.build({"name": "verification_bin", "args": {"path": str(path), "image_size": 8, "folds": 2}},
                          "dataset")
    assert data.pairs.first.tolist() == [0, 2] and data.pairs.second.tolist() == [1, 3]
    assert data.pairs.fold.tolist() == [0, 1] and (data.labels == -1).all()
    assert data.raw_image(1)[0, 0].tolist() == [50, 205, 7]
    assert data[3][0].shape == (3, 8, 8)


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/deepmetric-pwned",))


def test_verification_bin_refuses_pickles_with_callables(tmp_path):
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([b"x", Payload()], [True])))
    with pytest.raises(ValueError, match=r"refusing to load posix\.system"):
        read_verification_bin(path)
    path.write_bytes(pickle.dumps(([b"a", b"b"], np.array([True]))))
    with pytest.raises(ValueError, match="refusing to load numpy"):
        read_verification_bin(path)
    path.write_bytes(pickle.dumps(([b"a", b"b", b"c"], [True])))
    with pytest.raises(ValueError, match="3 images for 1 pairs"):
        read_verification_bin(path)
    path.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match=r"evil\.bin"):
        read_verification_bin(path)
    path.write_bytes(pickle.dumps(([b"a", b"b"], [True]), protocol=2).replace(b"latin1", b"rot_13"))
    with pytest.raises(ValueError, match=r"refusing _codecs\.encode"):
        read_verification_bin(path)


# ------------------------------------------------------------------------------------------- RecordIO
def write_record(handle, data):
    """dmlc RecordIOWriter: split at 4-byte-aligned occurrences of the magic (flags 1/2/3), pad to 4."""
    magic = struct.pack("<I", RECORDIO_MAGIC)
    start, parts = 0, []
    for i in range(0, (len(data) // 4) * 4, 4):
        if data[i:i + 4] == magic:
            parts.append(data[start:i])
            start = i + 4
    parts.append(data[start:])
    offset = handle.tell()
    for k, part in enumerate(parts):
        flag = 0 if len(parts) == 1 else (1 if k == 0 else (3 if k == len(parts) - 1 else 2))
        handle.write(magic + struct.pack("<I", (flag << 29) | len(part)) + part)
    handle.write(b"\0" * ((4 - len(parts[-1]) % 4) % 4))
    return offset


def pack(label, payload, key=0):
    """mxnet.recordio.pack: IRHeader(flag, label, id, id2), label vectors stored after the header."""
    if np.ndim(label) == 0:
        return struct.pack("<IfQQ", 0, float(label), key, 0) + payload
    vector = np.asarray(label, "<f4")
    return struct.pack("<IfQQ", len(vector), 0.0, key, 0) + vector.tobytes() + payload


def write_rec(folder, records):
    folder.mkdir(exist_ok=True)
    with open(folder / "train.rec", "wb") as rec, open(folder / "train.idx", "w") as idx:
        for key, record in records:
            idx.write(f"{key}\t{write_record(rec, record)}\n")


def test_recordio_round_trip_with_embedded_magic(tmp_path):
    magic = struct.pack("<I", RECORDIO_MAGIC)
    records = [(0, b"abc"), (1, b"abcd" + magic + b"efgh" + magic + b"ij"), (2, magic), (3, b""), (4, b"x" * 37)]
    write_rec(tmp_path, records)
    reader = RecordIOReader(tmp_path / "train.rec", tmp_path / "train.idx")
    assert [reader.read(k) for k in reader.keys] == [r for _, r in records]
    (tmp_path / "train.idx").unlink()  # without an index, records are found by scanning
    scanned = RecordIOReader(tmp_path / "train.rec")
    assert [scanned.read(k) for k in scanned.keys] == [r for _, r in records]
    with pytest.raises(KeyError, match="no record with key 9"):
        reader.read(9)


def test_recordio_rejects_bad_magic(tmp_path):
    (tmp_path / "train.rec").write_bytes(b"\x00" * 16)
    (tmp_path / "train.idx").write_text("0\t0\n")
    with pytest.raises(ValueError, match="bad magic"):
        RecordIOReader(tmp_path / "train.rec").read(0)


def test_unpack_record_scalar_and_vector_labels():
    header, payload = unpack_record(pack(3.0, b"img", key=7))
    assert header.flag == 0 and header.label == 3.0 and header.id == 7 and payload == b"img"
    header, payload = unpack_record(pack([5.0, 9.0], b"rest"))
    assert header.flag == 2 and header.label.tolist() == [5.0, 9.0] and payload == b"rest"


def test_insightface_rec_with_identity_header(tmp_path):
    # Layout written by insightface's im2rec: record 0 header label (first identity key, end key);
    # images at keys 1..4, identity records at keys 5, 6 holding image key ranges.
    images = [png_bytes(v) for v in (10, 20, 30, 40)]
    records = [(0, pack([5.0, 7.0], b""))]
    records += [(k + 1, pack([float(label), 0.0], images[k])) for k, label in enumerate([0, 0, 1, 1])]
    records += [(5, pack([1.0, 3.0], b"")), (6, pack([3.0, 5.0], b""))]
    write_rec(tmp_path, records)
    data = registry.build({"name": "insightface_rec", "args": {"root": str(tmp_path), "image_size": 8,
                                                               "augment": False}}, "dataset")
    assert len(data) == 4 and data.num_classes == 2 and data.labels.tolist() == [0, 0, 1, 1]
    assert data.raw_image(2)[0, 0].tolist() == [30, 225, 7]
    assert data[0][0].shape == (3, 8, 8)


def test_insightface_rec_without_header_uses_record_labels(tmp_path):
    records = [(k, pack(float(label), png_bytes(k * 10))) for k, label in enumerate([4, 2, 4])]
    write_rec(tmp_path, records)
    data = registry.build({"name": "insightface_rec", "args": {"root": str(tmp_path)}}, "dataset")
    assert data.labels.tolist() == [1, 0, 1] and data.class_ids == [2, 4]
