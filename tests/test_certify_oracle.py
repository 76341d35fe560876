"""CERTIFY and PREDICT against answers known in closed form.

The base classifiers here are scripted: the k-th noise sample they see (counted across calls, in the
order Smooth draws them: the n0 selection samples, then the n estimation samples) gets class script[k],
whatever the input. So the selected class, the count nA, the Clopper–Pearson bound and the radius are
known before the run, and are recomputed here independently of rrcm's stats module: the bound by solving
P(Binomial(n, p) ≥ nA) = α for p (Cohen's definition), the unanimous case from α^(1/n) by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import binom, norm

from rrcm.smoothing import Smooth

NUM_CLASSES = 10
X = torch.zeros(1, 4, 4)


class Scripted(torch.nn.Module):
    """Returns one-hot logits whose argmax for the k-th sample ever seen is script[k]."""

    def __init__(self, script):
        super().__init__()
        self.script = list(script)
        self.seen = 0
        self.batch_sizes = []

    def forward(self, batch):
        k = batch.shape[0]
        classes = torch.tensor(self.script[self.seen : self.seen + k], dtype=torch.long)
        assert len(classes) == k, "Smooth drew more samples than it asked for"
        self.seen += k
        self.batch_sizes.append(k)
        return torch.nn.functional.one_hot(classes, NUM_CLASSES).float() * 5.0 - 1.0


def lower_bound_by_root(n_a: int, n: int, alpha: float) -> float:
    """The p at which seeing nA or more of n is exactly α likely: Clopper–Pearson's one-sided bound."""
    if n_a == 0:
        return 0.0
    if n_a == n:
        return alpha ** (1.0 / n)
    return brentq(lambda p: binom.sf(n_a - 1, n, p) - alpha, 1e-15, 1 - 1e-15, xtol=1e-15, rtol=1e-15)


def script(selection, estimation):
    """selection/estimation: lists of (class, count), expanded in order."""
    return [c for c, k in selection for _ in range(k)] + [c for c, k in estimation for _ in range(k)]


CASES = [
    # id, selection counts, estimation counts, expected selected class, expected nA
    ("clear-majority", [(3, 8), (5, 2)], [(3, 950), (5, 50)], 3, 950),
    # estimation's majority is class 5, but CERTIFY must test the class that *selection* chose
    ("selection-and-estimation-disagree", [(3, 7), (5, 3)], [(5, 600), (3, 400)], 3, 400),
    ("unanimous", [(7, 10)], [(7, 1000)], 7, 1000),
    ("selected-class-never-seen-again", [(2, 6), (4, 4)], [(4, 1000)], 2, 0),
    # a tie in selection goes to the smaller class index (torch.argmax takes the first maximum)
    ("tie-in-selection", [(6, 5), (1, 5)], [(6, 900), (1, 100)], 1, 100),
    ("just-above-half", [(0, 10)], [(0, 560), (9, 440)], 0, 560),
    ("just-below-half", [(0, 10)], [(0, 530), (9, 470)], 0, 530),
]


@pytest.mark.parametrize("name,selection,estimation,selected,n_a", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("batch_size", [1000, 7])
def test_certify_exact_class_count_bound_and_radius(name, selection, estimation, selected, n_a, batch_size):
    n0, n, alpha, sigma = 10, 1000, 0.001, 0.5
    model = Scripted(script(selection, estimation))
    cert = Smooth(model, NUM_CLASSES, sigma).certify_with_details(X, n0, n, alpha, batch_size, idx=0)

    assert model.seen == n0 + n  # every sample drawn, none twice
    assert max(model.batch_sizes) <= batch_size
    assert cert.selected == selected
    assert cert.count_selected == n_a
    expected_lower = lower_bound_by_root(n_a, n, alpha)
    assert cert.p_lower == pytest.approx(expected_lower, rel=1e-9, abs=1e-15)
    if expected_lower < 0.5:
        assert (cert.prediction, cert.radius) == (-1, 0.0)
    else:
        assert cert.prediction == selected
        assert cert.radius == pytest.approx(sigma * norm.ppf(expected_lower), rel=1e-9)


def test_the_cases_cover_both_sides_of_one_half():
    decisions = {name: lower_bound_by_root(n_a, 1000, 0.001) >= 0.5 for name, _, _, _, n_a in CASES}
    assert decisions["just-above-half"] and not decisions["just-below-half"]
    assert not decisions["selection-and-estimation-disagree"] and not decisions["selected-class-never-seen-again"]


def test_unanimous_radius_in_closed_form():
    # all n agree: p̲ = α^(1/n) exactly, R = σ Φ⁻¹(α^(1/n)); at n = 100,000, α = 0.001: 3.8115σ
    n0, n, alpha, sigma = 100, 100_000, 0.001, 0.25
    model = Scripted([4] * (n0 + n))
    prediction, radius = Smooth(model, NUM_CLASSES, sigma).certify(X, n0, n, alpha, 50_000, idx=3)
    assert prediction == 4
    assert radius == pytest.approx(sigma * norm.ppf(math.exp(math.log(alpha) / n)), rel=1e-12)
    assert radius / sigma == pytest.approx(3.8115, abs=5e-5)


def test_certify_uses_separate_noise_for_selection_and_estimation():
    # The model records the noise it sees; selection and estimation draws must not overlap.
    seen = []

    class Recorder(torch.nn.Module):
        def forward(self, batch):
            seen.append(batch.clone())
            return torch.zeros(batch.shape[0], NUM_CLASSES)

    Smooth(Recorder(), NUM_CLASSES, 1.0).certify(X, 8, 16, 0.001, 100, idx=0)
    selection, estimation = seen[0].reshape(8, -1), seen[1].reshape(16, -1)
    assert selection.shape[0] == 8 and estimation.shape[0] == 16
    # no selection sample reappears among the estimation samples
    assert torch.cdist(selection, estimation).min() > 1e-3


@pytest.mark.parametrize("top,second,rest,expected", [
    (90, 10, 0, 4),  # p ≈ 1.5e-16: predict
    (60, 40, 0, -1),  # p ≈ 0.057: abstain
    (70, 20, 10, 4),  # a third class does not enter the test
])
def test_predict_two_sided_binomial_test(top, second, rest, expected):
    n, alpha = top + second + rest, 0.001
    samples = [4] * top + [8] * second + [2] * rest
    rng = np.random.default_rng(0)
    samples = list(rng.permutation(samples))  # order does not matter to PREDICT
    model = Scripted(samples)
    assert Smooth(model, NUM_CLASSES, 0.25).predict(X, n, alpha, 32, idx=0) == expected
    pvalue = 2 * binom.sf(top - 1, top + second, 0.5)
    assert (pvalue <= alpha) == (expected != -1)
    assert model.seen == n
