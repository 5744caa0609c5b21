import json

import numpy as np
import pytest
import torch

from deepmetric.data import Digits
from deepmetric.train.quickstart import plot_embedding_map, plot_retrieval_grid, run_quickstart


@pytest.mark.slow  # ~20 s on idle cores: two trainings, three evaluations and a t-SNE
def test_quickstart_runs_end_to_end_on_digits(tmp_path):
    """A 6-second budget on digits: every artefact exists and the report has all three rows and the share of
    the time spent training. (Whether the metric model wins is the job of the full run, which the report
    records.)"""
    out = tmp_path / "quickstart"
    report = run_quickstart(out_dir=out, minutes=0.1, dataset="digits", seed=0, min_steps=5)
    assert (out / "model" / "model.safetensors").is_file() and (out / "model" / "config.json").is_file()
    assert (out / "embedding_map.png").stat().st_size > 10_000
    assert (out / "retrieval_grid.png").stat().st_size > 10_000
    saved = json.loads((out / "report.json").read_text())
    assert [row["model"] for row in saved["rows"]] == ["untrained network", "normalised-softmax baseline",
                                                       "metric learning (ours)"]
    assert 0 < saved["training_seconds"] < saved["total_seconds"]
    assert saved["training_share"] == pytest.approx(saved["training_seconds"] / saved["total_seconds"])
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


def test_retrieval_grid_frames_correct_neighbours_green_and_wrong_ones_red(tmp_path, monkeypatch):
    """Embeddings that put each image next to the others of its class and, for class 0, next to class 1:
    the frames drawn follow the labels of the neighbours found."""
    import matplotlib.axes

    data = Digits(split="test", classes="0-2", augment=False)
    labels = np.asarray(data.labels)
    embeddings = np.eye(3)[labels] + 0.01 * np.random.default_rng(0).normal(size=(len(labels), 3))
    embeddings[labels == 0] = np.eye(3)[1] + 0.01  # class 0 looks like class 1: its neighbours are wrong
    colours = []
    original = matplotlib.axes.Axes.imshow

    def spy(axis, *args, **kwargs):
        result = original(axis, *args, **kwargs)
        colours.append(axis)
        return result

    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", spy)
    path = plot_retrieval_grid(data, {"model": embeddings.astype(np.float32)}, tmp_path / "grid.png", seed=0,
                               num_queries=6, k=3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    frames = [axis.spines["left"].get_edgecolor() if axis.spines["left"].get_visible() else None for axis in colours]
    assert len(frames) == 6 * 4 and frames.count(None) == 6  # queries have no frame
    green, red = (0x1a / 255, 0x98 / 255, 0x50 / 255, 1.0), (0xd7 / 255, 0x30 / 255, 0x27 / 255, 1.0)
    assert all(np.allclose(f, green) or np.allclose(f, red) for f in frames if f is not None)
    assert any(np.allclose(f, red) for f in frames if f is not None)
    assert any(np.allclose(f, green) for f in frames if f is not None)


def test_evaluation_inputs_are_preprocessed_per_batch_as_the_per_item_transform_does():
    from deepmetric.train.quickstart import preprocessed

    data = Digits(split="test", classes="6-9", augment=False)  # 8x8 images enlarged to 32x32
    batch = preprocessed(data)
    expected = torch.stack([data[i][0] for i in range(len(data))])
    torch.testing.assert_close(batch, expected, atol=1e-5, rtol=0)
    augmented = Digits(split="test", classes="6-9", augment=True)
    assert preprocessed(augmented) is augmented  # training augmentations: encode preprocesses each item
