"""The shared argument checks: numbers from Python, numpy and torch alike, refused with the caller's words."""

import numpy as np
import pytest
import torch

from edt_lab.checks import finite_number, generator_seed, whole_number


@pytest.mark.parametrize("value", [3, np.int64(3), np.array(3), np.array([3]), torch.tensor(3), torch.tensor([3])])
def test_whole_numbers_in_any_one_element_form_are_ints(value):
    assert whole_number(value, "steps") == 3 and type(whole_number(value, "steps")) is int


@pytest.mark.parametrize("value", [3.0, 2.5, True, np.array([1, 2]), torch.tensor([1, 2]), torch.tensor(True), "3"])
def test_other_values_are_not_whole_numbers(value):
    with pytest.raises(ValueError, match="^steps must be a whole number, got"):
        whole_number(value, "steps")


@pytest.mark.parametrize("value", [1.5, np.float32(1.5), torch.tensor(1.5), torch.tensor([1.5])])
def test_finite_numbers_in_any_one_element_form_are_floats(value):
    assert finite_number(value, "scale") == 1.5


@pytest.mark.parametrize("value", [float("nan"), float("inf"), torch.tensor(float("nan")), False, "1.5"])
def test_nan_inf_bools_and_text_are_not_finite_numbers(value):
    with pytest.raises(ValueError, match="^scale must be a finite number, got"):
        finite_number(value, "scale")


def test_seeds_lie_in_the_generators_range():
    assert generator_seed(np.uint64(2**64 - 1), "--seed") == 2**64 - 1
    with pytest.raises(ValueError, match=r"^--seed must be an integer in 0\.\.18446744073709551615, got -1$"):
        generator_seed(-1, "--seed")
