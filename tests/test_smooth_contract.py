"""Cohen's PREDICT to the letter (its index, one-class models, the test's level as an inclusive bound) and
noise streams that keep to their own device."""

import pytest
import torch
from scipy.stats import binomtest, norm

from rrcm.errors import UserError
from rrcm.smoothing import Certificate, Smooth
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


@pytest.mark.parametrize("count", [1, 5, 40, 20_000])  # 20,000 rows: more than one chunk of 7281
def test_a_stream_keeps_to_its_own_device_whatever_torch_s_default(count):
    # A caller who made another device torch's default (here "meta", standing in for a GPU) still gets a
    # CPU stream's numbers on the CPU, the same as without that default.
    shape = (1, 3, 3)
    reference = NoiseStream(shape, "cpu", seed=2, idx=7, stage=ESTIMATION)
    want = [reference.take(count).clone(), reference.take(count).clone()]
    with torch.device("meta"):
        stream = NoiseStream(shape, "cpu", seed=2, idx=7, stage=ESTIMATION)
        got = [stream.take(count), stream.take(count)]
        into = NoiseStream(shape, "cpu", seed=2, idx=7, stage=ESTIMATION)
        buffers = [torch.empty(count, *shape, device="cpu") for _ in range(2)]
        got += [into.take_into(buffer) for buffer in buffers]
    for g, w in zip(got, want + want):
        assert g.device == torch.device("cpu")
        assert torch.equal(g, w)


def test_a_stream_hands_out_the_last_row_of_a_chunk_before_drawing_the_next():
    shape = (1, 2, 2)  # 16384 rows per chunk
    whole = NoiseStream(shape, "cpu", seed=1, idx=0, stage=ESTIMATION).take(16384 + 7)
    for take_last in ("take", "take_into"):
        stream = NoiseStream(shape, "cpu", seed=1, idx=0, stage=ESTIMATION)
        first = stream.take(16383)  # one row of the chunk left
        if take_last == "take":
            rest = stream.take(8)
        else:
            rest = stream.take_into(torch.empty(8, *shape))
        assert torch.equal(torch.cat([first, rest]), whole[:16391])


class Linear(torch.nn.Module):
    """A float32 linear classifier that creates no tensors of its own."""

    def __init__(self, features, classes):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(features, classes)

    def forward(self, x):
        return self.linear(x.flatten(1).to(self.linear.weight.dtype))


def test_smoothing_on_the_cpu_ignores_torch_s_default_device():
    # Everything Smooth allocates goes on the input's device, not on torch's default one ("meta" stands in
    # for a GPU made the default).
    model = Linear(12, 3).eval()
    x = torch.rand(3, 2, 2, generator=torch.Generator().manual_seed(0))
    calls = [
        lambda s: s.sample_counts(x, 700, 300, idx=1, stage=ESTIMATION),  # in place
        lambda s: s.sample_counts(x.double(), 700, 300, idx=1, stage=ESTIMATION),  # out of place
        lambda s: s.certify_with_details(x, 50, 700, 0.01, 300, idx=2),
        lambda s: s.predict(x, 700, 0.01, 300, idx=3),
    ]
    for channels_last in (False, True):
        plain = Smooth(model, 3, 0.5, seed=1, channels_last=channels_last)
        expected = [call(plain) for call in calls]
        smooth = Smooth(model, 3, 0.5, seed=1, channels_last=channels_last)
        with torch.device("meta"):
            got = [call(smooth) for call in calls]
        for g, e in zip(got, expected):
            if isinstance(e, torch.Tensor):
                assert g.device == torch.device("cpu") and torch.equal(g, e)
            else:
                assert g == e


def test_sample_counts_are_int64_and_sum_to_the_number_of_draws():
    counts = Smooth(Linear(4, 3).eval(), 3, 0.5).sample_counts(torch.zeros(1, 2, 2), 1001, 100, idx=0,
                                                                stage=ESTIMATION)
    assert counts.dtype == torch.int64 and counts.shape == (3,) and int(counts.sum()) == 1001


class Spy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, batch):
        self.seen.append(batch.clone())
        return torch.zeros(batch.shape[0], 2, dtype=batch.dtype)


@pytest.mark.parametrize("channels_last", [False, True])
def test_float64_images_of_several_channels_get_float64_noise(channels_last):
    from tests.test_smooth import reference_batches

    x = torch.rand((3, 4, 5), dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    spy = Spy()
    Smooth(spy, 2, 0.3, seed=1, channels_last=channels_last).sample_counts(x, 30, 7, idx=0, stage=ESTIMATION)
    expected = reference_batches(x, 0.3, 1, 0, ESTIMATION, 30, 7)
    assert len(spy.seen) == len(expected) == 5
    for got, want in zip(spy.seen, expected):
        assert got.dtype == torch.float64 and got.shape == want.shape and torch.equal(got, want)


def test_fp16_computes_in_float16_and_bf16_in_bfloat16():
    model = Linear(4, 2).eval()
    dtypes = []
    model.linear.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    x = torch.rand(1, 2, 2)
    for precision, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)):
        dtypes.clear()
        Smooth(model, 2, 0.5, precision=precision).sample_counts(x, 100, 30, idx=0, stage=ESTIMATION)
        assert dtypes and set(dtypes) == {dtype}, precision


def test_nan_logits_in_any_batch_are_refused_with_the_example_named():
    class NaNFirst(torch.nn.Module):
        calls = 0

        def forward(self, batch):
            self.calls += 1
            logits = torch.zeros(batch.shape[0], 2)
            if self.calls == 1:
                logits[0, 0] = float("nan")
            return logits

    smooth = Smooth(NaNFirst(), 2, 0.5)
    with pytest.raises(UserError) as error:
        smooth.sample_counts(torch.zeros(1, 2, 2), 100, 30, idx=7, stage=ESTIMATION)
    assert str(error.value) == ("the model returned NaN or infinite logits (example 7); the checkpoint is broken: "
                                "retrain it or check the input data")


@pytest.mark.parametrize("extra_rows,extra_classes", [(1, 0), (-1, 0), (0, 1)])
def test_logits_of_the_wrong_shape_are_refused(extra_rows, extra_classes):
    class Wrong(torch.nn.Module):
        def forward(self, batch):
            return torch.zeros(batch.shape[0] + extra_rows, 2 + extra_classes)

    with pytest.raises(UserError) as error:
        Smooth(Wrong(), 2, 0.5).certify(torch.zeros(1, 2, 2), 10, 100, 0.001, 50, idx=0)
    assert str(error.value) == (f"the model returned logits of shape ({10 + extra_rows}, {2 + extra_classes}), "
                                "expected (10, 2); the checkpoint does not match the data's number of classes")


def test_calls_without_an_index_take_the_negative_indices_in_turn():
    # The k-th call without idx uses idx = -1 - k: reproducible from run to run and never a dataset index.
    model = Linear(4, 2).eval()
    x = torch.zeros(1, 2, 2)
    explicit = Smooth(model, 2, 1.0, seed=0)

    def certificates(indices):
        return [explicit.certify_with_details(x, 10, 200, 0.01, 50, idx=i) for i in indices]

    implicit = Smooth(model, 2, 1.0, seed=0)
    got = [implicit.certify_with_details(x, 10, 200, 0.01, 50) for _ in range(3)]
    assert got == certificates([-1, -2, -3])
    # calls that counted up from 0 or -1, or down from +1 or -2, would have drawn other noise
    for other in ([0, 1, 2], [-1, 0, 1], [1, 0, -1], [-2, -3, -4]):
        assert certificates(other) != got
    # predict counts its calls with the same counter
    assert implicit.predict(x, 200, 0.3, 50) == explicit.predict(x, 200, 0.3, 50, idx=-4)


def test_a_lower_bound_of_exactly_one_half_certifies_radius_zero():
    # 10 of 10 samples at alpha = 2^-10: p̲ = alpha^(1/10) = 1/2 exactly, which Cohen's CERTIFY does not
    # abstain on (it abstains below 1/2): the class is returned with radius σ·Φ⁻¹(1/2) = 0.
    cert = Smooth(Constant(2), 2, 0.5).certify_with_details(torch.zeros(1, 2, 2), 5, 10, 2.0 ** -10, 10, idx=0)
    assert cert == Certificate(prediction=1, radius=0.0, selected=1, count_selected=10, p_lower=0.5, samples_used=10,
                               count_selection=5)
    assert Smooth(Constant(2), 2, 0.5).certify(torch.zeros(1, 2, 2), 5, 10, 2.0 ** -10 * 0.999, 10, idx=0) == (-1, 0.0)


@pytest.mark.parametrize("method,changes,message", [
    ("certify", dict(n0=101, n=100), "n0 (101) is larger than n (100): selection should use fewer samples than "
                                     "estimation, e.g. n0 = 100, n = 100000"),
    ("certify", dict(alpha="big"), "alpha must be a number in (0, 1), got 'big'"),
    ("predict", dict(alpha=None), "alpha must be a number in (0, 1), got None"),
    ("certify", dict(alpha=1.0), "alpha must be in (0, 1), got 1.0; the usual value is 0.001"),
])
def test_invalid_arguments_name_the_problem_in_full(method, changes, message):
    args = {"x": torch.zeros(1, 2, 2), "n0": 10, "n": 100, "alpha": 0.01, "batch_size": 50, **changes}
    if method == "predict":
        args.pop("n0")
    with pytest.raises(ValueError) as error:
        getattr(Smooth(Linear(4, 2).eval(), 2, 0.5), method)(**args, idx=0)
    assert str(error.value) == message


def test_large_images_get_one_image_per_noise_chunk():
    # 33,489 numbers per image: more than half a chunk (65,536), so each chunk holds one image; torch draws a
    # (2, ...) block differently from two (1, ...) blocks when the size is not a multiple of 16.
    from tests.test_smooth import reference_batches

    shape = (1, 183, 183)
    (want,) = reference_batches(torch.zeros(shape), 1.0, 3, 4, ESTIMATION, 3, 3)
    assert torch.equal(NoiseStream(shape, "cpu", seed=3, idx=4, stage=ESTIMATION).take(3), want)


def test_derived_seeds_stay_what_they_were():
    # Every log's noise comes from these seeds: a change would silently change every certificate.
    from rrcm.smoothing.noise import derive_seed

    assert derive_seed(0, 0, 0) == 6375474604893067239
    assert derive_seed(5, 3, 1) == 7243610121753521693
    assert derive_seed(0, -1, 2) == 800578120329946034  # negative keys (calls without idx) are taken mod 2**64
    assert derive_seed(0, -1, 2) == derive_seed(0, 2 ** 64 - 1, 2)
    assert derive_seed(7, -3, 0) == 1997981045508651970
    assert all(0 <= derive_seed(k, i, 1) < 2 ** 63 for k in range(5) for i in range(-5, 5))


def test_the_defaults_are_seed_0_and_the_default_memory_layout():
    spy = Spy()
    x = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0))
    Smooth(spy, 2, 0.5).sample_counts(x, 20, 20, idx=0, stage=ESTIMATION)
    default = spy.seen[-1]
    assert default.is_contiguous() and not default.is_contiguous(memory_format=torch.channels_last)
    Smooth(spy, 2, 0.5, seed=0).sample_counts(x, 20, 20, idx=0, stage=ESTIMATION)
    assert torch.equal(spy.seen[-1], default)
    Smooth(spy, 2, 0.5, seed=1).sample_counts(x, 20, 20, idx=0, stage=ESTIMATION)
    assert not torch.equal(spy.seen[-1], default)


@pytest.mark.parametrize("x,message", [
    ([[[0.0]]], "x must be a torch.Tensor of shape (C, H, W), got list"),
    (torch.zeros(2, 1, 2, 2), "Smooth expects one image of shape (C, H, W), got shape (2, 1, 2, 2); certify a batch "
                              "one image at a time"),
    (torch.zeros(1, 2, 2, dtype=torch.uint8), "x must be a floating-point image with pixels in [0, 1], got dtype "
                                              "torch.uint8; convert it, e.g. x.float() / 255 for uint8 pixels"),
    (torch.full((1, 2, 2), float("nan")), "x contains NaN or infinite pixels"),
])
def test_invalid_images_name_the_problem_in_full(x, message):
    with pytest.raises(ValueError) as error:
        Smooth(Linear(4, 2).eval(), 2, 0.5).certify(x, 10, 100, 0.01, 50, idx=0)
    assert str(error.value) == message


def test_counts_that_are_not_integers_and_unknown_precisions_are_named_in_full():
    smooth = Smooth(Linear(4, 2).eval(), 2, 0.5)
    with pytest.raises(ValueError) as error:
        smooth.certify(torch.zeros(1, 2, 2), 10, True, 0.01, 50, idx=0)
    assert str(error.value) == "n must be an integer, got True"
    with pytest.raises(ValueError) as error:
        Smooth(Linear(4, 2), 2, 0.5, precision="fp8")
    assert str(error.value) == ("unknown precision 'fp8'; choose one of fp32, bf16, fp16 "
                                "(rrcm.smoothing.precision.choose_precision picks one for a machine)")

