import json

import numpy as np
import pytest

from deepmetric.train.quickstart import plot_embedding_map, run_quickstart


@pytest.mark.slow  # ~20 s on idle cores: two trainings, three evaluations and a t-SNE
def test_quickstart_runs_end_to_end_on_digits(tmp_path, monkeypatch):
    """A 6-second budget on digits: every artefact exists and the report has all three rows. (Whether the
    metric model wins is the job of the full run, which the report records.)"""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # skips timing 1 vs 2 threads
    out = tmp_path / "quickstart"
    report = run_quickstart(out_dir=out, minutes=0.1, dataset="digits", seed=0, min_steps=5)
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "config.json").is_file()
    assert (out / "embedding_map.png").stat().st_size > 10_000
    saved = json.loads((out / "report.json").read_text())
    assert [row["model"] for row in saved["rows"]] == ["untrained network", "softmax baseline",
                                                       "metric learning (ours)"]
    for row in saved["rows"]:
        assert 0.0 <= row["map@r"] <= row["recall@1"] <= 1.0 and 0.5 <= row["verification_accuracy"] <= 1.0
    assert report["dataset"] == "digits" and saved["rows"][2]["train_steps"] >= 5
    # A second run replaces the first; a folder with other content is refused.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        run_quickstart(out_dir=tmp_path / "other", minutes=0.1, dataset="digits")


def test_embedding_map_draws_one_panel_per_model(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(20), 10)
    maps = {"a": rng.normal(size=(200, 8)), "b": rng.normal(size=(200, 8))}
    path = plot_embedding_map(maps, labels, tmp_path / "map.png", seed=0, num_classes=5)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
