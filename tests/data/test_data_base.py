"""The shared data-set arguments (split, image size, per-class limit) use deepmetric.validation's policy."""

import numpy as np
import pytest

from deepmetric.data.base import as_image_size, check_split, limit_per_class


def test_split_is_one_of_the_known_names():
    assert check_split("test") == "test"
    assert check_split("val", ("train", "val")) == "val"
    with pytest.raises(ValueError, match=r"split must be one of \['train', 'test', 'all'\], got 'tset'\. Did you mean"):
        check_split("tset")
    with pytest.raises(TypeError, match=r"split must be one of .*got NoneType: None"):
        check_split(None)


def test_image_size_is_a_side_or_a_pair_of_sides():
    assert as_image_size(None, 32) == [32, 32]
    assert as_image_size(np.int64(28), 32) == [28, 28]
    assert as_image_size((24, np.int32(16)), 32) == [24, 16]
    assert all(type(side) is int for side in as_image_size((24, np.int32(16)), 32))
    with pytest.raises(ValueError, match=r"image_size must be an integer or \[height, width\], got \[1, 2, 3\]"):
        as_image_size([1, 2, 3], 32)
    with pytest.raises(ValueError, match=r"image_size must be an integer >= 4, got 2"):
        as_image_size([2, 8], 32)
    for wrong in ("32", 32.0, True, [8, 8.0]):
        with pytest.raises(TypeError, match=r"image_size must be an integer >= 4, got (str|float|bool)"):
            as_image_size(wrong, 32)


def test_limit_per_class_keeps_at_most_that_many_of_each_label():
    labels = np.array([0, 0, 0, 1, 1, 2])
    kept = limit_per_class(labels, np.int64(2))
    assert np.bincount(labels[kept]).tolist() == [2, 2, 1] and (np.diff(kept) > 0).all()
    assert limit_per_class(labels, None).tolist() == list(range(6))
    with pytest.raises(ValueError, match=r"max_per_class must be a positive integer, got 0"):
        limit_per_class(labels, 0)
    with pytest.raises(TypeError, match=r"max_per_class must be a positive integer, got float: 2.0"):
        limit_per_class(labels, 2.0)


def test_channels_are_greyscale_or_rgb():
    from deepmetric.data.base import check_channels

    assert check_channels(1) == 1 and check_channels(np.int64(3)) == 3
    for wrong in (0, 2, 4):
        with pytest.raises(ValueError, match=rf"channels must be 1 \(greyscale\) or 3 \(RGB\), got {wrong}"):
            check_channels(wrong)
    with pytest.raises(TypeError, match=r"channels must be an integer, got str: '3'"):
        check_channels("3")
