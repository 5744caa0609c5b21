"""``deepmetric evaluate --metric M --index SPEC``: one metric vocabulary from the CLI to every backend, so each
metric (and alias) works with each index spec, and the ANN result is scored against the exact search."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from deepmetric.cli import app

SPECS = ["Flat", "HNSW32", "Annoy10"]  # our exact engine, faiss, annoy
METRICS = ["cosine", "dot", "euclidean", "ip", "l2"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("emb")
    rng = np.random.default_rng(0)
    labels = np.arange(300) % 10
    x = (rng.normal(size=(10, 8))[labels] + 0.6 * rng.normal(size=(300, 8))).astype(np.float32)
    x *= rng.uniform(0.5, 2.0, size=(300, 1)).astype(np.float32)  # dot and euclidean see the norms
    np.save(folder / "emb.npy", x)
    np.save(folder / "labels.npy", labels)
    return folder


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("metric", METRICS)
def test_evaluate_every_metric_through_every_index(saved, tmp_path, metric, spec):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["evaluate", str(saved / "emb.npy"), "--labels", str(saved / "labels.npy"),
                                      "-p", "retrieval", "-o", str(out), "--no-map", "--metric", metric,
                                      "--index", spec])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    recall = next(value for key, value in metrics.items() if key.endswith("ann_neighbour_recall"))
    # exact search through the index finds the exact neighbours (up to float32 near-ties); the ANN ones most
    assert recall >= (0.99 if spec == "Flat" else 0.8)
    assert 0 <= next(value for key, value in metrics.items() if key.endswith("/map@r")) <= 1


@pytest.mark.parametrize("spec,backend", [("Flat", None), ("HNSW32", "faiss"), ("HNSW16", "hnswlib"),
                                          ("Annoy10", None)])
@pytest.mark.parametrize("metric", METRICS)
def test_retrieval_evaluator_through_every_backend(saved, metric, spec, backend):
    from deepmetric.eval.evaluators import RetrievalEvaluator
    from deepmetric.index import build_index

    x, labels = np.load(saved / "emb.npy"), np.load(saved / "labels.npy")
    index = build_index(spec, x.shape[1], metric=metric, backend=backend)
    index.add(x, ids=np.arange(len(x)))
    metrics = RetrievalEvaluator(metric=metric, index=index)(x, labels)
    assert metrics["retrieval/ann_neighbour_recall"] >= (0.99 if spec == "Flat" else 0.8)
    if spec == "Flat":
        assert abs(metrics["retrieval/ann_map@r_loss"]) < 1e-3
