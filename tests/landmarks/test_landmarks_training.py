"""The shipped landmarks config builds sub-center ArcFace with dynamic margins from the training classes' sizes."""

from pathlib import Path

import numpy as np
import pytest

from deepmetric.config import ConfigError, load_config
from deepmetric.train.pipelines import build_experiment

CONFIG = Path(__file__).parents[2] / "configs" / "landmarks_glyphs.yaml"
TINY = ["data.train.args.scripts=[latin, digits]", "data.train.args.max_fonts=8", "data.train.args.min_designs=2",
        "data.eval=null", "data.num_workers=0", "device=cpu", "sampler.args.classes_per_batch=4"]


def test_dynamic_margins_come_from_the_class_counts(tmp_path):
    config = load_config(CONFIG, TINY + [f"data.train.args.cache_dir={tmp_path}", "data.train.args.progress=false"])
    experiment = build_experiment(config)
    counts = np.bincount(experiment.train_dataset.labels)
    assert counts.min() >= 2 and counts.max() > counts.min()  # a long tail, not a flat set
    args = config["loss"]["args"]
    expected = args["margin_scale"] * counts.astype(float) ** -args["margin_power"] + args["margin_offset"]
    np.testing.assert_allclose(experiment.loss.class_margins.numpy(), expected, rtol=1e-6)
    assert experiment.loss.head.num_subcenters == 3


def test_class_counts_from_data_with_the_wrong_loss_is_refused():
    with pytest.raises(ConfigError, match="class_counts"):
        load_config(CONFIG, TINY + ["loss.name=arcface"])
