import pickle

import numpy as np
import pytest
import torch

from deepmetric.data.transforms import build_transforms, match_channels, validate_preprocessing

GREY = {"image_size": [16, 16], "channels": 1, "mean": [0.5], "std": [0.25]}


def test_eval_transform_resizes_and_normalises():
    transform = build_transforms(GREY, train=False)
    image = np.full((8, 8), 255, np.uint8)
    out = transform(image)
    assert out.shape == (1, 16, 16) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), (1.0 - 0.5) / 0.25)


def test_eval_transform_is_deterministic_and_train_transform_varies():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    eval_transform = build_transforms(GREY, train=False)
    assert torch.equal(eval_transform(image), eval_transform(image))
    train_transform = build_transforms(GREY, train=True)
    outputs = [train_transform(image) for _ in range(5)]
    assert all(o.shape == (1, 16, 16) for o in outputs)
    assert any(not torch.equal(outputs[0], o) for o in outputs[1:])


def test_rgb_to_grey_and_back():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[..., 0] = 200
    grey = match_channels(rgb, 1)
    assert grey.shape == (2, 2, 1) and grey[0, 0, 0] == round(0.299 * 200)
    assert match_channels(grey, 3).shape == (2, 2, 3)
    rgb_transform = build_transforms({"image_size": [4, 4], "channels": 3, "mean": [0.5] * 3, "std": [0.5] * 3},
                                     train=True)
    assert rgb_transform(np.zeros((6, 6), np.uint8)).shape == (3, 4, 4)


def test_transform_pickles_for_worker_processes():
    transform = build_transforms(GREY, train=True)
    transform(np.zeros((16, 16), np.uint8))
    clone = pickle.loads(pickle.dumps(transform))
    assert clone(np.zeros((16, 16), np.uint8)).shape == (1, 16, 16)


@pytest.mark.parametrize("bad, match", [
    ({**GREY, "image_size": [16]}, "image_size"),
    ({**GREY, "channels": 2}, "channels"),
    ({**GREY, "mean": [0.5, 0.5]}, "mean"),
    ({**GREY, "std": [0.0]}, "std"),
    ({**GREY, "size": 3}, "unknown key 'size'"),
])
def test_bad_preprocessing_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        validate_preprocessing(bad)


def test_transform_rejects_float_images():
    with pytest.raises(TypeError, match="uint8"):
        build_transforms(GREY, train=False)(np.zeros((4, 4), np.float32))


def test_reseed_makes_augmentations_a_function_of_the_seed():
    from deepmetric import registry

    data = registry.build({"name": "digits", "args": {"split": "train", "image_size": 16}}, "dataset")
    assert data.augment
    data.reseed(7)
    first = [data[i][0] for i in range(4)]
    data.reseed(8)
    other = [data[i][0] for i in range(4)]
    data.reseed(7)
    again = [data[i][0] for i in range(4)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
    clone = pickle.loads(pickle.dumps(data))  # as in a worker process
    clone.reseed(7)
    assert all(torch.equal(clone[i][0], first[i]) for i in range(4))
