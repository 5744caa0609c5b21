import pytest
import yaml

from deepmetric.config import ConfigError, apply_overrides, load_config, save_config

MINIMAL = {
    "data": {"train": {"name": "digits", "args": {"split": "train"}}},
    "model": {"backbone": {"name": "small_cnn", "args": {"width": 8}}},
    "loss": {"name": "triplet", "args": {"margin": 0.2}},
}


def write(tmp_path, config):
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_defaults_are_filled_and_output_dir_follows_name(tmp_path):
    config = load_config(write(tmp_path, {**MINIMAL, "name": "digits_triplet"}))
    assert config["train"]["steps"] == 1000
    assert config["sampler"] == {"name": "pk", "args": {"classes_per_batch": 16, "samples_per_class": 4}}
    assert config["optimizer"]["name"] == "adamw"
    assert config["miner"] is None
    assert config["output_dir"] == "runs/digits_triplet"


@pytest.mark.parametrize(("override", "path", "expected"), [
    ("loss.args.margin=0.3", ("loss", "args", "margin"), 0.3),
    ("train.steps=20", ("train", "steps"), 20),
    ("train.progress=false", ("train", "progress"), False),
    ("eval.k=[1, 10]", ("eval", "k"), [1, 10]),
    ("train.grad_clip_norm=null", ("train", "grad_clip_norm"), None),
    ("name=run 7", ("name",), "run 7"),
    ("miner.name=batch_hard", ("miner", "name"), "batch_hard"),
])
def test_overrides_are_yaml_typed(tmp_path, override, path, expected):
    config = load_config(write(tmp_path, MINIMAL), [override])
    value = config
    for key in path:
        value = value[key]
    assert value == expected and type(value) is type(expected)


def test_override_into_list_by_index():
    config = apply_overrides({"eval": {"k": [1, 5]}}, ["eval.k.1=10"])
    assert config["eval"]["k"] == [1, 10]
    with pytest.raises(ConfigError, match="not a valid index"):
        apply_overrides({"eval": {"k": [1, 5]}}, ["eval.k.2=10"])


@pytest.mark.parametrize("override", ["train.steps", "=3", "a..b=1"])
def test_malformed_override(override):
    with pytest.raises(ConfigError):
        apply_overrides(MINIMAL, [override])


@pytest.mark.parametrize(("config_change", "message"), [
    ({"trian": {}}, r"unknown key 'trian'.*Did you mean 'train'"),
    ({"train": {"step": 5}}, r"unknown key 'train.step'.*Did you mean 'steps'"),
    ({"loss": {"name": "triplett"}}, r"loss.name.*Did you mean 'triplet'"),
    ({"loss": {"name": "triplet", "args": {"margn": 0.1}}}, r"'loss.args.margn'.*Did you mean 'margin'"),
    ({"loss": {"name": "triplet", "arg": {}}}, r"unknown key 'loss.arg'.*Did you mean 'args'"),
    ({"optimizer": {"name": "adam_w"}}, r"Did you mean 'adamw'"),
    ({"train": {"steps": "many"}}, r"train.steps must be int, got str"),
    ({"train": {"steps": True}}, r"train.steps must be int, got bool"),
    ({"train": {"steps": 0}}, r"train.steps must be >= 1"),
    ({"train": {"mode": "pair"}}, r"train.mode must be one of.*Did you mean 'pairs'"),
    ({"loss": None}, r"loss is required"),
    ({"data": {"train": {"name": "digitz"}}}, r"data.train.name.*Did you mean 'digits'"),
])
def test_typos_and_bad_values_are_named(tmp_path, config_change, message):
    config = {**MINIMAL, **config_change}
    with pytest.raises(ConfigError, match=message):
        load_config(config)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("loss: {name: triplet\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        load_config(empty)


def test_integer_is_accepted_where_a_float_is_expected():
    config = load_config({**MINIMAL, "train": {"grad_clip_norm": 5}})
    assert config["train"]["grad_clip_norm"] == 5.0


def test_saved_config_round_trips(tmp_path):
    config = load_config(MINIMAL, ["loss.args.margin=0.25"])
    save_config(config, tmp_path / "resolved.yaml")
    again = load_config(tmp_path / "resolved.yaml")
    assert again == config


def test_a_node_without_name_refines_the_default():
    config = load_config(MINIMAL, ["optimizer.args.lr=0.01", "sampler.args.samples_per_class=2"])
    assert config["optimizer"] == {"name": "adamw", "args": {"lr": 0.01, "weight_decay": 1e-4}}
    assert config["sampler"]["args"] == {"classes_per_batch": 16, "samples_per_class": 2}
