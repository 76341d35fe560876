"""rrcm.smoothing.confseq: cases the mutation run showed the other tests leave open.

Exact bounds of a prior with a closed form, the fallbacks at the ends of the float range, the
rounding margin the roots are moved out by, and the wording of the validation errors.
"""

import math

import pytest
from scipy.special import betaln

from rrcm.smoothing import confseq
from rrcm.smoothing.confseq import BetaMixtureSequence, GeometricLooksSequence, log_mixture_wealth

ALPHA = 0.001
BELOW_ONE = 1.0 - 2.0 ** -53


# --- the prior reaches the bounds ----------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 10, 100, 1000])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_bounds_of_the_beta_1_2_prior_have_a_closed_form(n, alpha):
    # Beta(1, 2): B(n + 1, 2) / B(1, 2) = 2 / ((n + 1)(n + 2)), so after n successes of n
    # M_n(p) = 2 / ((n + 1)(n + 2) p^n) and the lower bound is (2α / ((n + 1)(n + 2)))^(1/n); after n
    # failures B(1, n + 2) / B(1, 2) = 2 / (n + 2) and the upper bound is 1 − (2α / (n + 2))^(1/n).
    # (a ≠ b and neither is the default 1/2: a prior dropped or swapped on the way changes both.)
    seq = BetaMixtureSequence(alpha, 1.0, 2.0)
    lower = (2 * alpha / ((n + 1) * (n + 2))) ** (1 / n)
    upper = 1 - (2 * alpha / (n + 2)) ** (1 / n)
    # (to 1e-12 only: scipy's betaln is itself off by up to ~1e-13 here, e.g. at (1, 1002))
    assert seq.lower(n, n) == pytest.approx(lower, rel=1e-12)
    assert seq.upper(0, n) == pytest.approx(upper, rel=1e-12)
    # both are the mixture's: Clopper–Pearson's alpha^(1/n) and 1 − alpha^(1/n) are tighter
    assert seq.lower(n, n) < alpha ** (1 / n)
    assert seq.upper(0, n) > 1 - alpha ** (1 / n)


# --- where the floats cannot resolve the interval ------------------------------------------------------

def test_a_prior_too_concentrated_for_the_floats_gives_the_trivial_bounds():
    # Beta(1e15, 1e15): betaln's values are ~1.4e15 (ulp 0.25), so the computed log M_2(1/2) comes out
    # above log(1/alpha), although in exact arithmetic M_n(k/n) <= 1 < 1/alpha. No interval can be read
    # off such numbers: the bounds are the trivial 0 and 1, not Clopper–Pearson's, and no error.
    a = b = 1e15
    if log_mixture_wealth(1, 2, 0.5, a, b) < math.log(1 / 0.5):
        pytest.skip("this scipy's betaln resolves Beta(1e15, 1e15)")
    seq = BetaMixtureSequence(0.5, a, b)
    assert seq.lower(1, 2) == 0.0
    assert seq.upper(1, 2) == 1.0


@pytest.mark.parametrize("n", [8, 20])
def test_a_wealth_at_the_estimate_of_exactly_the_target_gives_the_trivial_bounds(n):
    # alpha chosen so that the computed f(k/n) = log M_n(k/n) − log(1/alpha) is exactly 0 (betaln of
    # Beta(1e15, 1e15) rounds log M_n(1) up to a small positive number d; alpha = e^−d). Exactly, the
    # mixture's lower bound after n successes of n is e^−d/n / 2 (M_n(1) = 2^−n) and its upper bound
    # after n failures 1 − e^−d/n / 2: a "root" at k/n itself would overstate both.
    s = 1e15
    d = float(betaln(n + s, s)) - float(betaln(s, s))
    alpha = math.exp(-d)
    f_lower, _ = confseq._excess(n, n, alpha, s, s)
    f_upper, _ = confseq._excess(0, n, alpha, s, s)
    if not (0 < alpha < 1 and f_lower(1.0) == 0.0 and f_upper(0.0) == 0.0):
        pytest.skip("this scipy's betaln does not put f(k/n) at exactly 0 here")
    seq = BetaMixtureSequence(alpha, s, s)
    assert seq.lower(n, n) == 0.0
    assert seq.upper(0, n) == 1.0


def test_a_lower_bound_at_or_below_1e_300_is_zero():
    # one success of one, KT: M_1(p) = 1/(2p), the root is alpha/2. For alpha in (2e-300, 4e-300) it lies
    # in (1e-300, 2e-300): 1e-300 itself is outside the set, but the root moved out by its step (which
    # has an absolute part of 1e-300) is not above 1e-300, and such a bound is reported as 0.
    for i in range(21):
        alpha = 2.2e-300 + i * 0.08e-300
        assert confseq._mixture_lower(1, 1, alpha) == 0.0, alpha
        assert BetaMixtureSequence(alpha).lower(1, 1) == 0.0, alpha


def test_an_upper_bound_at_the_last_float_below_one_is_one():
    # no success of one, KT: M_1(p) = 1/(2(1 − p)), the root is 1 − alpha/2. With alpha/2 a few ulp of
    # 1 (2^−53 each), the root moved out by its step reaches 1 − 2^−53 or beyond: the upper bound is then
    # 1 exactly, never a number above 1 and never the last float below 1 (which the early test already
    # treats as "the root lies above it").
    seen_one = seen_below = False
    for i in range(201):
        m = 2 + i * 0.05  # alpha / 2 = m ulp of 1
        alpha = 2 * m * 2.0 ** -53
        upper = confseq._mixture_upper(0, 1, alpha)
        assert 0 < upper <= 1.0 and upper != BELOW_ONE, (m, upper)
        if upper < 1.0:
            assert log_mixture_wealth(0, 1, upper) >= math.log(1 / alpha), m
            seen_below = True
        else:
            seen_one = True
        seq_upper = BetaMixtureSequence(alpha).upper(0, 1)
        assert seq_upper <= 1.0 and seq_upper != BELOW_ONE, (m, seq_upper)
    assert seen_one and seen_below


# --- the rounding margin -----------------------------------------------------------------------------

MARGIN_CASES = [
    # (k, n, alpha, a, b, p) with one magnitude far above the others:
    (1, 2, 0.5, 1e4, 1e4, 0.5),  # the prior's log B(a, b)
    (1, 1, 1e-100, 0.5, 0.5, 0.5),  # log(1/alpha) and the constant
    (1, 1, 0.5, 0.5, 0.5, 1e-200),  # k |log p|
    (1, 1000, 0.5, 0.5, 0.5, 0.999),  # (n − k) |log(1 − p)|
    (57, 100, ALPHA, 2.0, 5.0, 0.3),  # nothing in particular
]


@pytest.mark.parametrize("k,n,alpha,a,b,p", MARGIN_CASES)
def test_rounding_margin_is_at_least_16_ulp_of_the_largest_magnitude(k, n, alpha, a, b, p):
    # the roots are moved out until f(p) = log M_n(p) − log(1/alpha) is at least this margin; it has to
    # cover the rounding of every term, so it is at least 16 ulp of the largest of them
    f, rounding = confseq._excess(k, n, alpha, a, b)
    const = float(betaln(k + a, n - k + b)) - float(betaln(a, b)) + math.log(alpha)
    magnitudes = [abs(const), math.log(1 / alpha), abs(float(betaln(a, b))), abs(k * math.log(p)),
                  abs((n - k) * math.log1p(-p))]
    assert rounding(p) >= 16 * 2.0 ** -52 * max(magnitudes)
    # and f itself is the wealth against the target, as the other formula evaluates it
    assert f(p) == pytest.approx(log_mixture_wealth(k, n, p, a, b) - math.log(1 / alpha), rel=1e-12, abs=1e-9)


# --- validation and its messages ----------------------------------------------------------------------

@pytest.mark.parametrize("k,n,message", [
    (True, 10, "successes must be an integer count, got True"),
    (1.0, 10, "successes must be an integer count, got 1.0"),
    (1, True, "trials must be an integer count, got True"),
    (1, 10.0, "trials must be an integer count, got 10.0"),
    (11, 10, "need 0 <= successes <= trials, got 11, 10"),
    (-1, 10, "need 0 <= successes <= trials, got -1, 10"),
])
def test_invalid_counts_are_refused_with_the_offending_argument_named(k, n, message):
    for call in (BetaMixtureSequence(ALPHA).lower, BetaMixtureSequence(ALPHA).upper,
                 lambda k, n: log_mixture_wealth(k, n, 0.5)):
        with pytest.raises(ValueError) as info:
            call(k, n)
        assert str(info.value) == message


def test_an_infinite_second_prior_parameter_is_refused():
    with pytest.raises(ValueError, match=r"the Beta prior needs finite a > 0 and b > 0, got a = 1.0, b = inf"):
        BetaMixtureSequence(ALPHA, 1.0, math.inf)
    with pytest.raises(ValueError, match="prior"):
        log_mixture_wealth(1, 3, 0.5, a=1.0, b=math.inf)


def test_p_outside_the_unit_interval_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^p must be in \[0, 1\], got 1.5$"):
        log_mixture_wealth(1, 3, 1.5)


def test_centred_accepts_any_finite_positive_strength():
    # strength below 1 is a prior weaker than one pilot sample, still a valid Beta prior
    for strength in (0.5, 1.0):
        seq = BetaMixtureSequence.centred(0.05, 3, 10, strength=strength)
        assert (seq.a, seq.b) == (pytest.approx(3.5 * strength / 11, rel=1e-15),
                                  pytest.approx(7.5 * strength / 11, rel=1e-15))


@pytest.mark.parametrize("strength,shown", [(0, "0.0"), (-1, "-1.0"), (math.inf, "inf"), (math.nan, "nan")])
def test_centred_refuses_a_strength_that_is_not_finite_and_positive(strength, shown):
    # refused as a strength (not later, as a prior with a = 0 or a = inf)
    with pytest.raises(ValueError) as info:
        BetaMixtureSequence.centred(0.05, 3, 10, strength=strength)
    assert str(info.value) == f"strength must be a finite positive number, got {shown}"


@pytest.mark.parametrize("first", [0, -1, 2.0, True])
def test_geometric_looks_name_the_bad_first_look(first):
    with pytest.raises(ValueError) as info:
        GeometricLooksSequence(ALPHA, first=first)
    assert str(info.value) == f"first must be a positive integer, got {first!r}"
