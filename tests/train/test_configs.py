"""Every shipped example config resolves, builds, and trains for 2 steps on a tiny subset of its data."""

from pathlib import Path

import pytest
import yaml

from deepmetric.config import load_config
from deepmetric.train.pipelines import train

# Two-tower configs (a top-level ``crossmodal:`` section) train through ``deepmetric zeroshot train``; their
# two-step test is tests/crossmodal/test_training_cli.py.
CONFIGS = sorted(path for path in (Path(__file__).parents[2] / "configs").glob("*.yaml")
                 if "crossmodal" not in yaml.safe_load(path.read_text()))

# Per data set: shrink it to a handful of classes and items so that two steps take a second.
TINY = {
    "fashion_mnist": ["data.train.args.max_per_class=12", "data.eval.args.max_per_class=6"],
    "glyphs": ["data.train.args.scripts=[latin, digits]", "data.train.args.max_fonts=8",
               "data.train.args.min_designs=2", "data.eval.args.scripts=[latin, digits]",
               "data.eval.args.max_fonts=8", "data.eval.args.min_designs=2"],
    "digits": [],
    "glyph_landmarks": ["data.train.args.scripts=[latin, digits]", "data.train.args.max_fonts=8",
                        "data.train.args.min_designs=2", "data.eval.args.scripts=[latin, digits]",
                        "data.eval.args.max_fonts=8", "data.eval.args.min_designs=2"],
}


def test_the_required_examples_are_shipped():
    names = {path.stem for path in CONFIGS}
    assert {"arcface_fashion_mnist", "semi_hard_triplet_glyphs", "siamese_contrastive_digits",
            "center_loss_fashion_mnist", "subcenter_arcface_glyphs"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_example_config_trains_two_steps(tmp_path, path):
    config = load_config(path)
    dataset = config["data"]["train"]["name"]
    overrides = TINY[dataset] + [
        f"output_dir={tmp_path / 'run'}", "train.steps=2", "train.eval_every=2", "train.progress=false",
        "train.tensorboard=false", "data.num_workers=0", "data.max_eval_samples=64", "device=cpu",
    ]
    if config["train"]["mode"] == "labels":
        overrides += ["sampler.args.classes_per_batch=4", "sampler.args.samples_per_class=2"]
    else:
        overrides += ["train.batch_size=8"]
    result = train(load_config(path, overrides))
    assert result.steps == 2
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "checkpoints" / "last" / "experiment.yaml").is_file()
