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


# --------------------------------------------------------------------------- batch augmentation

from deepmetric.data.transforms import BatchAugment, resize_image  # noqa: E402


def _ramp(batch: int, size: int = 16) -> torch.Tensor:
    """Images whose value grows linearly from left to right (0 .. 255)."""
    row = torch.linspace(0, 255, size).round().to(torch.uint8)
    return row.expand(batch, 1, size, size).contiguous()


def test_batch_augment_without_augmentation_is_the_evaluation_transform():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 16, 16), dtype=np.uint8)
    expected = torch.stack([build_transforms(GREY, train=False)(image) for image in images])
    out = BatchAugment(GREY, train=False)(torch.from_numpy(images)[:, None], seed=0)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    # A smaller stored image is enlarged to the model's size first, as OpenCV's INTER_AREA does.
    small = rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    expected = torch.stack([build_transforms(GREY, train=False)(image) for image in small])
    out = BatchAugment(GREY, train=False)(torch.from_numpy(small)[:, None], seed=0)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_batch_augment_is_a_function_of_the_seed_and_draws_per_image():
    augment = BatchAugment(GREY, hflip=True)
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.integers(0, 256, (1, 1, 16, 16), dtype=np.uint8))
    batch = image.expand(6, 1, 16, 16).contiguous()
    first, again, other = augment(batch, seed=5), augment(batch, seed=5), augment(batch, seed=6)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert len({tuple(x.flatten().tolist()) for x in first}) == 6  # six copies, six different draws


def test_batch_crop_keeps_a_ramp_linear_inside_the_image_and_flips_only_when_allowed():
    """An affine crop of a linear ramp is a linear ramp spanning a sub-range of it, at least sqrt(area x
    3/4) of the width wide; a flip reverses its direction."""
    mean, std = GREY["mean"][0], GREY["std"][0]
    for hflip in (False, True):
        out = BatchAugment(GREY, hflip=hflip, color_jitter=0.0, crop_scale=(0.5, 0.9))(_ramp(64), seed=3)
        values = out[:, 0] * std + mean  # back to [0, 1]
        row = values[:, 8, 1:-1]
        steps = row[:, 1:] - row[:, :-1]
        assert torch.allclose(steps - steps.mean(dim=1, keepdim=True), torch.zeros_like(steps), atol=2e-3)
        assert values.min() >= -1e-6 and values.max() <= 1 + 1e-6
        assert torch.allclose(values[:, 0], values[:, -1], atol=1e-5)  # rows of a horizontal ramp are equal
        span = (row[:, -1] - row[:, 0]).abs() * 16 / 13  # the slope over the full width, relative to 1
        assert (span >= (0.5 * 3 / 4) ** 0.5 - 0.02).all() and (span <= 0.9 ** 0.5 * (4 / 3) ** 0.5 + 0.02).all()
        flipped = int((row[:, -1] < row[:, 0]).sum())
        assert (flipped == 0) if not hflip else (10 < flipped < 54)


def test_batch_jitter_scales_a_constant_image_by_its_brightness_factor():
    augment = BatchAugment(GREY, color_jitter=0.2, crop_scale=(0.7, 1.0))
    out = augment(torch.full((200, 1, 16, 16), 100, dtype=torch.uint8), seed=0)
    values = out * GREY["std"][0] + GREY["mean"][0]
    per_image = values.flatten(1)
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-5)  # contrast keeps a constant
    factors = per_image[:, 0] / (100 / 255)
    assert factors.min() >= 0.8 - 1e-4 and factors.max() <= 1.2 + 1e-4
    unchanged = torch.isclose(factors, torch.ones_like(factors), atol=1e-5).float().mean()
    assert 0.1 < unchanged < 0.35  # jitter applies with probability 0.8


def test_batch_augment_refuses_what_is_not_a_uint8_batch():
    augment = BatchAugment(GREY)
    with pytest.raises(TypeError, match="uint8 tensor"):
        augment(torch.zeros(2, 1, 16, 16), seed=0)
    with pytest.raises(TypeError, match="uint8 tensor"):
        augment(torch.zeros(1, 16, 16, dtype=torch.uint8), seed=0)
    with pytest.raises(ValueError, match="3 channels"):
        augment(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), seed=0)
    with pytest.raises(ValueError, match="crop_scale"):
        BatchAugment(GREY, crop_scale=(0.0, 1.0))


def test_resize_image_matches_the_evaluation_transform():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    small = resize_image(image, GREY)
    assert small.shape == (16, 16, 1) and small.dtype == np.uint8
    expected = build_transforms(GREY, train=False)(image) * GREY["std"][0] + GREY["mean"][0]  # back to [0, 1]
    stored = torch.from_numpy(small.transpose(2, 0, 1)).float() / 255
    torch.testing.assert_close(stored, expected, atol=1 / 255 + 1e-6, rtol=0)  # uint8 rounding only
