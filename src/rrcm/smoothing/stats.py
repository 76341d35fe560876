"""Statistics of randomized smoothing, in float64 (scipy).

CERTIFY (Cohen et al. 2019) lower-bounds p_A = P(f(x+δ) = c_A) with the one-sided Clopper–Pearson
bound at level α and certifies the L2 radius σ·Φ⁻¹(p̲) when p̲ ≥ 1/2. PREDICT abstains unless a
two-sided binomial test rejects "the top two classes are equally likely" at level α.
"""

from __future__ import annotations

import math

from scipy.stats import beta, binomtest, norm

from ..errors import UserError


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    """One-sided (1 − α) Clopper–Pearson lower confidence bound on a binomial proportion.

    Equals the lower end of the two-sided interval at level 2α (statsmodels' `proportion_confint(...,
    alpha=2*alpha, method="beta")[0]`, which Cohen et al. use).
    """
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}, {trials}")
    if successes == 0:
        return 0.0
    return float(beta.ppf(alpha, successes, trials - successes + 1))


def radius_from_lower_bound(p_lower: float, sigma: float) -> float:
    """Certified L2 radius σ·Φ⁻¹(p̲); only meaningful for p̲ ≥ 1/2."""
    return float(sigma * norm.ppf(p_lower))


def max_certifiable_radius(n: int, alpha: float, sigma: float) -> float:
    """The largest radius CERTIFY can return with n samples: all n agree, p̲ = α^(1/n)."""
    return radius_from_lower_bound(alpha ** (1.0 / n), sigma)


def min_samples_to_certify(alpha: float) -> int:
    """Smallest n for which n agreeing samples give p̲ = α^(1/n) > 1/2, i.e. n > log2(1/α)."""
    return math.floor(math.log2(1.0 / alpha)) + 1


def top_two_pvalue(count_top: int, count_second: int) -> float:
    """Two-sided binomial test p-value of H0: the top two classes are equally likely."""
    total = count_top + count_second
    if total == 0:
        return 1.0
    return float(binomtest(count_top, total, p=0.5).pvalue)


def validate_certify_settings(n0: int, n: int, alpha: float, sigma: float) -> None:
    """Raise UserError (one line, with the fix) for settings that are invalid or can never certify."""
    if not (sigma > 0 and math.isfinite(sigma)):
        raise UserError(f"sigma must be a positive number, got {sigma}; use e.g. --sigma 0.25")
    if not 0 < alpha < 1:
        raise UserError(f"alpha must be in (0, 1), got {alpha}; the usual value is 0.001")
    if n0 < 1:
        raise UserError(f"n0 must be at least 1, got {n0}; the usual value is 100")
    if n < 1:
        raise UserError(f"n must be at least 1, got {n}; the usual value is 100000")
    if n0 > n:
        raise UserError(f"n0 ({n0}) is larger than n ({n}): selection should use fewer samples than "
                        "estimation; use e.g. --n0 100 --n 100000")
    needed = min_samples_to_certify(alpha)
    if n < needed:
        raise UserError(f"n = {n} can never certify at alpha = {alpha}: even if all samples agree the lower "
                        f"bound stays below 1/2; use n >= {needed} (typically 100000)")
