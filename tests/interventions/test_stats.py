"""Bootstrap intervals and sign-flip p-values on cases with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from shortcut_detect.interventions.stats import (
    Estimate,
    bootstrap_interval,
    estimate,
    sign_flip_p_value,
)


def test_constant_values_give_a_zero_width_interval():
    low, high = bootstrap_interval(np.full(30, 0.4), n_bootstrap=500)
    assert low == pytest.approx(0.4) and high == pytest.approx(0.4)


def test_bootstrap_interval_covers_the_true_mean_about_95_percent_of_the_time():
    # 300 independent samples of n=60 from N(0.3, 1): the percentile interval should cover
    # 0.3 in ~95% of them (binomial sd 1.3 points; the percentile bootstrap runs ~1 point low
    # at n=60), so [88%, 99%] holds with a wide margin.
    rng = np.random.default_rng(123)
    covered = []
    for seed in range(300):
        values = rng.normal(0.3, 1.0, 60)
        low, high = bootstrap_interval(values, n_bootstrap=1000, seed=seed)
        covered.append(low <= 0.3 <= high)
    assert 0.88 <= np.mean(covered) <= 0.99


def test_all_positive_differences_reach_the_smallest_attainable_p():
    # Among 2**20 sign patterns only the all-plus one reaches the observed mean.
    assert sign_flip_p_value(np.ones(20), n_permutations=999) == pytest.approx(1 / 1000)


def test_symmetric_differences_are_not_significant():
    p_value = sign_flip_p_value(np.tile([1.0, -1.0], 10), n_permutations=2000)
    assert 0.4 < p_value < 0.8


def test_p_values_under_the_null_reject_at_about_alpha():
    # Symmetric differences (no effect): P(p < 0.05) is at most 5%; over 300 draws the
    # binomial sd is 1.3 points, so <= 10% is a 4-sd margin.
    rng = np.random.default_rng(7)
    p_values = [
        sign_flip_p_value(rng.normal(0.0, 1.0, 40), n_permutations=400, seed=seed)
        for seed in range(300)
    ]
    assert np.mean(np.array(p_values) < 0.05) <= 0.10
    assert 0.35 < np.mean(p_values) < 0.65  # roughly uniform


def test_a_real_shift_is_detected():
    rng = np.random.default_rng(3)
    result = estimate(rng.normal(0.5, 1.0, 200), paired_test=True, n_permutations=999)
    assert result.p_value == pytest.approx(1 / 1000)
    assert result.low > 0.2 and result.high < 0.8


def test_nan_values_are_left_out_and_empty_input_gives_nan():
    result = estimate([1.0, np.nan, 3.0], n_bootstrap=200)
    assert result.n == 2 and result.value == pytest.approx(2.0)
    empty = estimate([np.nan], paired_test=True, n_bootstrap=10, n_permutations=10)
    assert np.isnan(empty.value) and np.isnan(empty.p_value)
    assert json.loads(json.dumps(empty.to_dict()))["value"] is None


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="confidence must be in"):
        bootstrap_interval([1.0], confidence=1.5)
    with pytest.raises(ValueError, match="n_permutations must be at least 1"):
        sign_flip_p_value([1.0], n_permutations=0)


def test_estimate_text():
    assert Estimate(0.71, 0.64, 0.78, 10).text(percent=True) == "71% [64%-78%]"
