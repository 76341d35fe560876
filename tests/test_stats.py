"""The statistics of CERTIFY and PREDICT against exact values."""

import math

import pytest
from scipy.stats import binom, norm

from rrcm.errors import UserError
from rrcm.smoothing import stats


@pytest.mark.parametrize("n_a,n", [(1, 10), (57, 100), (990, 1000), (99_000, 100_000), (100, 100)])
def test_clopper_pearson_lower_bound_solves_its_defining_equation(n_a, n):
    # p̲ is the p at which observing >= n_a successes has probability exactly alpha.
    alpha = 0.001
    p_lower = stats.clopper_pearson_lower(n_a, n, alpha)
    assert binom.sf(n_a - 1, n, p_lower) == pytest.approx(alpha, rel=1e-8)


def test_clopper_pearson_edge_cases():
    assert stats.clopper_pearson_lower(0, 100, 0.001) == 0.0
    # all successes: P(all n succeed) = p^n = alpha
    assert stats.clopper_pearson_lower(100, 100, 0.001) == pytest.approx(0.001 ** (1 / 100), rel=1e-12)
    with pytest.raises(ValueError):
        stats.clopper_pearson_lower(11, 10, 0.001)


def test_radius_cap_at_cohen_defaults():
    # n = 100,000 and alpha = 0.001 cap the radius at 3.8115 sigma (Cohen et al.'s well-known figure).
    assert round(stats.max_certifiable_radius(100_000, 0.001, 1.0), 4) == 3.8115
    assert stats.max_certifiable_radius(100_000, 0.001, 0.5) == pytest.approx(0.5 * 3.81146, abs=1e-5)
    # n = 10,000 caps it at 3.20 sigma (the MNIST study's setting).
    assert round(stats.max_certifiable_radius(10_000, 0.001, 1.0), 2) == 3.20


def test_radius_is_sigma_times_normal_quantile():
    assert stats.radius_from_lower_bound(0.5, 0.25) == 0.0
    assert stats.radius_from_lower_bound(norm.cdf(1.0), 0.5) == pytest.approx(0.5, rel=1e-12)


def test_min_samples_to_certify():
    # 2^-10 < 0.001 < 2^-9: ten agreeing samples are the fewest that can push alpha^(1/n) above 1/2.
    assert stats.min_samples_to_certify(0.001) == 10
    assert 0.001 ** (1 / 10) > 0.5 > 0.001 ** (1 / 9)
    assert stats.min_samples_to_certify(0.01) == 7


def test_predict_binomial_test_exact_values():
    # two-sided exact test of 60 vs 40: 2 * P(Bin(100, 1/2) >= 60)
    expected = 2 * binom.sf(59, 100, 0.5)
    assert stats.top_two_pvalue(60, 40) == pytest.approx(expected, rel=1e-12)
    assert stats.top_two_pvalue(50, 50) == pytest.approx(1.0)
    assert stats.top_two_pvalue(10, 0) == pytest.approx(2 * 0.5 ** 10, rel=1e-12)
    assert stats.top_two_pvalue(0, 0) == 1.0


# The whole message is compared: it is what a user reads, and it must name the problem and the fix.
@pytest.mark.parametrize("n0,n,alpha,sigma,message", [
    (100, 100_000, 0.001, 0.0, "sigma must be a positive number, got 0.0; use e.g. --sigma 0.25"),
    (100, 100_000, 0.001, -0.5, "sigma must be a positive number, got -0.5; use e.g. --sigma 0.25"),
    (100, 100_000, 0.001, math.nan, "sigma must be a positive number, got nan; use e.g. --sigma 0.25"),
    (100, 100_000, 0.001, math.inf, "sigma must be a positive number, got inf; use e.g. --sigma 0.25"),
    (100, 100_000, 0.0, 0.5, "alpha must be in (0, 1), got 0.0; the usual value is 0.001"),
    (100, 100_000, 1.0, 0.5, "alpha must be in (0, 1), got 1.0; the usual value is 0.001"),
    (1000, 100, 0.001, 0.5, "n0 (1000) is larger than n (100): selection should use fewer samples than "
                            "estimation; use e.g. --n0 100 --n 100000"),
    (5, 9, 0.001, 0.5, "n = 9 can never certify at alpha = 0.001: even if all samples agree the lower bound "
                       "stays below 1/2; use n >= 10 (typically 100000)"),
    # n = 1 is a count (it passes the n >= 1 check) that can never certify
    (1, 1, 0.001, 0.5, "n = 1 can never certify at alpha = 0.001: even if all samples agree the lower bound "
                       "stays below 1/2; use n >= 10 (typically 100000)"),
    (0, 100, 0.001, 0.5, "n0 must be at least 1, got 0; the usual value is 100"),
    (0, 0, 0.001, 0.5, "n0 must be at least 1, got 0; the usual value is 100"),
    (1, 0, 0.001, 0.5, "n must be at least 1, got 0; the usual value is 100000"),
])
def test_invalid_settings_name_the_problem(n0, n, alpha, sigma, message):
    with pytest.raises(UserError) as error:
        stats.validate_certify_settings(n0, n, alpha, sigma)
    assert str(error.value) == message


@pytest.mark.parametrize("n0,n,alpha", [(1, 10, 0.001), (10, 10, 0.001), (1, 7, 0.01), (100, 100_000, 0.5)])
def test_settings_at_the_edges_are_accepted(n0, n, alpha):
    stats.validate_certify_settings(n0, n, alpha, 1e-9)  # smallest counts, n0 = n, tiny sigma: all valid


def test_clopper_pearson_names_impossible_counts():
    with pytest.raises(ValueError) as error:
        stats.clopper_pearson_lower(11, 10, 0.001)
    assert str(error.value) == "need 0 <= successes <= trials, got 11, 10"
    with pytest.raises(ValueError):
        stats.clopper_pearson_lower(-1, 10, 0.001)
