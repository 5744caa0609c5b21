import pytest


@pytest.fixture
def digits_config(tmp_path):
    """A small, fast experiment: 16 px digits, a narrow CNN, P x K = 4 x 4, 2 batches per epoch."""
    return lambda **train: _digits_config(tmp_path, **train)


def _digits_config(tmp_path, **train):
    config = {
        "name": "test", "output_dir": str(tmp_path / "run"), "seed": 3, "device": "cpu",
        "data": {"train": {"name": "digits", "args": {"split": "train", "classes": "0-5", "image_size": 16,
                                                       "augment": False}},
                 "num_workers": 0},
        "model": {"backbone": {"name": "small_cnn", "args": {"width": 4, "stages": 2}}, "embedding_dim": 8},
        "loss": {"name": "triplet", "args": {"margin": 0.2}},
        "miner": {"name": "batch_hard"},
        "sampler": {"name": "pk", "args": {"classes_per_batch": 4, "samples_per_class": 4, "num_batches": 2}},
        "scheduler": {"name": "warmup_cosine", "args": {"warmup_steps": 2}},
        "train": {"steps": 6, "eval_every": 100, "checkpoint_every": 100, "log_every": 1, "progress": False,
                  "tensorboard": False, **train},
    }
    return config
