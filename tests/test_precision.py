"""The dtype-scaled comparison of tests/conftest.py, on hand-made tensors."""

import pytest
import torch

from tests.conftest import assert_close_at_precision


def test_tolerance_is_ulps_times_eps_times_the_largest_magnitude():
    # float32 eps = 2^-23 = 1.1920929e-07; ulps 64, max |expected| = 10 -> absolute tolerance 7.6294e-05.
    expected = torch.tensor([10.0, 0.0])
    assert_close_at_precision(torch.tensor([10.0, 7.0e-5]), expected)
    with pytest.raises(AssertionError):
        assert_close_at_precision(torch.tensor([10.0, 8.0e-5]), expected)
    # float64: eps = 2^-52 = 2.220446e-16, tolerance 64 x 2.22e-16 x 10 = 1.42e-13.
    assert_close_at_precision(torch.tensor([10.0, 1.0e-13], dtype=torch.float64), expected.double())
    with pytest.raises(AssertionError):
        assert_close_at_precision(torch.tensor([10.0, 7.0e-5], dtype=torch.float64), expected.double())


def test_normwise_bound_catches_many_small_errors():
    # 10000 entries of 1, ||expected|| = 100; elementwise bound 64 eps (1 + 1) = 1.526e-5, normwise bound
    # 64 eps x 100 = 7.63e-4. Each entry off by 6e-6: normwise 6e-6 x 100 = 6e-4, passes. Each off by 1.4e-5:
    # within the elementwise bound, but normwise 1.4e-3 > 7.63e-4 fails.
    expected = torch.ones(10000)
    assert_close_at_precision(expected + 6e-6, expected)
    with pytest.raises(AssertionError, match="normwise"):
        assert_close_at_precision(expected + 1.4e-5, expected)
