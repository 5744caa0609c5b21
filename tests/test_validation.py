import numpy as np
import pytest

from deepmetric.validation import check_positive_int


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.int32(5), np.uint8(2)])
def test_positive_integers_of_python_and_numpy_pass_as_python_ints(value):
    result = check_positive_int("k", value)
    assert result == int(value) and type(result) is int


@pytest.mark.parametrize("value", [0, -2, np.int64(0), True, np.bool_(True), 2.0, np.float32(3), "3", None])
def test_everything_else_is_refused_with_the_argument_named(value):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        check_positive_int("k", value)
