"""Save/load round trips keep ids, tombstones and knobs; damaged, truncated and foreign files are refused."""

import json

import numpy as np
import pytest

from deepmetric.index import IndexFormatError, build_index, load_index

SPECS = [("Flat", "exact"), ("IVF16,Flat", "faiss"), ("HNSW16", "faiss"), ("HNSW16", "hnswlib"), ("Annoy5", "annoy")]


@pytest.mark.parametrize("spec,backend", SPECS)
def test_round_trip_keeps_ids_tombstones_and_knobs(tmp_path, data, spec, backend):
    database, queries, ids = data
    index = build_index(spec, database.shape[1], backend=backend)
    index.train(database)
    index.add(database[:1500], ids[:1500])
    index.remove(ids[:100])
    if index.knob_names():
        first = index.knob_names()[0]
        index.set_params({first: 64 if first != "search_k" else 4000})
    before = index.search(queries, k=5)
    index.save(tmp_path / "saved")
    loaded = load_index(tmp_path / "saved")
    after = loaded.search(queries, k=5)
    np.testing.assert_array_equal(after.ids, before.ids)
    np.testing.assert_allclose(after.scores, before.scores, rtol=1e-5)
    assert loaded.knobs == index.knobs and len(loaded) == 1400 and ids[0] not in loaded
    # The loaded index keeps working: add the rest, remove more, search again.
    loaded.add(database[1500:], ids[1500:])
    loaded.remove(ids[100:200])
    result = loaded.search(database[1500:1510], k=1)
    np.testing.assert_array_equal(result.ids[:, 0], ids[1500:1510])
    assert not np.isin(loaded.search(queries, k=10).ids, ids[:200]).any()


@pytest.mark.parametrize("spec,backend", [("Flat", "exact"), ("IVF16,Flat", "faiss"), ("Flat", "faiss")])
def test_memory_mapped_load(tmp_path, data, spec, backend):
    database, queries, ids = data
    index = build_index(spec, database.shape[1], backend=backend)
    index.train(database)
    index.add(database, ids)
    index.save(tmp_path / "saved")
    mapped = load_index(tmp_path / "saved", mmap=True)
    np.testing.assert_array_equal(mapped.search(queries, 3).ids, index.search(queries, 3).ids)


@pytest.fixture
def saved(tmp_path, data):
    database, _, ids = data
    index = build_index("HNSW16", database.shape[1], backend="hnswlib")
    index.add(database[:300], ids[:300])
    index.save(tmp_path / "saved")
    return tmp_path / "saved"


def test_truncated_file_is_refused(saved):
    target = saved / "hnswlib.bin"
    target.write_bytes(target.read_bytes()[:-100])
    with pytest.raises(IndexFormatError, match="truncated"):
        load_index(saved)


def test_corrupt_file_is_refused(saved):
    target = saved / "external_ids.bin"
    raw = bytearray(target.read_bytes())
    raw[10] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(IndexFormatError, match="SHA-256"):
        load_index(saved)


def test_foreign_and_future_files_are_refused(tmp_path, saved):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "index.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(IndexFormatError, match="not a deepmetric index"):
        load_index(foreign)
    (tmp_path / "plain.bin").write_bytes(b"\x00" * 64)
    with pytest.raises(IndexFormatError, match="not a deepmetric index"):
        load_index(tmp_path / "plain.bin")
    (foreign / "index.json").write_text("{not json")
    with pytest.raises(IndexFormatError, match="corrupt"):
        load_index(foreign)
    manifest = json.loads((saved / "index.json").read_text())
    manifest["format_version"] = 99
    (saved / "index.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="version 99"):
        load_index(saved)
    with pytest.raises(FileNotFoundError):
        load_index(tmp_path / "missing")
