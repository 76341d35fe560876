"""The smoothed classifier: soundness by simulation, seeded noise, Cohen's contract, bad models."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from rrcm.errors import UserError
from rrcm.smoothing import Smooth, stats
from rrcm.smoothing.noise import ESTIMATION, SELECTION, NoiseStream


class HalfSpace(torch.nn.Module):
    """f(x) = 1 if w·x + b > 0 else 0, with ‖w‖ = 1: the smoothed classifier's true L2 robust radius at x
    is exactly |w·x + b| (the distance to the hyperplane), and P(f(x+δ) = 1) = Φ((w·x + b)/σ)."""

    def __init__(self, dim: int):
        super().__init__()
        w = torch.zeros(dim)
        w[0], w[1] = 0.6, 0.8
        self.register_buffer("w", w)

    def forward(self, x):
        margin = x.flatten(1) @ self.w
        return torch.stack([-margin, margin], dim=1)


def certify_many(smooth, margins, sigma, n0, n, alpha, unsound=False):
    """Certify points at the given signed margins; return (predictions, radii)."""
    preds, radii = [], []
    for i, m in enumerate(margins):
        x = torch.zeros(1, 1, 4)
        x[0, 0, 0], x[0, 0, 1] = 0.6 * m, 0.8 * m  # w·x = m
        if unsound:  # the plug-in estimate instead of the lower confidence bound: must be caught
            counts0 = smooth.sample_counts(x, n0, 10_000, idx=i, stage=SELECTION)
            c = int(counts0.argmax())
            p_hat = min(float(smooth.sample_counts(x, n, 10_000, idx=i, stage=ESTIMATION)[c]) / n, 1 - 1e-9)
            pred, radius = (c, sigma * norm.ppf(p_hat)) if p_hat > 0.5 else (-1, 0.0)
        else:
            pred, radius = smooth.certify(x, n0, n, alpha, 10_000, idx=i)
        preds.append(pred)
        radii.append(radius)
    return np.array(preds), np.array(radii)


def violation_rate(margins, preds, radii):
    """A certificate is wrong if it names the wrong class or claims more than the true radius."""
    truth = (np.asarray(margins) > 0).astype(int)
    certified = preds != -1
    wrong = certified & ((preds != truth) | (radii > np.abs(margins) + 1e-12))
    return wrong.mean()


@pytest.mark.parametrize("unsound", [False, True])
def test_soundness_by_simulation(unsound):
    # With alpha = 0.1 violations are frequent enough to measure; a sound certifier keeps their rate
    # within alpha plus binomial slack, the plug-in estimate blows through it.
    sigma, n0, n, alpha, trials = 0.5, 10, 100, 0.1, 2000
    rng = np.random.default_rng(1)
    # margins where p_A sits just above 1/2 stress the bound hardest
    margins = rng.uniform(0.0, 0.6 * sigma, size=trials) * rng.choice([-1, 1], size=trials)
    smooth = Smooth(HalfSpace(4), 2, sigma, seed=123)
    preds, radii = certify_many(smooth, margins, sigma, n0, n, alpha, unsound=unsound)
    rate = violation_rate(margins, preds, radii)
    slack = 3 * math.sqrt(alpha * (1 - alpha) / trials)
    if unsound:
        assert rate > alpha + slack
    else:
        assert rate <= alpha + slack
        assert (preds != -1).mean() > 0.3  # and it does certify a good share


def test_selection_and_estimation_use_different_noise():
    a = NoiseStream((1, 2, 2), "cpu", seed=0, idx=5, stage=SELECTION).take(10)
    b = NoiseStream((1, 2, 2), "cpu", seed=0, idx=5, stage=ESTIMATION).take(10)
    assert not torch.allclose(a, b)


def test_noise_stream_does_not_depend_on_batching():
    shape = (3, 8, 8)
    whole = NoiseStream(shape, "cpu", seed=7, idx=3, stage=ESTIMATION).take(5000)
    stream = NoiseStream(shape, "cpu", seed=7, idx=3, stage=ESTIMATION)
    pieces, sizes = [], [1, 999, 37, 2963, 1000]
    for s in sizes:
        pieces.append(stream.take(s))
    assert torch.equal(torch.cat(pieces), whole)
    other = NoiseStream(shape, "cpu", seed=7, idx=4, stage=ESTIMATION).take(5000)
    assert not torch.equal(other, whole)


def test_certify_is_identical_across_batch_sizes():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    x = torch.rand(1, 8, 8)
    results = {bs: Smooth(model, 10, 0.5, seed=3).certify_with_details(x, 100, 5000, 0.001, bs, idx=11)
               for bs in (5000, 1000, 333, 64)}
    assert len(set(results.values())) == 1


def test_certify_matches_recomputed_statistics():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    smooth = Smooth(model, 3, 0.25, seed=1)
    x = torch.rand(1, 4, 4)
    cert = smooth.certify_with_details(x, 50, 2000, 0.01, 500, idx=2)
    counts = smooth.sample_counts(x, 2000, 500, idx=2, stage=ESTIMATION)
    assert cert.count_selected == int(counts[cert.selected])
    assert cert.p_lower == stats.clopper_pearson_lower(cert.count_selected, 2000, 0.01)
    if cert.p_lower >= 0.5:
        assert cert.prediction == cert.selected
        assert cert.radius == pytest.approx(0.25 * norm.ppf(cert.p_lower))
    else:
        assert (cert.prediction, cert.radius) == (-1, 0.0)


def test_abstains_exactly_when_lower_bound_below_half():
    # A constant classifier that always says 1 certifies with p̲ = alpha^(1/n); a coin flip never does.
    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[0.0, 1.0]]).repeat(x.shape[0], 1)

    class Coin(torch.nn.Module):
        def forward(self, x):
            return torch.stack([x.flatten(1)[:, 0], -x.flatten(1)[:, 0]], 1)

    pred, radius = Smooth(Constant(), 2, 0.5).certify(torch.zeros(1, 2, 2), 10, 1000, 0.001, 100, idx=0)
    assert pred == 1 and radius == pytest.approx(stats.max_certifiable_radius(1000, 0.001, 0.5))
    pred, radius = Smooth(Coin(), 2, 0.5).certify(torch.zeros(1, 2, 2), 10, 1000, 0.001, 100, idx=0)
    assert (pred, radius) == (-1, 0.0)


def test_predict_follows_the_binomial_test():
    class Coin(torch.nn.Module):
        def forward(self, x):
            return torch.stack([x.flatten(1)[:, 0], -x.flatten(1)[:, 0]], 1)

    class Constant(torch.nn.Module):
        def forward(self, x):
            return torch.tensor([[0.0, 0.0, 1.0]]).repeat(x.shape[0], 1)

    assert Smooth(Coin(), 2, 1.0).predict(torch.zeros(1, 2, 2), 1000, 0.001, 100, idx=0) == -1
    assert Smooth(Constant(), 3, 1.0).predict(torch.zeros(1, 2, 2), 100, 0.001, 100, idx=0) == 2


def test_calls_without_index_get_distinct_reproducible_noise():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
    x = torch.zeros(1, 2, 2)
    first = Smooth(model, 2, 1.0, seed=0)
    second = Smooth(model, 2, 1.0, seed=0)
    a = [first.certify_with_details(x, 10, 200, 0.01, 50) for _ in range(3)]
    b = [second.certify_with_details(x, 10, 200, 0.01, 50) for _ in range(3)]
    assert a == b
    assert len({c.count_selected for c in a}) > 1


def test_noise_is_added_on_pixels_before_the_model():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros(x.shape[0], 2)

    x = torch.full((1, 2, 2), 0.5)
    Smooth(Spy(), 2, 0.25, seed=0).sample_counts(x, 10_000, 10_000, idx=0, stage=ESTIMATION)
    noise = seen[0] - 0.5
    assert noise.std().item() == pytest.approx(0.25, rel=0.02)
    assert noise.mean().abs().item() < 0.01


def test_bad_model_outputs_end_in_one_clear_error():
    class NaNModel(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 2), float("nan"))

    class WrongShape(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 5)

    with pytest.raises(UserError, match="NaN"):
        Smooth(NaNModel(), 2, 0.5).certify(torch.zeros(1, 2, 2), 10, 100, 0.001, 50, idx=0)
    with pytest.raises(UserError, match=r"shape \(10, 5\).*\(10, 2\)"):
        Smooth(WrongShape(), 2, 0.5).certify(torch.zeros(1, 2, 2), 10, 100, 0.001, 50, idx=0)
    with pytest.raises(UserError, match="one image"):
        Smooth(WrongShape(), 2, 0.5).certify(torch.zeros(2, 1, 2, 2), 10, 100, 0.001, 50, idx=0)


def test_bf16_and_channels_last_paths_run_in_bf16_and_agree_with_fp32():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(10)).eval()
    model(torch.zeros(1, 3, 8, 8))
    model = model.to(memory_format=torch.channels_last)
    seen = []
    model[0].register_forward_hook(lambda module, args, out: seen.append(
        (out.dtype, args[0].is_contiguous(memory_format=torch.channels_last))))
    x = torch.rand(3, 8, 8)
    fp32 = Smooth(model, 10, 0.25).sample_counts(x, 2000, 500, idx=0, stage=1)
    assert {dtype for dtype, _ in seen} == {torch.float32}
    seen.clear()
    smooth = Smooth(model, 10, 0.25, precision="bf16", channels_last=True)
    bf16 = smooth.sample_counts(x, 2000, 500, idx=0, stage=1)
    assert seen and all(dtype == torch.bfloat16 and channels_last for dtype, channels_last in seen)
    # same noise, slightly different arithmetic: the same top class, and only near-ties may flip
    assert int(bf16.sum()) == int(fp32.sum()) == 2000
    assert int(bf16.argmax()) == int(fp32.argmax())
    assert (bf16 - fp32).abs().sum() <= 0.1 * 2000
    cert = smooth.certify_with_details(x, 10, 100, 0.001, 64, idx=0)
    assert cert.selected == int(fp32.argmax()) or cert.prediction == -1


class DropoutNet(torch.nn.Module):
    """A classifier whose outputs depend on its mode: dropout (training) and batch norm (which
    updates its running statistics in training mode)."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 32), torch.nn.BatchNorm1d(32),
                                            torch.nn.ReLU(), torch.nn.Dropout(0.5))
        self.head = torch.nn.Linear(32, 5)

    def forward(self, x):
        return self.head(self.features(x))


def test_base_classifier_runs_in_eval_mode_and_gets_its_modes_back():
    torch.manual_seed(0)
    model = DropoutNet()
    x = torch.rand(1, 4, 4)
    reference_model = DropoutNet()
    reference_model.load_state_dict(model.state_dict())
    reference_model.eval()
    reference = Smooth(reference_model, 5, 0.5, seed=2)
    expected_counts = reference.sample_counts(x, 500, 100, idx=0, stage=ESTIMATION)
    expected_cert = reference.certify_with_details(x, 20, 500, 0.01, 100, idx=1)
    expected_pred = reference.predict(x, 500, 0.01, 100, idx=2)

    model.train()
    model.head.eval()  # a caller's mixed modes come back exactly as they were
    running_mean = model.features[2].running_mean.clone()
    smooth = Smooth(model, 5, 0.5, seed=2)
    assert torch.equal(smooth.sample_counts(x, 500, 100, idx=0, stage=ESTIMATION), expected_counts)
    assert smooth.certify_with_details(x, 20, 500, 0.01, 100, idx=1) == expected_cert
    assert smooth.predict(x, 500, 0.01, 100, idx=2) == expected_pred
    assert smooth.certify(x, 20, 500, 0.01, 100, idx=1) == (expected_cert.prediction, expected_cert.radius)
    assert model.training and model.features.training and model.features[4].training
    assert not model.head.training
    assert torch.equal(model.features[2].running_mean, running_mean)  # batch norm statistics untouched


def test_modes_are_restored_when_the_model_fails():
    class Failing(DropoutNet):
        def forward(self, x):
            raise RuntimeError("boom")

    model = Failing().train()
    with pytest.raises(RuntimeError, match="boom"):
        Smooth(model, 5, 0.5).certify(torch.rand(1, 4, 4), 10, 100, 0.01, 50, idx=0)
    assert all(m.training for m in model.modules())


def _smooth_for_arguments():
    torch.manual_seed(0)
    return Smooth(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval(), 2, 0.5)


GOOD_X = torch.zeros(1, 2, 2)
# (method, arguments, message): every one must raise ValueError (and UserError, which the CLI catches)
BAD_ARGUMENTS = [
    ("certify", dict(n0=0), r"n0 must be at least 1"),
    ("certify", dict(n0=-5), r"n0 must be at least 1"),
    ("certify", dict(n=0, n0=0), r"n0 must be at least 1"),
    ("certify", dict(n=0), r"n must be at least 1"),
    ("certify", dict(n0=101, n=100), r"n0 \(101\) is larger than n \(100\)"),
    ("certify", dict(n0=2.5), r"n0 must be an integer"),
    ("certify", dict(alpha=0.0), r"alpha must be in \(0, 1\)"),
    ("certify", dict(alpha=1.0), r"alpha must be in \(0, 1\)"),
    ("certify", dict(alpha=-0.1), r"alpha must be in \(0, 1\)"),
    ("certify", dict(alpha=float("nan")), r"alpha must be in \(0, 1\)"),
    ("certify", dict(batch_size=0), r"batch_size must be at least 1"),
    ("certify", dict(x=torch.zeros(2, 2)), r"shape \(C, H, W\), got shape \(2, 2\)"),
    ("certify", dict(x=torch.zeros(3, 1, 2, 2)), r"shape \(C, H, W\), got shape \(3, 1, 2, 2\)"),
    ("certify", dict(x=torch.zeros(1, 2, 2, dtype=torch.uint8)), r"floating-point.*uint8"),
    ("certify", dict(x=torch.full((1, 2, 2), float("nan"))), r"NaN or infinite pixels"),
    ("certify", dict(x=torch.tensor([[[0.0, float("inf")], [0.0, 0.0]]])), r"NaN or infinite pixels"),
    ("certify", dict(x=[[[0.0]]]), r"torch.Tensor"),
    ("predict", dict(n=0), r"n must be at least 1"),
    ("predict", dict(alpha=1.5), r"alpha must be in \(0, 1\)"),
    ("predict", dict(batch_size=0), r"batch_size must be at least 1"),
    ("predict", dict(x=torch.zeros(5, 1, 2, 2)), r"shape \(C, H, W\)"),
    ("predict", dict(x=torch.zeros(1, 2, 2, dtype=torch.int64)), r"floating-point"),
    ("predict", dict(x=torch.full((1, 2, 2), float("-inf"))), r"NaN or infinite pixels"),
    ("certify_with_details", dict(n0=0), r"n0 must be at least 1"),
    ("certify_with_details", dict(n0=11, n=10), r"n0 \(11\) is larger than n \(10\)"),
    ("certify_with_details", dict(alpha=2), r"alpha must be in \(0, 1\)"),
    ("certify_with_details", dict(batch_size=-1), r"batch_size must be at least 1"),
    ("certify_with_details", dict(x=torch.zeros(2, 2)), r"shape \(C, H, W\)"),
    ("certify_with_details", dict(x=torch.zeros(1, 2, 2, dtype=torch.bool)), r"floating-point"),
    ("certify_with_details", dict(x=torch.full((1, 2, 2), float("nan"))), r"NaN or infinite pixels"),
]


@pytest.mark.parametrize("method,changes,message", BAD_ARGUMENTS,
                         ids=[f"{m}-{'-'.join(c)}-{i}" for i, (m, c, _) in enumerate(BAD_ARGUMENTS)])
def test_invalid_arguments_raise_a_clear_value_error(method, changes, message):
    from rrcm.smoothing.smooth import InvalidArgument

    smooth = _smooth_for_arguments()
    args = {"x": GOOD_X, "n0": 10, "n": 100, "alpha": 0.01, "batch_size": 50, **changes}
    if method == "predict":
        args.pop("n0")
    with pytest.raises(ValueError, match=message) as caught:
        getattr(smooth, method)(**args, idx=0)
    assert isinstance(caught.value, UserError) and isinstance(caught.value, InvalidArgument)
    assert "\n" not in str(caught.value)


def test_valid_arguments_of_other_integer_types_are_accepted():
    smooth = _smooth_for_arguments()
    pred, radius = smooth.certify(GOOD_X, np.int64(10), np.int64(100), 0.01, np.int32(50), idx=0)
    assert pred in (-1, 0, 1) and radius >= 0
    assert smooth.certify_with_details(GOOD_X, 100, 100, 0.01, 1, idx=0).selected in (0, 1)  # n0 == n is fine


@pytest.mark.parametrize("kwargs,message", [(dict(sigma=0), "sigma"), (dict(sigma=float("nan")), "sigma"),
                                            (dict(sigma=float("inf")), "sigma"), (dict(sigma="big"), "sigma"),
                                            (dict(sigma=0.5, precision="fp8"), "precision")])
def test_invalid_constructor_arguments_raise_value_error(kwargs, message):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=message):
        Smooth(model, 2, **kwargs)


def test_sample_counts_refuses_a_batch_size_that_would_never_finish():
    smooth = _smooth_for_arguments()
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        smooth.sample_counts(GOOD_X, 10, 0, idx=0, stage=ESTIMATION)
    with pytest.raises(ValueError, match="floating-point"):
        smooth.sample_counts(torch.zeros(1, 2, 2, dtype=torch.uint8), 10, 5, idx=0, stage=ESTIMATION)
    assert int(smooth.sample_counts(GOOD_X, 0, 5, idx=0, stage=ESTIMATION).sum()) == 0


def reference_batches(x, sigma, seed, idx, stage, num, batch_size):
    """The noisy batches as first written: whole chunks drawn from the example's generator into fresh
    tensors, concatenated, then x + σ·δ out of place."""
    from rrcm.smoothing.noise import CHUNK_ELEMENTS, derive_seed

    generator = torch.Generator().manual_seed(derive_seed(seed, idx, stage))
    chunk = max(1, CHUNK_ELEMENTS // x.numel())
    drawn = torch.cat([torch.randn((chunk, *x.shape), generator=generator)
                       for _ in range(math.ceil(num / chunk))])[:num]
    return [x.unsqueeze(0) + sigma * drawn[i:i + batch_size] for i in range(0, num, batch_size)]


@pytest.mark.parametrize("shape,num,batch_size", [((3, 32, 32), 1000, 64), ((3, 32, 32), 50, 1000),
                                                   ((1, 8, 8), 5000, 1000), ((1, 8, 8), 3000, 1024),
                                                   ((3, 7, 5), 777, 100), ((1, 300, 300), 5, 2),
                                                   ((1, 2, 2), 10, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_model_sees_bit_for_bit_the_noise_it_always_saw(shape, num, batch_size, channels_last):
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, batch):
            if channels_last:
                assert batch.is_contiguous(memory_format=torch.channels_last)
            seen.append(batch.clone())
            return torch.zeros(batch.shape[0], 2)

    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    sigma = 0.12
    Smooth(Spy(), 2, sigma, seed=9, channels_last=channels_last).sample_counts(x, num, batch_size, idx=4,
                                                                              stage=ESTIMATION)
    expected = reference_batches(x, sigma, 9, 4, ESTIMATION, num, batch_size)
    assert len(seen) == len(expected)
    for got, want in zip(seen, expected):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_noise_for_inputs_of_another_dtype_promotes_as_before():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, batch):
            seen.append(batch.clone())
            return torch.zeros(batch.shape[0], 2, dtype=batch.dtype)

    x = torch.rand((1, 4, 4), dtype=torch.float64)
    Smooth(Spy(), 2, 0.3, seed=1).sample_counts(x, 30, 7, idx=0, stage=SELECTION)
    expected = reference_batches(x, 0.3, 1, 0, SELECTION, 30, 7)
    assert all(got.dtype == torch.float64 and torch.equal(got, want) for got, want in zip(seen, expected))


def test_take_into_refuses_a_buffer_it_cannot_fill():
    stream = NoiseStream((1, 2, 2), "cpu", seed=0, idx=0, stage=ESTIMATION)
    for bad in (torch.empty(3, 1, 2, 2, dtype=torch.float64), torch.empty(3, 1, 2, 3),
                torch.empty(3, 1, 4, 4)[:, :, ::2, ::2]):
        with pytest.raises(ValueError, match="take_into"):
            stream.take_into(bad)
