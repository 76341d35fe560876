"""Anytime-valid confidence sequences for a binomial proportion, for sequential certification (float64).

Sequential certification draws the estimation samples in steps. After each step it has `successes` k
of `trials` n (k counts how often the class chosen beforehand, from the separate selection samples,
came out) and wants to stop as soon as the lower bound on p = P(f(x + δ) = c_A) is high enough, or as
soon as the upper bound shows it never will be. Stopping at a data-dependent time is only sound with a
lower sequence L_n that covers p at every n at once:

    P(there is an n with p < L_n) <= α.

This module gives two such sequences, and one that is not.

`BetaMixtureSequence` -- a likelihood-ratio martingale mixed over a Beta(a, b) prior on p. Against a
point p0 the wealth after k successes in n trials is

    M_n(p0) = B(k + a, n − k + b) / B(a, b) / (p0^k (1 − p0)^(n − k)),

the Bayes factor of the Beta(a, b) mixture against p0. Under p = p0 it is a nonnegative martingale with
M_0 = 1 (each factor is the mixture's predictive probability of the next outcome divided by p0's), so
Ville's inequality gives P(sup_n M_n(p) >= 1/α) <= α. The set {p0 : M_n(p0) < 1/α} therefore contains
the true p at every n simultaneously, with probability at least 1 − α, however the stopping time is
chosen. log M_n is convex in p0 with its minimum at k/n, where M_n(k/n) <= 1 (a mixture of likelihoods
is at most the largest one), so the set is an interval around k/n; its ends are found by root finding
and rounded outwards. a = b = 1/2 is the Krichevsky–Trofimov (KT) mixture. `lower` returns the smaller
of this bound and the fixed-n Clopper–Pearson bound at the same (k, n, α): the minimum of a valid
anytime bound with anything is still valid, and a sequential certificate is then never tighter than
the fixed-n certificate the same samples would give. (In exact arithmetic the mixture bound is never
above Clopper–Pearson anyway: the counts k for which it excludes a p0 from below form an upper tail
whose probability under p0 is at most α, by Markov's inequality with E M_n(p0) = 1, and
Clopper–Pearson excludes p0 on the largest such tail. The minimum keeps this true after rounding and
states the guarantee where it is used.) `BetaMixtureSequence.centred` puts the prior's mass near the
estimate of an independent pilot sample; see its docstring.

`GeometricLooksSequence` -- the simpler alternative: look only at n_j = first·2^j (j = 0, 1, 2, ...),
spend α_j = α·2^−(j+1) at look j (Σ α_j <= α) and take the Clopper–Pearson bound at level α_j. By the
union bound the probability that any look's bound misses p is at most Σ α_j <= α, for any rule that
decides after each look whether to go on. Between looks nothing may be concluded.

`naive_clopper_pearson_lower` -- the Clopper–Pearson bound recomputed after every batch. Each single
bound has level α, but "stop at the first batch where the bound clears the threshold" takes the worst
of many correlated chances: the probability that the bound EVER exceeds p grows with the number of
looks and tends to 1 as they go on (law of the iterated logarithm), so it is not valid sequentially. It is
kept only as the foil of the soundness simulations in tests/test_confseq.py.

The upper sequences (`upper`) only decide when to stop (e.g. give up once the upper bound on p_A is
below 1/2, or once the radius the lower bound could still reach is not worth the samples); nothing
certified is ever computed from them. They are built the same way and are valid in the same sense.

References (by name): I. Waudby-Smith and A. Ramdas, "Estimating means of bounded random variables by
betting" (betting confidence sequences); V. Voráček, "Treatment of statistical estimation problems in
randomized smoothing for adversarial robustness", 2024, arXiv:2406.17830; M. Z. Horváth et al.,
"Boosting randomized smoothing with variance reduced classifiers", ICLR 2022.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

from scipy.optimize import brentq
from scipy.special import betaln, xlog1py, xlogy
from scipy.stats import beta

from .stats import clopper_pearson_lower

__all__ = [
    "BetaMixtureSequence",
    "GeometricLooksSequence",
    "clopper_pearson_upper",
    "log_mixture_wealth",
    "naive_clopper_pearson_lower",
]

# Root-finding tolerances: brentq's answer is within _XTOL + _RTOL·|x| of the root. The absolute part
# is negligible, so the relative one (brentq's smallest, 4 ulp) governs and a bound of 1e-12 keeps its
# digits as well as one of 0.99 does; the answer is then moved outwards by that much (and further if
# needed) so that it is never inside the confidence set.
_XTOL = 1e-300
_RTOL = 4 * 2.0 ** -52
# The inner end of a bracket that would be 0 or 1, where f is infinite: the largest / smallest floats
# strictly inside (0, 1) that keep log finite.
_TINY = 1e-300
_BELOW_ONE = 1.0 - 2.0 ** -53
_LOG_SEARCH_BELOW = 1e-6


def _counts(successes, trials) -> tuple[int, int]:
    """Validated (k, n): integers (not bool, not float) with 0 <= k <= n."""
    values = []
    for name, value in (("successes", successes), ("trials", trials)):
        if isinstance(value, bool):
            raise ValueError(f"{name} must be an integer count, got {value!r}")
        try:
            values.append(operator.index(value))
        except TypeError:
            raise ValueError(f"{name} must be an integer count, got {value!r}") from None
    k, n = values
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= successes <= trials, got {k}, {n}")
    return k, n


def _check_alpha(alpha) -> float:
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:  # also rejects nan
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return alpha


def _check_prior(a, b) -> tuple[float, float]:
    a, b = float(a), float(b)
    if not (0.0 < a < math.inf and 0.0 < b < math.inf):
        raise ValueError(f"the Beta prior needs finite a > 0 and b > 0, got a = {a}, b = {b}")
    return a, b


def log_mixture_wealth(successes: int, trials: int, p: float, a: float = 0.5, b: float = 0.5) -> float:
    """log M_n(p) of the Beta(a, b) mixture against the point p after `successes` of `trials`.

    log B(k + a, n − k + b) − log B(a, b) − k log p − (n − k) log(1 − p); +inf where the point p
    cannot have produced the data (p = 0 with k > 0, p = 1 with k < n), 0·log 0 = 0 otherwise.
    """
    k, n = _counts(successes, trials)
    a, b = _check_prior(a, b)
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    log_likelihood = float(xlogy(k, p)) + float(xlog1py(n - k, -p))
    return float(betaln(k + a, n - k + b)) - float(betaln(a, b)) - log_likelihood


def _excess(k: int, n: int, alpha: float, a: float, b: float):
    """f(p) = log M_n(p) − log(1/α) as a fast scalar function of p in (0, 1) (math only), and a
    bound on the rounding error of its value at p."""
    const = float(betaln(k + a, n - k + b)) - float(betaln(a, b)) + math.log(alpha)
    failures = n - k

    def f(p: float) -> float:
        value = const
        if k:
            value -= k * math.log(p)
        if failures:
            value -= failures * math.log1p(-p)
        return value

    def rounding(p: float) -> float:
        # 16 ulp of the largest magnitude involved: covers betaln's error and the sum's roundings,
        # whichever order another evaluation (e.g. `log_mixture_wealth`) adds the terms in
        terms = abs(const) + math.log(1 / alpha) + abs(float(betaln(a, b)))
        if k:
            terms += abs(k * math.log(p))
        if failures:
            terms += abs(failures * math.log1p(-p))
        return 16 * 2.0 ** -52 * terms

    return f, rounding


def _outside(f, rounding, p: float) -> bool:
    """Whether p is outside {f < 0} even allowing for rounding: f(p) >= its rounding error."""
    return f(p) >= rounding(p)


def _mixture_lower(k: int, n: int, alpha: float, a: float = 0.5, b: float = 0.5) -> float:
    """Left end of {p : log M_n(p) < log(1/α)}, rounded down: the returned L has f(L) >= 0 with a
    margin for rounding, so it is never above the exact root."""
    if k == 0:
        return 0.0
    f, rounding = _excess(k, n, alpha, a, b)
    centre = k / n
    if f(centre) >= 0.0:  # cannot happen in exact arithmetic (f(k/n) <= log α < 0); the trivial bound
        return 0.0
    if not _outside(f, rounding, _TINY):  # the root lies below 1e-300 (or too close to tell)
        return 0.0
    if f(_LOG_SEARCH_BELOW) < 0.0:
        # a root far below 1 (a selected class that all but vanished under a strong centred prior): bisection in
        # p would need more than brentq's 100 steps to reach a relative tolerance there; search in log p
        root = math.exp(brentq(lambda u: f(math.exp(u)), math.log(_TINY), math.log(_LOG_SEARCH_BELOW),
                               xtol=_RTOL, rtol=_RTOL))
    else:
        root = brentq(f, _TINY, centre, xtol=_XTOL, rtol=_RTOL)
    step = _XTOL + _RTOL * abs(root)
    bound = root - step
    while bound > _TINY and not _outside(f, rounding, bound):  # brentq may answer from the inside
        step *= 2.0
        bound = root - step
    return bound if bound > _TINY else 0.0


def _mixture_upper(k: int, n: int, alpha: float, a: float = 0.5, b: float = 0.5) -> float:
    """Right end of {p : log M_n(p) < log(1/α)}, rounded up: the returned U has f(U) >= 0 with a
    margin for rounding, so it is never below the exact root."""
    if k == n:
        return 1.0
    f, rounding = _excess(k, n, alpha, a, b)
    centre = k / n
    if f(centre) >= 0.0:
        return 1.0
    if not _outside(f, rounding, _BELOW_ONE):  # the root lies above the largest float below 1
        return 1.0
    root = brentq(f, centre, _BELOW_ONE, xtol=_XTOL, rtol=_RTOL)
    step = _XTOL + _RTOL * abs(root)
    bound = root + step
    while bound < _BELOW_ONE and not _outside(f, rounding, bound):
        step *= 2.0
        bound = root + step
    return bound if bound < _BELOW_ONE else 1.0


def clopper_pearson_upper(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 − α) Clopper–Pearson upper confidence bound: the (1 − α) quantile of
    Beta(k + 1, n − k) (computed as its upper-α point, which is the same number without the rounding
    of 1 − α); 1 when k = n. Valid at one fixed n only."""
    k, n = _counts(successes, trials)
    alpha = _check_alpha(alpha)
    if k == n:
        return 1.0
    return float(beta.isf(alpha, k + 1, n - k))


def naive_clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """The fixed-n Clopper–Pearson lower bound, meant to be recomputed after every batch.

    NOT VALID SEQUENTIALLY. NEVER USE IT TO CERTIFY SEQUENTIALLY. Each call is a level-α bound for
    its own n, but a procedure that looks after every batch and stops when the bound is high enough
    crosses p with probability well above α (the more looks, the higher). It exists only as the foil
    that the soundness simulations in tests/test_confseq.py must catch; use `BetaMixtureSequence` or
    `GeometricLooksSequence` instead.
    """
    k, n = _counts(successes, trials)
    return clopper_pearson_lower(k, n, _check_alpha(alpha))


@dataclass(frozen=True)
class BetaMixtureSequence:
    """Confidence sequence from the Beta(a, b)-mixture martingale, valid at every n (Ville).

    `lower(k, n)` = min(mixture lower bound, Clopper–Pearson lower bound at (k, n, α)); `upper(k, n)`
    = max(mixture upper bound, Clopper–Pearson upper bound). Both are nondecreasing in k and do not
    depend on the order of the outcomes; n = 0 gives (0, 1).
    """

    alpha: float
    a: float = 0.5
    b: float = 0.5

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)
        _check_prior(self.a, self.b)

    @classmethod
    def centred(cls, alpha: float, successes: int, trials: int, strength: float | None = None
                ) -> "BetaMixtureSequence":
        """A prior centred on an independent pilot sample's estimate.

        The pilot is `successes` of `trials` from a sample that is independent of every estimation
        sample (in CERTIFY: the n0 selection samples, drawn from a separate noise stream). Prior mean
        m = (successes + 1/2) / (trials + 1), a = m·strength, b = (1 − m)·strength, with strength
        = trials + 1 by default (the pilot's weight).

        Why this stays valid: Ville's inequality holds for every prior fixed before the first
        estimation sample. Conditionally on the pilot, the prior is such a fixed prior and the
        estimation samples are still i.i.d. Bernoulli(p), so P(ever p < L_n | pilot) <= α for every
        pilot outcome, hence also unconditionally. (Choosing the prior from the estimation samples
        themselves would break this.)

        What it buys: the mixture's wealth is the likelihood ratio averaged over the prior. Against
        a point p0 below the truth, the best single alternative is near the truth; a flat prior
        (KT) spreads its mass over all of [0, 1] and pays for it with a factor of order √n, while a
        prior concentrated near the pilot's estimate loses much less, so the lower bound reaches a
        given level with fewer samples (when the pilot is representative; when it is not, the bound
        is looser but still valid).
        """
        k, n = _counts(successes, trials)
        if strength is None:
            strength = n + 1
        strength = float(strength)
        if not 0.0 < strength < math.inf:
            raise ValueError(f"strength must be a finite positive number, got {strength}")
        # a = m·strength and b = (1 − m)·strength, written so that 1 − m is not rounded
        return cls(alpha=alpha, a=(k + 0.5) * strength / (n + 1), b=(n - k + 0.5) * strength / (n + 1))

    def lower(self, successes: int, trials: int) -> float:
        """Anytime-valid lower bound on p after `successes` of `trials` (0 when n = 0 or k = 0)."""
        k, n = _counts(successes, trials)
        if n == 0:
            return 0.0
        mixture = _mixture_lower(k, n, self.alpha, self.a, self.b)
        return min(mixture, clopper_pearson_lower(k, n, self.alpha))

    def upper(self, successes: int, trials: int) -> float:
        """Anytime-valid upper bound on p (1 when n = 0 or k = n); only for deciding when to stop."""
        k, n = _counts(successes, trials)
        if n == 0:
            return 1.0
        mixture = _mixture_upper(k, n, self.alpha, self.a, self.b)
        return max(mixture, clopper_pearson_upper(k, n, self.alpha))


@dataclass(frozen=True)
class GeometricLooksSequence:
    """Clopper–Pearson at the looks n_j = first·2^j with α_j = α·2^−(j+1) (union bound, Σ α_j <= α).

    Defined only at the looks: `lower`/`upper` raise ValueError for any other n.
    """

    alpha: float
    first: int = 100

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)
        if isinstance(self.first, bool) or not isinstance(self.first, int) or self.first < 1:
            raise ValueError(f"first must be a positive integer, got {self.first!r}")

    def is_look(self, trials: int) -> bool:
        """Whether `trials` is one of first, 2·first, 4·first, ..."""
        _, n = _counts(0, trials)
        if n < self.first or n % self.first:
            return False
        ratio = n // self.first
        return ratio & (ratio - 1) == 0

    def look_index(self, trials: int) -> int:
        """j with trials = first·2^j; ValueError (naming the looks) if `trials` is not a look."""
        _, n = _counts(0, trials)
        if not self.is_look(n):
            f = self.first
            raise ValueError(f"n = {n} is not a look of this sequence; the looks are n = {f}·2^j: "
                             f"{f}, {2 * f}, {4 * f}, {8 * f}, ...")
        return (n // self.first).bit_length() - 1

    def alpha_at(self, trials: int) -> float:
        """α_j = α·2^−(j+1) spent at the look `trials` = first·2^j."""
        return self.alpha * 2.0 ** -(self.look_index(trials) + 1)

    def looks(self, max_trials: int) -> list[int]:
        """The looks n_j <= max_trials, in order."""
        out, n = [], self.first
        while n <= max_trials:
            out.append(n)
            n *= 2
        return out

    def lower(self, successes: int, trials: int) -> float:
        """Clopper–Pearson lower bound at level α_j; `trials` must be a look."""
        k, n = _counts(successes, trials)
        return clopper_pearson_lower(k, n, self.alpha_at(n))

    def upper(self, successes: int, trials: int) -> float:
        """Clopper–Pearson upper bound at level α_j; `trials` must be a look. Only for stopping."""
        k, n = _counts(successes, trials)
        return clopper_pearson_upper(k, n, self.alpha_at(n))
