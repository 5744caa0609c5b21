"""The benchmark engine end to end on a tiny set: table, targets section, plot and JSON are written."""

import json

import numpy as np

from deepmetric.index.bench import make_embeddings, run_benchmark


def test_embeddings_are_unit_norm_and_clustered():
    database, queries = make_embeddings(2000, 32, num_queries=100, seed=3)
    np.testing.assert_allclose(np.linalg.norm(database, axis=1), 1.0, rtol=1e-5)
    # A query's nearest neighbour is much closer than a random item: identities form clusters.
    scores = queries @ database.T
    assert np.median(scores.max(1)) > np.median(scores.mean(1)) + 0.3


def test_benchmark_writes_table_plot_and_json(tmp_path):
    report, plot = tmp_path / "ann.md", tmp_path / "ann.png"
    results = run_benchmark(n=1500, dim=16, num_queries=100, methods=["IVF", "HNSW hnswlib"],
                            report=str(report), plot=str(plot), log=lambda line: None)
    text = report.read_text()
    assert "| Flat, exact (ours) |" in text and "HNSW16 (hnswlib)" in text and "## Targets" in text
    # our exact search and faiss's flat index, side by side, with the ratio and the agreement of their ids
    flat = results["flat_vs_faiss"]
    assert flat["faiss_index"] == "IndexFlatIP" and flat["float32"]["ratio"] > 0
    assert flat["float32"]["same_ids"] >= 0.99 and "faiss / ours" in text
    assert plot.stat().st_size > 10_000
    saved = json.loads(report.with_suffix(".json").read_text())
    assert saved["n"] == 1500 and len(saved["methods"]) == 2
    for method in results["methods"]:
        recalls = [p["recall"] for p in method["points"]]
        assert max(recalls) >= 0.95 and all(0 <= r <= 1 for r in recalls)
        assert method["wrapper_vs_direct"]["ratio"] > 0


def test_cpu_description_names_cores_and_features():
    import os

    from deepmetric.index.bench import cpu_description
    from deepmetric.index.topk import bf16_is_native

    text = cpu_description()
    assert f"{os.cpu_count()} cores" in text and "AVX-512" in text
    assert ("no native bf16" not in text) == bf16_is_native()
