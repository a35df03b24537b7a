"""common/statistics.py: mean and population std under each missing-value policy, hand-computed values."""

import math

import pytest

from common.statistics import mean, mean_std


def test_mean_std_skips_none_and_nan_when_asked():
    """[1, 3] -> mean 2, population std 1; None and NaN are skipped; nothing left -> NaN (moved from the printer)."""
    assert mean_std([1.0, 3.0, None, math.nan], missing="skip_nonfinite") == (2.0, 1.0)
    assert all(math.isnan(v) for v in mean_std([None], missing="skip_nonfinite"))


def test_population_std_by_hand():
    """[2, 4, 4, 4, 5, 5, 7, 9]: mean 40/8 = 5, squared deviations 9+1+1+1+0+0+4+16 = 32, std sqrt(32/8) = 2."""
    assert mean_std([2, 4, 4, 4, 5, 5, 7, 9], missing="keep") == (5.0, 2.0)


def test_skip_none_keeps_nan_and_empty_value():
    """skip_none drops None only: a NaN propagates; with nothing left the `empty` value comes back."""
    assert mean([0.5, None, 1.5], missing="skip_none", empty=None) == 1.0
    assert math.isnan(mean([0.5, math.nan], missing="skip_none", empty=None))
    assert mean([None, None], missing="skip_none", empty=None) is None
    assert mean_std([], missing="keep", empty=None) == (None, None)


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="missing: expected one of"):
        mean([1.0], missing="drop")
