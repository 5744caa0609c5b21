"""Input validation, knobs, 'auto' spec selection, the tuner and the CLI."""

import numpy as np
import pytest
from typer.testing import CliRunner

from deepmetric.index import build_index, choose_spec, load_index
from deepmetric.index.tuning import knob_grid, tune


@pytest.mark.parametrize("call,message", [
    (lambda: build_index("HNSW32", 0), "dim must be a positive integer"),
    (lambda: build_index("HNSW32", 8, metric="hamming"), "metric must be one of"),
    (lambda: build_index("HNSW32", 8, backend="milvus"), "backend must be one of"),
    (lambda: build_index("Bogus99", 8), "faiss cannot build spec 'Bogus99'"),
    (lambda: build_index("HNSWx", 8, backend="hnswlib"), "hnswlib spec must look like"),
    (lambda: build_index("Annoy", 8), "annoy spec must look like"),
    (lambda: build_index("HNSW32,nprobe=4", 8), "unknown build option"),
    (lambda: build_index("auto", 8), "needs num_vectors"),
    (lambda: build_index("Flat", 8, backend="exact").set_params("nprobe=4"), "unknown knob"),
    (lambda: build_index("HNSW8", 8, backend="hnswlib").set_params("efSearch"), "name=value"),
])
def test_bad_arguments_name_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_bad_vectors_are_refused():
    index = build_index("Flat", 4, backend="exact")
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        index.add(np.zeros((3, 5), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.array([[1, 0, 0, np.nan]], np.float32))
    with pytest.raises(ValueError, match="all-zero row"):
        index.add(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="3 ids but there are 2 vectors"):
        index.add(np.eye(4, dtype=np.float32)[:2], ids=[1, 2, 3])
    with pytest.raises(TypeError, match="integers"):
        index.add(np.eye(4, dtype=np.float32)[:2], ids=[1.5, 2.5])
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(np.eye(4, dtype=np.float32), k=0)
    untrained = build_index("IVF4,Flat", 4)
    with pytest.raises(ValueError, match="must be trained"):
        untrained.add(np.eye(4, dtype=np.float32))


def test_empty_index_returns_missing():
    result = build_index("HNSW8", 4, backend="hnswlib").search(np.eye(4, dtype=np.float32), k=2)
    assert (result.ids == -1).all() and np.isneginf(result.scores).all()


def test_auto_picks_by_size_and_budget():
    assert choose_spec(50_000, 128) == ("Flat", "exact")
    spec, backend = choose_spec(5_000_000, 128, memory_budget=8 * 2**30)
    assert spec.startswith("HNSW32") and backend == "faiss"
    spec, backend = choose_spec(100_000_000, 128, memory_budget=8 * 2**30)
    assert spec == "IVF32768,PQ64" and backend == "faiss"  # 100M x (64 + 8) B = 7.2 GB
    assert choose_spec(100_000_000, 128, memory_budget=3 * 2**30)[0] == "IVF32768,PQ16"
    with pytest.raises(ValueError, match="too small"):
        choose_spec(100_000_000, 128, memory_budget=2**20)
    index = build_index("auto", 16, num_vectors=1000)
    assert index.backend == "exact"


def test_tuner_finds_cheapest_setting_reaching_target(data):
    database, queries, ids = data
    index = build_index("IVF32,Flat", database.shape[1])
    index.train(database)
    index.add(database, ids)
    result = tune(index, queries, target_recall=0.99)
    assert result.knobs is not None and result.recall >= 0.99
    # Independent check of the chosen setting against numpy brute force.
    truth = ids[np.argmax(queries @ database.T, axis=1)]
    assert (index.search(queries, 1).ids[:, 0] == truth).mean() >= 0.99
    # The cheapest: the next smaller nprobe (if tried) misses the target.
    chosen = int(result.knobs.split("=")[1])
    smaller = [p for p in result.tried if int(p.knobs.split("=")[1]) < chosen]
    assert all(p.recall < 0.99 for p in smaller)
    assert knob_grid(index)[0] == "nprobe=1"


def test_cli_build_search_tune(tmp_path, data):
    from deepmetric.cli import app

    database, queries, ids = data
    np.save(tmp_path / "emb.npy", database)
    np.save(tmp_path / "ids.npy", ids)
    np.save(tmp_path / "q.npy", queries[:5])
    runner = CliRunner()
    built = runner.invoke(app, ["index", "build", str(tmp_path / "emb.npy"), "-o", str(tmp_path / "idx"),
                                "--spec", "HNSW16", "--backend", "hnswlib", "--ids", str(tmp_path / "ids.npy")])
    assert built.exit_code == 0, built.output
    searched = runner.invoke(app, ["index", "search", str(tmp_path / "idx"), str(tmp_path / "q.npy"), "-k", "3",
                                   "-o", str(tmp_path / "out.npz")])
    assert searched.exit_code == 0, searched.output
    with np.load(tmp_path / "out.npz", allow_pickle=False) as out:
        assert out["ids"].shape == (5, 3) and np.isin(out["ids"], ids).all()
    tuned = runner.invoke(app, ["index", "tune", str(tmp_path / "idx"), str(tmp_path / "q.npy"),
                                "--target-recall", "0.9"])
    assert tuned.exit_code == 0, tuned.output
    assert "efSearch" in load_index(tmp_path / "idx").knobs
