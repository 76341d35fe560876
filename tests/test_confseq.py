"""Anytime-valid confidence sequences (rrcm.smoothing.confseq) against exact values and simulations.

The simulations are seeded and vectorised; each one counts the paths on which a lower bound EVER
exceeds the true p, which for a valid sequence happens with probability at most alpha, and for
Clopper-Pearson recomputed after every batch (the foil) clearly more often.
"""

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import beta, binom

from rrcm.smoothing import confseq
from rrcm.smoothing.confseq import (
    BetaMixtureSequence,
    GeometricLooksSequence,
    clopper_pearson_upper,
    log_mixture_wealth,
    naive_clopper_pearson_lower,
)
from rrcm.smoothing.stats import clopper_pearson_lower

ALPHA = 0.001


# --- exact values -----------------------------------------------------------------------------------

def _predictive_wealth(outcomes, p0, a, b):
    """M_n(p0) as the product of the mixture's predictive probabilities (count + a) / (t + a + b),
    divided by p0's probabilities, in exact rational arithmetic."""
    wealth, ones = Fraction(1), 0
    for t, x in enumerate(outcomes):
        if x:
            wealth *= (ones + a) / (t + a + b) / p0
            ones += 1
        else:
            wealth *= (t - ones + b) / (t + a + b) / (1 - p0)
    return wealth


@pytest.mark.parametrize("outcomes", [[1], [0], [1, 0, 1, 1, 0, 0, 1], [1] * 12, [0, 0, 0, 1, 0, 0, 0, 0, 0]])
@pytest.mark.parametrize("p0", [Fraction(1, 10), Fraction(1, 2), Fraction(9, 10)])
@pytest.mark.parametrize("a,b", [(Fraction(1, 2), Fraction(1, 2)), (Fraction(2), Fraction(3)),
                                 (Fraction(7, 4), Fraction(1, 4))])
def test_log_mixture_wealth_is_the_predictive_product(outcomes, p0, a, b):
    k, n = sum(outcomes), len(outcomes)
    exact = math.log(_predictive_wealth(outcomes, p0, a, b))
    value = log_mixture_wealth(k, n, float(p0), float(a), float(b))
    assert value == pytest.approx(exact, rel=1e-13, abs=1e-13)


def test_log_mixture_wealth_defaults_to_kt_and_handles_the_ends():
    # n = 0: M_0 = 1 for every p0
    assert log_mixture_wealth(0, 0, 0.3) == 0.0
    # KT defaults: one success has predictive probability 1/2
    assert log_mixture_wealth(1, 1, 0.25) == pytest.approx(math.log(0.5 / 0.25), rel=1e-14)
    # p0 = 0 or 1 with data it cannot produce: infinite wealth
    assert log_mixture_wealth(1, 3, 0.0) == math.inf
    assert log_mixture_wealth(2, 3, 1.0) == math.inf
    # p0 = 0 with no successes: 0 log 0 = 0, wealth = mixture probability of n failures
    # (KT: (1/2)(3/4)(5/6) for three failures)
    assert log_mixture_wealth(0, 3, 0.0) == pytest.approx(math.log(0.5 * 0.75 * 5 / 6), rel=1e-14)
    assert log_mixture_wealth(3, 3, 1.0) == pytest.approx(math.log(0.5 * 0.75 * 5 / 6), rel=1e-14)
    for p in (1.5, -0.1, math.nan):
        with pytest.raises(ValueError):
            log_mixture_wealth(1, 3, p)
    with pytest.raises(ValueError):
        log_mixture_wealth(1, 3, 0.5, a=0.0)


def _bisect_decreasing(g, lo, hi):
    """Root of a decreasing function on [lo, hi] by plain bisection to the float resolution."""
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if g(mid) > 0:
            lo = mid
        else:
            hi = mid
    return lo


@pytest.mark.parametrize("n", [1, 2, 10, 100, 1000, 100_000])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_kt_all_successes_lower_bound_solves_its_equation(n, alpha):
    # k = n: log B(n + 1/2, 1/2) − log B(1/2, 1/2) − n log L = log(1/alpha). The first two terms are
    # the log of KT's probability of n successes, ∏_{t<n} (t + 1/2)/(t + 1), summed here term by term
    # (lgamma differences would lose ~1e-10 to cancellation at n = 100,000).
    log_kt = math.fsum(math.log1p(-0.5 / (t + 1)) for t in range(n))
    root = _bisect_decreasing(lambda x: log_kt - n * math.log(x) - math.log(1 / alpha), 1e-300, 1.0)
    mixture = confseq._mixture_lower(n, n, alpha)
    assert mixture == pytest.approx(root, abs=1e-12)
    assert mixture <= root + 1e-15
    # the mixture is the looser bound here, so it is what `lower` returns; the fixed-n bound is alpha^(1/n)
    assert BetaMixtureSequence(alpha).lower(n, n) == mixture
    assert mixture < alpha ** (1 / n)


def test_kt_zero_successes_upper_bound_mirrors_the_all_successes_lower_bound():
    for n in (1, 7, 100, 10_000):
        assert confseq._mixture_upper(0, n, ALPHA) == pytest.approx(1 - confseq._mixture_lower(n, n, ALPHA),
                                                                    abs=1e-13)


@pytest.mark.parametrize("k,n", [(1, 10), (57, 100), (990, 1000), (99_000, 100_000), (0, 100), (100, 100)])
def test_clopper_pearson_upper_solves_its_defining_equation(k, n):
    upper = clopper_pearson_upper(k, n, ALPHA)
    if k == n:
        assert upper == 1.0
    else:
        # the p at which observing <= k successes has probability exactly alpha
        assert binom.cdf(k, n, upper) == pytest.approx(ALPHA, rel=1e-8)
    assert upper == pytest.approx(1 - clopper_pearson_lower(n - k, n, ALPHA), abs=1e-13)
    assert clopper_pearson_upper(0, 100, ALPHA) == pytest.approx(1 - ALPHA ** (1 / 100), rel=1e-12)


def test_centred_prior_parameters():
    seq = BetaMixtureSequence.centred(ALPHA, 100, 100, 101)
    assert (seq.alpha, seq.a, seq.b) == (ALPHA, 100.5, 0.5)
    # strength defaults to trials + 1: a = successes + 1/2, b = failures + 1/2
    seq = BetaMixtureSequence.centred(0.05, 3, 10)
    assert (seq.a, seq.b) == (pytest.approx(3.5, rel=1e-15), pytest.approx(7.5, rel=1e-15))
    seq = BetaMixtureSequence.centred(0.05, 3, 10, strength=22)
    assert (seq.a, seq.b) == (pytest.approx(7.0, rel=1e-15), pytest.approx(15.0, rel=1e-15))
    with pytest.raises(ValueError):
        BetaMixtureSequence.centred(0.05, 3, 10, strength=0)
    with pytest.raises(ValueError):
        BetaMixtureSequence.centred(0.05, 11, 10)


def _samples_to_exceed(seq, target, step=100):
    n = step
    while seq.lower(n, n) <= target:
        n += step
    return n


def test_samples_needed_when_every_sample_agrees():
    # alpha = 0.001, looking every 100 samples: KT pays ~ sqrt(n) against the best alternative, the
    # centred prior much less; the fixed-n bound alpha^(1/n) is the floor (301 and 5114 samples).
    kt = BetaMixtureSequence(ALPHA)
    centred = BetaMixtureSequence.centred(ALPHA, 100, 100, 101)
    phi2, phi3 = 0.97725, 0.99865
    assert _samples_to_exceed(kt, phi2) == 500
    assert _samples_to_exceed(kt, phi3) == 9000
    assert _samples_to_exceed(centred, phi2) == 400
    assert _samples_to_exceed(centred, phi3) == 6700
    assert math.ceil(math.log(ALPHA) / math.log(phi3)) == 5114


# --- bounds against Clopper–Pearson, monotonicity -----------------------------------------------------

def _pairs():
    """All (k, n) with n <= 80, a dense subset of k for 80 < n <= 400, and a few large n."""
    pairs = [(k, n) for n in range(1, 81) for k in range(n + 1)]
    fractions = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.97, 0.99)
    for n in range(81, 401, 3):
        ks = {0, 1, 2, n - 2, n - 1, n} | {int(f * n) for f in fractions}
        pairs += [(k, n) for k in sorted(ks)]
    for n in (10_000, 100_000):
        ks = {0, 1, 10, n // 2, n - 1000, n - 100, n - 10, n - 1, n} | {int(f * n) for f in fractions}
        pairs += [(k, n) for k in sorted(ks)]
    return pairs


@pytest.fixture(scope="module")
def kt_table():
    seq = BetaMixtureSequence(ALPHA)
    pairs = _pairs()
    ks = np.array([k for k, _ in pairs])
    ns = np.array([n for _, n in pairs])
    lower = np.array([seq.lower(k, n) for k, n in pairs])
    upper = np.array([seq.upper(k, n) for k, n in pairs])
    return ks, ns, lower, upper


def test_bounds_bracket_the_estimate_and_the_fixed_n_interval(kt_table):
    ks, ns, lower, upper = kt_table
    with np.errstate(divide="ignore", invalid="ignore"):
        cp_lower = np.where(ks == 0, 0.0, beta.ppf(ALPHA, ks, ns - ks + 1))
        cp_upper = np.where(ks == ns, 1.0, beta.ppf(1 - ALPHA, ks + 1, ns - ks))
    assert np.all(lower <= cp_lower)
    assert np.all(upper >= cp_upper - 1e-12)  # ppf(1 - alpha) vs isf(alpha): the same up to rounding
    assert np.all(lower <= ks / ns)
    assert np.all(ks / ns <= upper)
    assert np.all((0.0 <= lower) & (upper <= 1.0))
    assert np.all(lower[ks == 0] == 0.0)
    assert np.all(upper[ks == ns] == 1.0)
    # with k > 0 the bound is positive, and strictly inside (k/n is never certified)
    assert np.all(lower[ks > 0] > 0.0)
    assert np.all(lower[ks > 0] < (ks / ns)[ks > 0])
    assert np.all(upper[ks < ns] < 1.0)


def test_lower_is_the_smaller_of_mixture_and_clopper_pearson(kt_table):
    seq = BetaMixtureSequence(ALPHA)
    for k, n in [(57, 100), (1, 2), (5000, 10_000), (99_000, 100_000), (100_000, 100_000)]:
        mixture, cp = confseq._mixture_lower(k, n, ALPHA), clopper_pearson_lower(k, n, ALPHA)
        assert seq.lower(k, n) == min(mixture, cp)
        mixture, cp = confseq._mixture_upper(k, n, ALPHA), clopper_pearson_upper(k, n, ALPHA)
        assert seq.upper(k, n) == max(mixture, cp)
    # In exact arithmetic the mixture's lower bound never exceeds Clopper–Pearson's (its rejection
    # region for p0 is an upper tail of probability <= alpha, Clopper–Pearson's is the largest one), so
    # here `lower` is the mixture bound itself; a `max` in place of the `min` would return cp.
    ks, ns, lower, _ = kt_table
    small = (ns <= 80) & (ks > 0)
    cp = beta.ppf(ALPHA, ks[small], ns[small] - ks[small] + 1)
    mixture = np.array([confseq._mixture_lower(k, n, ALPHA) for k, n in zip(ks[small], ns[small])])
    assert np.all(mixture <= cp)
    assert np.all(mixture < cp - 1e-6)
    assert np.all(lower[small] == mixture)


def test_bounds_are_monotone(kt_table):
    ks, ns, lower, upper = kt_table
    table = {(k, n): (lo, up) for k, n, lo, up in zip(ks.tolist(), ns.tolist(), lower, upper)}
    seq = BetaMixtureSequence(ALPHA)
    checked = 0
    for (k, n), (lo, up) in table.items():
        # in k at fixed n (the next k of the table)
        nxt = [kk for kk in range(k + 1, n + 1) if (kk, n) in table]
        if nxt:
            lo2, up2 = table[(nxt[0], n)]
            assert lo <= lo2 and up <= up2, (k, n)
        # one more failure cannot raise either bound; one more success cannot lower them
        if (k, n + 1) in table:
            assert table[(k, n + 1)][0] <= lo and table[(k, n + 1)][1] <= up, (k, n)
            checked += 1
        if (k + 1, n + 1) in table:
            assert table[(k + 1, n + 1)][0] >= lo and table[(k + 1, n + 1)][1] >= up, (k, n)
    assert checked > 3000
    for k in (1, 50_000, 99_000, 99_999, 100_000):
        assert seq.lower(k, 100_001) <= seq.lower(k, 100_000)


def test_upper_mirrors_lower_for_a_symmetric_prior():
    for a, b in [(0.5, 0.5), (2.0, 5.0)]:
        for k, n in [(1, 10), (3, 10), (57, 100), (990, 1000), (0, 1000), (99_000, 100_000)]:
            assert confseq._mixture_upper(k, n, ALPHA, a, b) == pytest.approx(
                1 - confseq._mixture_lower(n - k, n, ALPHA, b, a), abs=1e-12)


CASES = [(k, n, alpha, a, b)
         for alpha in (0.001, 0.05, 0.5)
         for a, b in ((0.5, 0.5), (2.0, 5.0), (100.5, 0.5))
         for k, n in ((1, 1), (1, 10), (3, 10), (57, 100), (100, 100), (990, 1000), (1, 100_000),
                      (99_000, 100_000), (99_999, 100_000), (100_000, 100_000), (4_999_999, 5_000_000))]


@pytest.mark.parametrize("k,n,alpha,a,b", CASES)
def test_mixture_roots_are_conservative_and_tight(k, n, alpha, a, b):
    target = math.log(1 / alpha)
    lower = confseq._mixture_lower(k, n, alpha, a, b)
    assert 0 <= lower < k / n
    if lower > 0:
        # as evaluated by the other formula, never inside the set (the implementation keeps a margin
        # for rounding, so even a differently rounded evaluation does not come out below the target)
        assert log_mixture_wealth(k, n, lower, a, b) >= target
        # and no further out than needed: 1e-12 (relative) inwards is inside the set
        assert log_mixture_wealth(k, n, lower * (1 + 1e-12), a, b) < target
    else:
        # the left end lies below 1e-300 (a prior with almost no mass near 0)
        assert log_mixture_wealth(k, n, 1e-300, a, b) < target
    upper = confseq._mixture_upper(k, n, alpha, a, b)
    assert k / n < upper <= 1 or upper == k / n == 1
    if upper < 1:
        assert log_mixture_wealth(k, n, upper, a, b) >= target
        assert log_mixture_wealth(k, n, upper * (1 - 1e-12), a, b) < target
    elif k < n:
        # the right end lies above the largest float below 1 (a prior with almost no mass near 1)
        assert log_mixture_wealth(k, n, 1 - 2.0 ** -53, a, b) < target


def test_lower_bound_of_a_single_success_far_below_the_floats_is_zero():
    # k = 1 of n = 1 with a prior that makes even p = 1e-300 plausible: the root is below 1e-300
    assert confseq._mixture_lower(1, 1, 0.5, a=1e-300, b=1.0) == 0.0
    assert confseq._mixture_lower(0, 50, ALPHA) == 0.0
    assert confseq._mixture_upper(50, 50, ALPHA) == 1.0


# --- geometric looks --------------------------------------------------------------------------------

def test_geometric_looks_spend_alpha_by_halves():
    seq = GeometricLooksSequence(ALPHA, first=100)
    assert seq.looks(1000) == [100, 200, 400, 800]
    assert seq.looks(99) == []
    assert [seq.is_look(n) for n in (0, 50, 100, 150, 200, 300, 400, 800, 1600, 3200, 6400, 6500)] == \
        [False, False, True, False, True, False, True, True, True, True, True, False]
    assert [seq.look_index(n) for n in (100, 200, 400, 102_400)] == [0, 1, 2, 10]
    assert seq.alpha_at(100) == ALPHA / 2
    assert seq.alpha_at(200) == ALPHA / 4
    assert seq.alpha_at(102_400) == ALPHA / 2 ** 11
    assert sum(seq.alpha_at(n) for n in seq.looks(100 * 2 ** 40)) < ALPHA
    for k, n in [(0, 100), (57, 100), (200, 200), (390, 400), (99_000, 102_400)]:
        assert seq.lower(k, n) == clopper_pearson_lower(k, n, seq.alpha_at(n))
        assert seq.upper(k, n) == clopper_pearson_upper(k, n, seq.alpha_at(n))
    assert seq.lower(100, 100) == pytest.approx((ALPHA / 2) ** (1 / 100), rel=1e-12)
    assert GeometricLooksSequence(0.05, first=1).looks(8) == [1, 2, 4, 8]


def test_geometric_looks_refuse_other_counts():
    seq = GeometricLooksSequence(ALPHA)
    for n in (0, 99, 101, 300, 1000):
        with pytest.raises(ValueError, match=r"looks are n = 100·2\^j: 100, 200, 400, 800"):
            seq.lower(0, n)
        with pytest.raises(ValueError, match="not a look"):
            seq.upper(0, n)
    for first in (0, -1, 2.0, True):
        with pytest.raises(ValueError):
            GeometricLooksSequence(ALPHA, first=first)


# --- edge cases and validation ----------------------------------------------------------------------

def test_empty_and_extreme_counts():
    seq = BetaMixtureSequence(ALPHA)
    assert (seq.lower(0, 0), seq.upper(0, 0)) == (0.0, 1.0)
    assert seq.lower(0, 1000) == 0.0
    assert seq.upper(0, 1000) == pytest.approx(1 - seq.lower(1000, 1000), abs=1e-13)
    assert 0 < seq.upper(0, 1000) < 0.011
    assert seq.upper(1000, 1000) == 1.0
    assert 0.98 < seq.lower(1000, 1000) < ALPHA ** (1 / 1000)
    assert seq.lower(np.int64(57), np.int64(100)) == seq.lower(57, 100)


@pytest.mark.parametrize("k,n", [(11, 10), (-1, 10), (1, -1), (0, -1), (1.0, 10), (1, 10.0), (True, 10),
                                 ("3", 10), (None, 10), (0.5, 1)])
def test_invalid_counts_are_refused(k, n):
    calls = [BetaMixtureSequence(ALPHA).lower, BetaMixtureSequence(ALPHA).upper,
             lambda k, n: log_mixture_wealth(k, n, 0.5),
             lambda k, n: clopper_pearson_upper(k, n, ALPHA),
             lambda k, n: naive_clopper_pearson_lower(k, n, ALPHA),
             GeometricLooksSequence(ALPHA, first=10).lower, GeometricLooksSequence(ALPHA, first=10).upper]
    for call in calls:
        with pytest.raises(ValueError):
            call(k, n)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, math.nan, math.inf])
def test_alpha_outside_the_unit_interval_is_refused_at_construction(alpha):
    with pytest.raises(ValueError, match="alpha"):
        BetaMixtureSequence(alpha)
    with pytest.raises(ValueError, match="alpha"):
        GeometricLooksSequence(alpha)
    with pytest.raises(ValueError, match="alpha"):
        BetaMixtureSequence.centred(alpha, 5, 10)
    with pytest.raises(ValueError, match="alpha"):
        clopper_pearson_upper(5, 10, alpha)


@pytest.mark.parametrize("a,b", [(0.0, 1.0), (1.0, 0.0), (-1.0, 1.0), (math.inf, 1.0), (math.nan, 1.0)])
def test_invalid_priors_are_refused(a, b):
    with pytest.raises(ValueError, match="prior"):
        BetaMixtureSequence(ALPHA, a, b)


def test_sequences_are_frozen():
    seq = BetaMixtureSequence(ALPHA)
    with pytest.raises(AttributeError):
        seq.alpha = 0.5
    with pytest.raises(AttributeError):
        GeometricLooksSequence(ALPHA).first = 3


# --- soundness simulations --------------------------------------------------------------------------

SIM_ALPHA = 0.05
PATHS = 4000
STEP = 20
LENGTH = 2000
LOOKS = list(range(STEP, LENGTH + 1, STEP))
PILOT = 100


def _slack_count(paths):
    """A crossing count above this has probability <= 1e-6 for a procedure whose rate is <= alpha."""
    return binom.isf(1e-6, paths, SIM_ALPHA)


def _crossed(lower, p, counts, looks):
    """Per path: whether lower(k, n) > p at any look n (counts[:, j] = successes at looks[j]).

    At each look, the smallest k with lower(k, n) > p is found by bisection (lower is nondecreasing in
    k, which test_bounds_are_monotone checks), between floor(p·n) (lower <= k/n <= p there) and the
    largest count of any path."""
    crossed = np.zeros(counts.shape[0], dtype=bool)
    for j, n in enumerate(looks):
        column = counts[:, j]
        hi = int(column.max())
        if lower(hi, n) <= p:
            continue
        lo = math.floor(p * n)
        if lower(lo, n) > p:
            lo = -1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if lower(mid, n) > p:
                hi = mid
            else:
                lo = mid
        crossed |= column >= hi
    return crossed


@pytest.fixture(scope="module", params=[0.5, 0.9, 0.99], ids=lambda p: f"p={p}")
def paths(request):
    """(p, counts at every look, independent pilot counts) for PATHS seeded Bernoulli(p) paths."""
    p = request.param
    rng = np.random.default_rng(20240617 + int(1000 * p))
    counts = np.cumsum(rng.binomial(STEP, p, size=(PATHS, len(LOOKS))), axis=1)
    pilots = rng.binomial(PILOT, p, size=PATHS)  # a separate draw: independent of each path
    return p, counts, pilots


def test_kt_sequence_is_valid_at_every_look(paths):
    p, counts, _ = paths
    crossings = _crossed(BetaMixtureSequence(SIM_ALPHA).lower, p, counts, LOOKS).sum()
    assert crossings <= _slack_count(PATHS)


def test_naive_clopper_pearson_after_every_batch_is_not_valid(paths):
    p, counts, _ = paths
    crossings = _crossed(lambda k, n: naive_clopper_pearson_lower(k, n, SIM_ALPHA), p, counts, LOOKS).sum()
    assert crossings > _slack_count(PATHS)
    # while at one fixed n it is fine (its rate at the last look alone is at most alpha)
    last = _crossed(lambda k, n: naive_clopper_pearson_lower(k, n, SIM_ALPHA), p, counts[:, -1:], LOOKS[-1:])
    assert last.sum() <= _slack_count(PATHS)


def test_geometric_looks_are_valid(paths):
    p, counts, _ = paths
    seq = GeometricLooksSequence(SIM_ALPHA, first=STEP)
    looks = seq.looks(LENGTH)
    assert looks == [20, 40, 80, 160, 320, 640, 1280]
    columns = [LOOKS.index(n) for n in looks]
    crossings = _crossed(seq.lower, p, counts[:, columns], looks).sum()
    assert crossings <= _slack_count(PATHS)


def test_centred_prior_from_an_independent_pilot_is_valid(paths):
    p, counts, pilots = paths
    crossed = np.zeros(PATHS, dtype=bool)
    for pilot in np.unique(pilots):
        mine = pilots == pilot
        seq = BetaMixtureSequence.centred(SIM_ALPHA, int(pilot), PILOT)
        crossed[mine] = _crossed(seq.lower, p, counts[mine], LOOKS)
    assert crossed.sum() <= _slack_count(PATHS)
