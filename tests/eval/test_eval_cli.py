import json

import numpy as np
import pytest
from typer.testing import CliRunner

from deepmetric.cli import app


@pytest.mark.parametrize("protocol,primary,figure", [
    ("verification", "verification/tar@far=1e-3", "det.png"),
    ("identification", "identification/rank@1", "distractors.png"),
    ("retrieval", "retrieval/map@r", "recall_at_k.png"),
    ("fewshot", "fewshot/5way1shot/accuracy", None),
    ("clustering", "clustering/nmi", None),
])
def test_evaluate_writes_metrics_and_report(saved, tmp_path, protocol, primary, figure):
    out, folder = tmp_path / protocol, saved[0]
    result = CliRunner().invoke(app, ["evaluate", str(folder / "emb.npy"), "--labels", str(folder / "labels.npy"),
                                      "-p", protocol, "-o", str(out), "--no-map", "--distractors", "100",
                                      "--bootstrap", "10"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics[primary] <= 1
    page = (out / "report" / "index.html").read_text()
    assert primary in page
    if figure:
        assert (out / "report" / figure).stat().st_size > 1000 and figure in page


def test_embedding_map_and_csv_labels_with_thumbnails_and_query_gallery_flags(saved, tmp_path):
    from PIL import Image

    folder, _, labels, is_query, is_gallery = saved
    rows = ["path,label,is_query,is_gallery"]
    for i, label in enumerate(labels[:40]):
        image_path = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8), (int(label) * 30, 0, 0)).save(image_path)
        rows.append(f"{image_path},{label},{int(is_query[i])},{int(is_gallery[i])}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    np.save(tmp_path / "emb40.npy", np.load(folder / "emb.npy")[:40])
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "emb40.npy"), "--labels",
                                      str(tmp_path / "labels.csv"), "-p", "retrieval", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["retrieval/num_queries"] == is_query[:40].sum()
    assert (out / "report" / "retrieval_grid.png").is_file()
    assert (out / "report" / "embedding_map.png").is_file()


def test_bad_protocol_is_rejected(saved, tmp_path):
    folder = saved[0]
    result = CliRunner().invoke(app, ["evaluate", str(folder / "emb.npy"), "--labels", str(folder / "labels.npy"),
                                      "-p", "retreival", "-o", str(tmp_path)])
    assert result.exit_code != 0 and "protocol" in result.output


def test_model_folder_with_dataset_and_calibration(tmp_path):
    from deepmetric import registry
    from deepmetric.eval import load_calibration
    from deepmetric.models import build_embedder

    dataset = registry.build({"name": "digits", "args": {"split": "test", "classes": "0-2"}}, "dataset")
    model = build_embedder({"backbone": {"name": "small_cnn", "args": {"in_channels": 1, "width": 8}},
                            "embedding_dim": 8, "preprocessing": dataset.preprocessing})
    model.save(tmp_path / "model")
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "model"), "--data", "digits", "--data-arg",
                                      "classes=0-2", "-p", "verification", "--calibrate-far", "0.01",
                                      "--bootstrap", "5", "--no-map", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    calibration = load_calibration(tmp_path / "model")
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert calibration["target_far"] == 0.01
    assert metrics["verification/calibrated_threshold"] == calibration["threshold"]
