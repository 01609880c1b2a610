"""The shared checks of numeric parameters."""

from __future__ import annotations

import numpy as np
import pytest

from shortcut_detect.common.validation import positive_int, positive_number


def test_positive_int_accepts_integers_and_returns_python_ints():
    assert positive_int("steps", 3) == 3
    value = positive_int("steps", np.int64(7))
    assert value == 7 and type(value) is int


@pytest.mark.parametrize("bad", [0, -2, 2.0, True, "3", None])
def test_positive_int_refuses_the_rest_naming_the_parameter(bad):
    with pytest.raises(ValueError, match=r"batch_size must be a positive integer, got"):
        positive_int("batch_size", bad)


def test_positive_number_accepts_positive_reals():
    assert positive_number("std", 2) == 2.0
    assert positive_number("std", np.float32(0.5)) == 0.5


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), float("inf"), False, "1", None])
def test_positive_number_refuses_the_rest_naming_the_parameter(bad):
    with pytest.raises(ValueError, match=r"std must be a positive number, got"):
        positive_number("std", bad)
