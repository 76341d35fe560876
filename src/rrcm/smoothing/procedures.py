"""Certification procedures: what CERTIFY samples and what it concludes, apart from how samples are drawn.

A procedure is a small, pure object (settings only). `procedure.start(sigma)` gives one example's
certification, a state machine that asks for noise samples and is told their class counts:

    state = procedure.start(sigma)
    while (request := state.next_request()) is not None:
        stage, count = request                   # SELECTION or ESTIMATION, how many samples
        state.observe(class_counts(stage, count))  # counts of the *next* `count` samples of that stream
    certificate = state.certificate()

`Smooth.run` drives it on one input; the dataset runner drives many at once and packs their samples
into shared forward batches. Since each example's samples come from its own noise streams, in order,
the certificate does not depend on who draws them or how they are batched.

`CohenCertify` is Cohen et al.'s CERTIFY: n0 selection samples choose c_A, then n estimation samples,
one Clopper–Pearson bound. `SequentialCertify` draws the estimation samples in steps and stops as soon
as its decisions are settled, using a confidence sequence (rrcm.smoothing.confseq) whose lower bound is
valid at every sample count at once, so stopping whenever it decides is sound. Its upper bound and its
futility rule only decide *when to stop*; what is certified is always σ·Φ⁻¹(L) with L the lower bound of
the same sequence at the stopping time (and never above the fixed-n Clopper–Pearson bound at those
samples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import numpy as np
from scipy.stats import norm

from ..errors import UserError
from . import stats
from .confseq import BetaMixtureSequence, clopper_pearson_upper
from .noise import ESTIMATION, SELECTION

ABSTAIN = -1
SEQUENCES = ("centred", "kt")
MAX_GROWTH = 10.0  # a step of ten times the samples so far is already near-fixed-n; far larger overflows


@dataclass(frozen=True)
class Certificate:
    """Everything a certification decided for one input, enough to recompute it offline."""

    prediction: int  # cA, or −1 for abstain
    radius: float  # 0.0 when abstaining
    selected: int  # cA, the class chosen from the n0 selection samples
    count_selected: int  # nA: how often cA came out of the estimation samples drawn
    p_lower: float  # lower confidence bound on P(f(x+δ) = cA) at those samples
    samples_used: int  # estimation samples drawn (n for Cohen's CERTIFY)
    count_selection: int  # how often cA came out of the n0 selection samples
    p_upper: float | None = None  # the sequential procedure's upper bound at stopping (never certifies)


class _Selection:
    """The common first stage: n0 selection samples from their own stream choose c_A."""

    def __init__(self, n0: int):
        self.n0 = n0
        self.selected: int | None = None
        self.count_selection = 0

    def observe_selection(self, counts) -> None:
        counts = np.asarray(counts)
        self.selected = int(counts.argmax())  # ties: the lowest class index, as torch's argmax
        self.count_selection = int(counts[self.selected])


def _certificate(selected: int, count: int, p_lower: float, sigma: float, samples: int, count_selection: int,
                 p_upper: float | None = None) -> Certificate:
    if p_lower < 0.5:
        return Certificate(ABSTAIN, 0.0, selected, count, p_lower, samples, count_selection, p_upper)
    return Certificate(selected, stats.radius_from_lower_bound(p_lower, sigma), selected, count, p_lower, samples,
                       count_selection, p_upper)


# ---------------------------------------------------------------------------------------------------
# Cohen et al.'s CERTIFY
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CohenCertify:
    """CERTIFY with a fixed n: the certificate rrcm has always produced, log for log."""

    n0: int = 100
    n: int = 100_000
    alpha: float = 0.001

    name = "cohen"

    def validate(self, sigma: float) -> None:
        stats.validate_certify_settings(self.n0, self.n, self.alpha, sigma)

    def settings(self) -> dict:
        return {"procedure": self.name, "n0": self.n0, "n": self.n, "alpha": self.alpha}

    @property
    def budget(self) -> int:
        """The most estimation samples one certificate can draw."""
        return self.n

    def max_radius(self, sigma: float) -> float:
        return stats.max_certifiable_radius(self.n, self.alpha, sigma)

    def start(self, sigma: float) -> "CohenCertification":
        return CohenCertification(self, sigma)


class CohenCertification(_Selection):
    def __init__(self, procedure: CohenCertify, sigma: float):
        super().__init__(procedure.n0)
        self.procedure, self.sigma = procedure, sigma
        self.count: int | None = None

    def next_request(self) -> tuple[int, int] | None:
        if self.selected is None:
            return SELECTION, self.n0
        if self.count is None:
            return ESTIMATION, self.procedure.n
        return None

    def observe(self, counts) -> None:
        if self.selected is None:
            self.observe_selection(counts)
        elif self.count is None:
            self.count = int(np.asarray(counts)[self.selected])
        else:
            raise RuntimeError("observe() after the certification has finished")

    def certificate(self) -> Certificate:
        if self.count is None:
            raise RuntimeError("certificate() before every requested sample was observed")
        p = self.procedure
        p_lower = stats.clopper_pearson_lower(self.count, p.n, p.alpha)
        return _certificate(self.selected, self.count, p_lower, self.sigma, p.n, self.count_selection)


# ---------------------------------------------------------------------------------------------------
# Sequential, anytime-valid certification
# ---------------------------------------------------------------------------------------------------


def parse_radii(text: str) -> tuple[float, ...]:
    """Radii from "0,0.5,1" or a range "start:stop:step" (stop included when on the grid), sorted, unique."""
    text = text.strip()
    try:
        if ":" in text:
            parts = [float(p) for p in text.split(":")]
            if len(parts) != 3:
                raise ValueError
            start, stop, step = parts
            if not step > 0 or stop < start:
                raise ValueError
            count = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = [round(start + i * step, 12) for i in range(count)]
        else:
            values = [float(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise UserError(f"cannot read radii {text!r}; give a list such as 0,0.5,1 or a range start:stop:step "
                        "such as 0:1.5:0.25") from None
    if not values or any(not (math.isfinite(v) and v >= 0) for v in values):
        raise UserError(f"radii must be finite numbers >= 0, got {text!r}; e.g. 0:1.5:0.25")
    return tuple(sorted(set(values)))


@dataclass(frozen=True)
class SequentialCertify:
    """Draw estimation samples in steps; stop once the decision at `target_radius` (or at every radius of
    `radii`) is settled, or the budget `n_max` is spent.

    After each step, with nA of the t samples drawn so far showing c_A, the confidence sequence gives
    L_t <= p_A <= U_t (valid at every t at once). A radius r (threshold Φ(r/σ); r = 0 means "predict at all",
    threshold 1/2) is settled when L_t >= Φ(r/σ) (certified), when U_t < Φ(r/σ) (out of reach), or when it is
    futile: even the optimistic p⁺ (the Clopper–Pearson upper bound at level `futility_alpha` of the counts so
    far) would leave the lower bound below the threshold after the whole budget. Futility gives up a radius
    that a fixed-n run would sometimes certify; it never certifies anything, so it cannot make a certificate
    unsound, only less often equal to Cohen's (the benchmark measures how often).

    Steps: `step` samples, then each step adds `growth` × the samples so far (rounded up to a multiple of
    `step`), so a hard input costs O(log n_max) looks. `sequence`: "centred" (a Beta prior centred on the
    independent selection samples' estimate, BetaMixtureSequence.centred) or "kt" (Krichevsky–Trofimov).
    """

    n0: int = 100
    n_max: int = 100_000
    alpha: float = 0.001
    target_radius: float | None = None
    radii: tuple[float, ...] | None = None
    step: int = 100
    growth: float = 0.1
    futility_alpha: float | None = 0.01
    sequence: str = "centred"

    name = "sequential"

    def validate(self, sigma: float) -> None:
        stats.validate_certify_settings(self.n0, self.n_max, self.alpha, sigma)
        if (self.target_radius is None) == (self.radii is None):
            raise UserError("the sequential procedure needs exactly one of --target-radius R (decide robustness at "
                            "R) or --radii (settle every radius of a grid, e.g. 0:1.5:0.25)")
        if self.target_radius is not None and not (math.isfinite(self.target_radius) and self.target_radius >= 0):
            raise UserError(f"--target-radius must be a finite radius >= 0, got {self.target_radius}")
        if self.radii is not None and (not self.radii or any(not (math.isfinite(r) and r >= 0) for r in self.radii)):
            raise UserError(f"--radii must be finite radii >= 0, got {self.radii}")
        if isinstance(self.step, bool) or not isinstance(self.step, (int, np.integer)) or self.step < 1:
            raise UserError(f"--step must be a whole number of samples, at least 1, got {self.step!r}; the usual "
                            "value is 100")
        if not (math.isfinite(self.growth) and 0 <= self.growth <= MAX_GROWTH):
            raise UserError(f"--step-growth must be a number in [0, {MAX_GROWTH:g}], got {self.growth}; the usual "
                            "value is 0.1")
        if self.futility_alpha is not None and not 0 < self.futility_alpha < 1:
            raise UserError(f"--futility-alpha must be in (0, 1) (or none, for no futility stop), got "
                            f"{self.futility_alpha}; the usual value is 0.01")
        if self.sequence not in SEQUENCES:
            raise UserError(f"unknown confidence sequence {self.sequence!r}; choose one of {', '.join(SEQUENCES)}")

    def settings(self) -> dict:
        return {"procedure": self.name, "n0": self.n0, "n": self.n_max, "alpha": self.alpha,
                "target_radius": self.target_radius, "radii": list(self.radii) if self.radii is not None else None,
                "step": self.step, "growth": self.growth, "futility_alpha": self.futility_alpha,
                "sequence": self.sequence}

    @property
    def budget(self) -> int:
        return self.n_max

    def max_radius(self, sigma: float) -> float:
        # the fixed-n cap at the budget: the sequence's lower bound is never above Clopper–Pearson's
        return stats.max_certifiable_radius(self.n_max, self.alpha, sigma)

    def radii_to_settle(self) -> tuple[float, ...]:
        return (self.target_radius,) if self.target_radius is not None else tuple(self.radii)

    def thresholds(self, sigma: float) -> np.ndarray:
        """Φ(r/σ) for each radius to settle, ascending (r = 0 gives 1/2)."""
        return np.sort(norm.cdf(np.asarray(self.radii_to_settle(), dtype=np.float64) / sigma))

    def confidence_sequence(self, count_selection: int) -> BetaMixtureSequence:
        """The sequence for an example whose selection samples showed c_A `count_selection` times of n0."""
        if self.sequence == "kt":
            return BetaMixtureSequence(self.alpha)
        return BetaMixtureSequence.centred(self.alpha, count_selection, self.n0)

    def start(self, sigma: float) -> "SequentialCertification":
        return SequentialCertification(self, sigma)


class SequentialCertification(_Selection):
    def __init__(self, procedure: SequentialCertify, sigma: float):
        super().__init__(procedure.n0)
        self.procedure, self.sigma = procedure, sigma
        self.thresholds = procedure.thresholds(sigma)
        self.sequence: BetaMixtureSequence | None = None
        self.drawn = 0  # estimation samples so far
        self.count = 0  # of which showed c_A
        self.lower, self.upper = 0.0, 1.0
        self.done = False

    def next_request(self) -> tuple[int, int] | None:
        if self.selected is None:
            return SELECTION, self.n0
        if self.done:
            return None
        p = self.procedure
        size = p.step
        if self.drawn and p.growth > 0:
            size = max(p.step, p.step * math.ceil(p.growth * self.drawn / p.step))
        return ESTIMATION, min(size, p.n_max - self.drawn)

    def observe(self, counts) -> None:
        if self.selected is None:
            self.observe_selection(counts)
            self.sequence = self.procedure.confidence_sequence(self.count_selection)
            return
        if self.done:
            raise RuntimeError("observe() after the certification has finished")
        counts = np.asarray(counts)
        self.drawn += int(counts.sum())
        self.count += int(counts[self.selected])
        self.lower = self.sequence.lower(self.count, self.drawn)
        self.upper = self.sequence.upper(self.count, self.drawn)
        self.done = self.drawn >= self.procedure.n_max or self._settled()

    def _settled(self) -> bool:
        """Whether every threshold is certified, out of reach, or futile (then more samples change nothing)."""
        open_thresholds = self.thresholds[(self.thresholds > self.lower) & (self.thresholds <= self.upper)]
        if open_thresholds.size == 0:
            return True
        p = self.procedure
        if p.futility_alpha is None:
            return False
        # the lower bound after the whole budget if the remaining samples came at the optimistic rate p⁺
        optimistic = clopper_pearson_upper(self.count, self.drawn, p.futility_alpha)
        remaining = p.n_max - self.drawn
        projected = min(p.n_max, self.count + math.ceil(optimistic * remaining))
        reachable = self.sequence.lower(projected, p.n_max)
        return bool(np.all(open_thresholds > reachable))

    def certificate(self) -> Certificate:
        if not self.done:
            raise RuntimeError("certificate() before the certification has finished")
        return _certificate(self.selected, self.count, self.lower, self.sigma, self.drawn, self.count_selection,
                            self.upper)


def recompute_lower_bound(procedure: SequentialCertify, count_selection: int, count: int, drawn: int) -> float:
    """L at the stopping time from a log row's own columns (n0A, nA, n_used): what certificate() used."""
    return procedure.confidence_sequence(count_selection).lower(count, drawn)
