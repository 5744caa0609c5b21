import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from deepmetric import registry
from deepmetric.cli import app
from deepmetric.config import ConfigError
from deepmetric.eval.pipeline import evaluate, resolve_evaluation_config


def config_of(saved, tmp_path, **changes):
    folder = saved[0]
    return {"embeddings": str(folder / "emb.npy"), "labels": str(folder / "labels.csv"),
            "output_dir": str(tmp_path / "out"), "embedding_map": False, **changes}


def test_the_labels_csv_flags_make_the_queries_and_the_gallery(saved, tmp_path):
    _, x, labels, is_query, is_gallery = saved
    result = evaluate(config_of(saved, tmp_path))
    reference = registry.build({"name": "retrieval"}, "evaluator")
    assert result.metrics == pytest.approx(reference(x, labels, is_query=is_query, is_gallery=is_gallery))
    assert result.metrics["retrieval/num_queries"] == is_query.sum()
    assert result.metrics != pytest.approx(reference(x, labels))
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written == pytest.approx(result.metrics)
    saved_config = yaml.safe_load((tmp_path / "out" / "evaluation.yaml").read_text())
    assert saved_config == resolve_evaluation_config(config_of(saved, tmp_path))
    assert evaluate(dict(saved_config, output_dir=str(tmp_path / "again"))).metrics == pytest.approx(result.metrics)
    assert result.primary_metrics == ["retrieval/map@r"] and result.reports == [tmp_path / "out" / "report" /
                                                                                 "index.html"]


@pytest.mark.parametrize("metric", ["cosine", "dot", "euclidean"])
def test_an_exact_index_over_the_gallery_rows_loses_nothing(saved, tmp_path, metric):
    result = evaluate(config_of(saved, tmp_path, index="Flat", metric=metric))
    assert result.metrics["retrieval/ann_neighbour_recall"] == 1.0
    assert result.metrics["retrieval/map@r"] == pytest.approx(result.metrics["retrieval/exact/map@r"], abs=1e-6)


def test_several_protocols_share_one_metrics_file(saved, tmp_path):
    protocols = [{"name": "retrieval", "args": {"ks": [1, 2]}}, "clustering",
                 {"name": "verification", "args": {"num_bootstrap": 5}}]
    result = evaluate(config_of(saved, tmp_path, protocols=protocols))
    assert result.primary_metrics == ["retrieval/map@r", "clustering/nmi", "verification/tar@far=1e-3"]
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert {"retrieval/recall@2", "clustering/ami", "verification/auc"} <= set(written)
    for name in ("retrieval", "clustering", "verification"):
        assert (tmp_path / "out" / name / "report" / "index.html").is_file()


@pytest.mark.parametrize(("changes", "message"), [
    ({"protocol": ["retrieval"]}, r"unknown key 'protocol'. Did you mean 'protocols'"),
    ({"protocols": ["retreival"]}, r"protocols\[0\].name: unknown evaluator 'retreival'.*Did you mean 'retrieval'"),
    ({"protocols": [{"name": "retrieval", "args": {"k": 3}}]}, r"unknown argument 'protocols\[0\].args.k'.*'ks'"),
    ({"protocols": "retrieval"}, r"protocols must be a non-empty list"),
    ({"protocols": ["retrieval", "retrieval"]}, r"lists an evaluator twice"),
    ({"protocols": ["clustering"], "index": "Flat"}, r"index applies to the retrieval protocol"),
    ({"calibrate_far": 0.01, "protocols": ["verification"]}, r"calibrate_far needs .* a model folder"),
    ({"model": "somewhere"}, r"exactly one of 'embeddings'"),
    ({"labels": None}, r"need 'labels'"),
    ({"batch_size": 0}, r"batch_size must be >= 1"),
])
def test_config_mistakes_are_named(saved, tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        resolve_evaluation_config(config_of(saved, tmp_path, **changes))


def test_labels_that_do_not_fit_are_refused(saved, tmp_path):
    folder = saved[0]
    (tmp_path / "short.csv").write_text("label\n1\n2\n")
    with pytest.raises(ValueError, match="has 2 labels for 160 embeddings"):
        evaluate(config_of(saved, tmp_path, labels=str(tmp_path / "short.csv")))
    (tmp_path / "flags.csv").write_text("label,is_query\n" + "1,maybe\n" * 160)
    with pytest.raises(ValueError, match=r"flags.csv:2: is_query must be true/false"):
        evaluate(config_of(saved, tmp_path, labels=str(tmp_path / "flags.csv")))
    np.save(tmp_path / "wide.npy", np.zeros((160, 2)))
    with pytest.raises(ValueError, match=r"expected \(160,\), one per embedding"):
        evaluate(config_of(saved, tmp_path, labels=str(tmp_path / "wide.npy")))
    result = CliRunner().invoke(app, ["evaluate", str(folder / "emb.npy"), "--labels", str(tmp_path / "short.csv"),
                                      "-o", str(tmp_path / "cli")], env={"COLUMNS": "1000"})
    assert result.exit_code == 2 and "has 2 labels for 160 embeddings" in result.output


def test_a_model_folder_over_a_table_embeds_with_encode_and_honours_its_flags(tmp_path):
    """The CLI on a model folder and a CSV data set: Embedder.encode's embeddings, the table's queries."""
    from PIL import Image

    from deepmetric.models import build_embedder

    rng = np.random.default_rng(4)
    rows = ["path,label,split,is_query,is_gallery"]
    for i in range(30):
        pixels = np.clip(rng.normal(50 * (i % 3), 30, size=(12, 12, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{i % 3},test,{int(i < 10)},{int(i >= 5)}")
    (tmp_path / "table.csv").write_text("\n".join(rows) + "\n")
    data = {"name": "csv", "args": {"table": str(tmp_path / "table.csv"), "image_size": 12}}
    dataset = registry.build(data, "dataset")
    model = build_embedder({"backbone": {"name": "small_cnn", "args": {"width": 4, "stages": 2}},
                            "embedding_dim": 6, "preprocessing": dataset.preprocessing})
    model.save(tmp_path / "model")
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "model"), "--data", "csv", "--data-arg",
                                      f"table={tmp_path / 'table.csv'}", "--data-arg", "image_size=12",
                                      "--split", "test", "-o", str(tmp_path / "out"), "--batch-size", "7"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    embeddings = model.encode(dataset)
    expected = registry.build({"name": "retrieval"}, "evaluator")(
        embeddings, dataset.labels, is_query=dataset.is_query, is_gallery=dataset.is_gallery)
    assert metrics["retrieval/num_queries"] == 10
    assert metrics == pytest.approx(expected, abs=1e-6)
    assert (tmp_path / "out" / "report" / "retrieval_grid.png").is_file()
