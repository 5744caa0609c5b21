"""Training a two-tower model through the project's trainer, and the ``deepmetric zeroshot`` commands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from deepmetric.cli import app
from deepmetric.config import ConfigError
from deepmetric.crossmodal.benchmark import chance_recall, kind_metrics
from deepmetric.crossmodal.towers import TwoTowerModel
from deepmetric.crossmodal.training import CrossModalObjective, load_crossmodal_config, train_two_tower


def _config(tmp_path, **crossmodal):
    return {
        "data": {"train": {"name": "digits", "args": {"split": "train", "classes": "0-5"}},
                 "eval": {"name": "digits", "args": {"split": "test", "classes": "0-5", "augment": False}},
                 "num_workers": 0},
        "model": {"backbone": {"name": "small_cnn", "args": {"width": 4}}, "embedding_dim": 16},
        "loss": {"name": "triplet"},
        "sampler": {"name": "pk", "args": {"classes_per_batch": 4, "samples_per_class": 4}},
        "train": {"steps": 4, "eval_every": 4, "progress": False, "tensorboard": False},
        "eval": {"primary_metric": "zeroshot/top1", "k": [1]},
        "output_dir": str(tmp_path / "run"),
        "crossmodal": {"text_tower": {"kind": "vocabulary", "word_dim": 8}, "kinds": ["names"],
                       "templates": ["digit {}"], "loss": {"name": "triplet", "args": {"mining": "hardest"}},
                       "extra_negatives": 1, "image_loss_weight": 0.5, **crossmodal},
    }


def test_trains_saves_and_classifies_from_the_command_line(tmp_path):
    run = train_two_tower(load_crossmodal_config(_config(tmp_path)))
    assert run.result.steps == 4 and "zeroshot/top1" in run.result.metrics
    model = TwoTowerModel.load(run.model_dir)
    assert model.config["text"]["kind"] == "vocabulary"
    (tmp_path / "classes.txt").write_text("digit 0\ndigit 1\ndigit 2\n", encoding="utf-8")
    image = tmp_path / "x.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(image)
    runner = CliRunner()
    result = runner.invoke(app, ["zeroshot", str(run.model_dir), "--classes", str(tmp_path / "classes.txt"),
                                 str(image), "--k", "2", "--json"])
    assert result.exit_code == 0, result.output
    line = json.loads(result.output.strip().splitlines()[-1])
    assert len(line["predictions"]) == 2 and line["predictions"][0]["class"].startswith("digit")
    built = runner.invoke(app, ["zeroshot", "build", str(run.model_dir), "--classes", str(tmp_path / "classes.txt"),
                                "--out", str(tmp_path / "zs")])
    assert built.exit_code == 0, built.output
    again = runner.invoke(app, ["zeroshot", "predict", str(run.model_dir), str(image), "--classifier",
                                str(tmp_path / "zs")])
    assert again.exit_code == 0 and "digit" in again.output
    embedded = runner.invoke(app, ["zeroshot", "embed", str(run.model_dir), "--text", "digit 3", "--text",
                                   "digit 4", "-o", str(tmp_path / "t.npy")])
    assert embedded.exit_code == 0, embedded.output
    assert np.load(tmp_path / "t.npy").shape == (2, 16)
    bad = runner.invoke(app, ["zeroshot", str(run.model_dir), str(image)])
    assert bad.exit_code == 2 and "exactly one of --classes" in bad.output


def test_config_section_is_strict(tmp_path):
    with pytest.raises(ConfigError, match=r"crossmodal\.templtes"):
        load_crossmodal_config({**_config(tmp_path), "crossmodal": {"templtes": ["{}"]}})
    with pytest.raises(ConfigError, match=r"crossmodal\.kinds"):
        load_crossmodal_config(_config(tmp_path, kinds=["colour"]))


def test_objective_marks_shared_descriptions_as_positives_of_both_classes():
    from deepmetric.crossmodal.losses import InfoNCELoss
    from deepmetric.crossmodal.towers import VocabularyTextTower

    objective = CrossModalObjective(text=VocabularyTextTower(vocabulary=["a", "b"], embedding_dim=4),
                                    loss=InfoNCELoss(), class_texts={0: ["a", "shared"], 1: ["b", "shared"],
                                                                      2: ["c"]}, extra_negatives=1)
    texts, mask = objective.batch_texts([0, 1, 1])
    assert texts == ["a", "shared", "b", "c"]
    assert mask.tolist() == [[True, True, False, False], [False, True, True, False], [False, True, True, False]]


def test_kind_metrics_against_hand_counts():
    class Identity:
        def encode_texts(self, texts):
            table = {"x": [1.0, 0.0], "y": [0.0, 1.0]}
            return np.array([table[t] for t in texts], np.float32)

    images = np.array([[1, 0], [0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], np.float32)
    labels = np.array([0, 1, 2, 2])
    scores = kind_metrics(Identity(), images, labels, {0: "x", 1: "x", 2: "y"})  # classes 0 and 1 share "x"
    assert scores["descriptions"] == 2 and scores["chance_top1"] == 0.5
    assert scores["top1"] == pytest.approx(0.75)  # the last image is nearer "x" but is a "y"
    assert chance_recall([1, 3], 4, 1) == pytest.approx((1 / 4 + 3 / 4) / 2)


def test_class_texts_follow_the_relabelled_classes():
    from deepmetric.crossmodal.texts import class_texts
    from deepmetric.data.builtin import Digits

    dataset = Digits(split="test", classes="3-5")
    assert class_texts(dataset, ["names"]) == {"names": {0: "3", 1: "4", 2: "5"}}


def test_shipped_config_resolves():
    from pathlib import Path

    config = load_crossmodal_config(Path(__file__).parents[2] / "configs" / "crossmodal_glyphs.yaml",
                                    ["crossmodal.loss.name=siglip"])
    assert config["crossmodal"]["text_tower"] == {"kind": "sentence", "mode": "projection"}
    assert config["crossmodal"]["loss"]["name"] == "siglip" and config["eval"]["primary_metric"] == "zeroshot/top5"
