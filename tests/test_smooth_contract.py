"""Cohen's PREDICT to the letter (its index, one-class models, the test's level as an inclusive bound) and
noise streams that keep to their own device."""

import pytest
import torch
from scipy.stats import binomtest, norm

from rrcm.smoothing import Smooth
from rrcm.smoothing.noise import ESTIMATION, PREDICTION, NoiseStream
from tests.test_smooth import HalfSpace


class Constant(torch.nn.Module):
    """Always the last of `num_classes` classes."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        logits = torch.zeros(x.shape[0], self.num_classes)
        logits[:, -1] = 1.0
        return logits


def test_predict_uses_the_noise_of_the_index_it_is_given():
    # P(f(x+δ) = 1) = Φ(margin/σ) = 0.61: with n = 100 and alpha = 0.05 the two-sided test rejects in about
    # half of the noise draws, so which draws predict uses decides its answer.
    sigma, n, alpha = 0.5, 100, 0.05
    margin = sigma * norm.ppf(0.61)
    x = torch.zeros(1, 1, 4)
    x[0, 0, 0], x[0, 0, 1] = 0.6 * margin, 0.8 * margin  # w·x = margin
    smooth = Smooth(HalfSpace(4), 2, sigma, seed=4)
    expected, got = [], []
    for idx in range(16):
        counts = smooth.sample_counts(x, n, 64, idx=idx, stage=PREDICTION)
        top, second = sorted(counts.tolist(), reverse=True)
        pvalue = binomtest(top, top + second, p=0.5).pvalue  # scipy's exact test, not rrcm's
        expected.append(int(counts.argmax()) if pvalue <= alpha else -1)
        got.append(smooth.predict(x, n, alpha, 64, idx=idx))
    assert got == expected
    assert set(expected) == {-1, 1}  # both answers occur: the index matters
    # and an index's answer does not depend on the calls made before it
    assert [Smooth(HalfSpace(4), 2, sigma, seed=4).predict(x, n, alpha, 64, idx=idx)
            for idx in reversed(range(16))] == expected[::-1]


def test_predict_rejects_at_exactly_the_level_alpha():
    # All 10 samples agree: the two-sided p-value is 2·2⁻¹⁰ = 2⁻⁹ exactly, and a test at level alpha
    # rejects when p <= alpha, so alpha = 2⁻⁹ predicts while anything smaller abstains.
    smooth = Smooth(Constant(2), 2, 0.5, seed=0)
    x = torch.zeros(1, 2, 2)
    assert binomtest(10, 10, p=0.5).pvalue == 2.0 ** -9
    assert smooth.predict(x, 10, 2.0 ** -9, 4, idx=0) == 1
    assert smooth.predict(x, 10, 2.0 ** -9 * (1 - 1e-12), 4, idx=0) == -1
    assert smooth.predict(x, 9, 2.0 ** -9, 4, idx=0) == -1  # p = 2⁻⁸


def test_predict_with_a_single_class_tests_it_against_no_runner_up():
    # With one class there is no second count: the test is 10 vs 0 (p = 2⁻⁹ ≈ 0.00195), not 10 vs 1
    # (p = 12/1024 ≈ 0.0117), so alpha = 0.005 predicts class 0.
    smooth = Smooth(Constant(1), 1, 0.5, seed=0)
    x = torch.zeros(1, 2, 2)
    assert smooth.predict(x, 10, 0.005, 3, idx=0) == 0
    assert smooth.predict(x, 10, 0.001, 3, idx=0) == -1  # 2⁻⁹ > 0.001
    assert smooth.predict(x, 11, 0.001, 3, idx=0) == 0  # 2⁻¹⁰ < 0.001
    cert = smooth.certify_with_details(x, 5, 100, 0.001, 30, idx=0)
    assert (cert.prediction, cert.selected, cert.count_selected) == (0, 0, 100)
    assert cert.p_lower == pytest.approx(0.001 ** (1 / 100), rel=1e-12)


@pytest.mark.parametrize("count", [1, 5, 40])
def test_a_stream_keeps_to_its_own_device_whatever_torch_s_default(count):
    # A caller who made another device torch's default (here "meta", standing in for a GPU) still gets a
    # CPU stream's numbers on the CPU, the same as without that default.
    shape = (1, 3, 3)
    reference = NoiseStream(shape, "cpu", seed=2, idx=7, stage=ESTIMATION)
    want = [reference.take(count).clone(), reference.take(count).clone()]
    with torch.device("meta"):
        stream = NoiseStream(shape, "cpu", seed=2, idx=7, stage=ESTIMATION)
        got = [stream.take(count), stream.take(count)]
    for g, w in zip(got, want):
        assert g.device == torch.device("cpu")
        assert torch.equal(g, w)
