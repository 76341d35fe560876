"""The smoothed classifier g(x) = argmax_c P(f(x + δ) = c), δ ~ N(0, σ²I).

Same contract as Cohen et al.'s `core.Smooth`, so existing code switches by changing one import:
`Smooth(base_classifier, num_classes, sigma)`, `predict(x, n, alpha, batch_size)` and
`certify(x, n0, n, alpha, batch_size) -> (class, radius)`, class −1 meaning abstain.

Differences that keep it sound and fast: σ is noise on [0, 1] pixels and is added before the model
(which normalises inside itself); selection, estimation and prediction draw from separate per-example
noise streams; counting happens on the device; statistics are in float64.

The base classifier is run in eval mode (dropout off, batch norm on its running statistics) whatever
mode the caller left it in, and each of its modules gets its own mode back afterwards. Invalid
arguments raise `InvalidArgument`, which is both a `ValueError` and rrcm's `UserError`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import operator
from dataclasses import dataclass

import torch

from ..errors import UserError
from . import stats
from .noise import ESTIMATION, PREDICTION, SELECTION, NoiseStream

PRECISIONS = ("fp32", "bf16", "fp16")


class InvalidArgument(UserError, ValueError):
    """An invalid argument to `Smooth`: a `ValueError` for Python callers, a one-line `UserError` for the CLI."""


def _count(name: str, value, minimum: int) -> int:
    """`value` as an int of at least `minimum`, or InvalidArgument naming `name`."""
    if isinstance(value, bool):
        raise InvalidArgument(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise InvalidArgument(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise InvalidArgument(f"{name} must be at least {minimum}, got {number}")
    return number


def _check_alpha(alpha) -> float:
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        raise InvalidArgument(f"alpha must be a number in (0, 1), got {alpha!r}") from None
    if not 0.0 < value < 1.0:
        raise InvalidArgument(f"alpha must be in (0, 1), got {alpha!r}; the usual value is 0.001")
    return value


def _check_image(x, *, finite: bool = True) -> None:
    if not isinstance(x, torch.Tensor):
        raise InvalidArgument(f"x must be a torch.Tensor of shape (C, H, W), got {type(x).__name__}")
    if x.dim() != 3:
        raise InvalidArgument(f"Smooth expects one image of shape (C, H, W), got shape {tuple(x.shape)}; "
                              "certify a batch one image at a time")
    if not x.is_floating_point():
        raise InvalidArgument(f"x must be a floating-point image with pixels in [0, 1], got dtype {x.dtype}; "
                              "convert it, e.g. x.float() / 255 for uint8 pixels")
    if finite and not bool(torch.isfinite(x).all()):
        raise InvalidArgument("x contains NaN or infinite pixels")


@dataclass(frozen=True)
class Certificate:
    """Everything CERTIFY decided for one input, enough to recompute it offline."""

    prediction: int  # cA, or −1 for abstain
    radius: float  # 0.0 when abstaining
    selected: int  # cA, the class chosen from the n0 selection samples
    count_selected: int  # nA: how often cA came out of the n estimation samples
    p_lower: float  # one-sided Clopper–Pearson lower bound on P(f(x+δ) = cA)


class Smooth:
    """A smoothed classifier around `base_classifier` (pixels in [0, 1] → logits)."""

    ABSTAIN = -1

    def __init__(self, base_classifier: torch.nn.Module, num_classes: int, sigma: float, *, seed: int = 0,
                 precision: str = "fp32", channels_last: bool = False):
        try:
            sigma_value = float(sigma)
        except (TypeError, ValueError):
            raise InvalidArgument(f"sigma must be a positive number, got {sigma!r}") from None
        if not (sigma_value > 0 and math.isfinite(sigma_value)):
            raise InvalidArgument(f"sigma must be a positive number, got {sigma}")
        if precision not in PRECISIONS:
            raise InvalidArgument(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)} "
                                  "(rrcm.smoothing.precision.choose_precision picks one for a machine)")
        self.base_classifier = base_classifier
        self.num_classes = int(num_classes)
        self.sigma = float(sigma)
        self.seed = int(seed)
        self.precision = precision
        self.channels_last = channels_last
        # Calls without an explicit idx still get distinct, reproducible noise.
        self._call_counter = itertools.count()

    # -- Cohen's contract -------------------------------------------------------------------------
    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int, *,
                idx: int | None = None) -> tuple[int, float]:
        """Cohen's CERTIFY: (predicted class, certified L2 radius), or (−1, 0.0) to abstain."""
        cert = self.certify_with_details(x, n0, n, alpha, batch_size, idx=idx)
        return cert.prediction, cert.radius

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int, *, idx: int | None = None) -> int:
        """Cohen's PREDICT: the top class if a binomial test separates it from the runner-up, else −1."""
        _check_image(x)
        n = _count("n", n, 1)
        alpha = _check_alpha(alpha)
        batch_size = _count("batch_size", batch_size, 1)
        idx = self._resolve_idx(idx)
        counts = self.sample_counts(x, n, batch_size, idx=idx, stage=PREDICTION).cpu()
        top2 = torch.topk(counts, k=min(2, self.num_classes))
        count_top = int(top2.values[0])
        count_second = int(top2.values[1]) if self.num_classes > 1 else 0
        if stats.top_two_pvalue(count_top, count_second) > alpha:
            return self.ABSTAIN
        return int(top2.indices[0])

    # -- details ----------------------------------------------------------------------------------
    def certify_with_details(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int, *,
                             idx: int | None = None) -> Certificate:
        """CERTIFY with everything it decided (see `Certificate`)."""
        _check_image(x)
        n0 = _count("n0", n0, 1)
        n = _count("n", n, 1)
        if n0 > n:
            raise InvalidArgument(f"n0 ({n0}) is larger than n ({n}): selection should use fewer samples than "
                                  "estimation, e.g. n0 = 100, n = 100000")
        alpha = _check_alpha(alpha)
        batch_size = _count("batch_size", batch_size, 1)
        idx = self._resolve_idx(idx)
        # Selection and estimation use separate noise streams: the class is chosen before, and
        # independently of, the samples that test it.
        counts_selection = self.sample_counts(x, n0, batch_size, idx=idx, stage=SELECTION)
        selected = int(counts_selection.argmax())
        counts_estimation = self.sample_counts(x, n, batch_size, idx=idx, stage=ESTIMATION)
        count_selected = int(counts_estimation[selected])
        p_lower = stats.clopper_pearson_lower(count_selected, n, alpha)
        if p_lower < 0.5:
            return Certificate(self.ABSTAIN, 0.0, selected, count_selected, p_lower)
        return Certificate(selected, stats.radius_from_lower_bound(p_lower, self.sigma), selected,
                           count_selected, p_lower)

    @torch.no_grad()
    def sample_counts(self, x: torch.Tensor, num: int, batch_size: int, *, idx: int, stage: int) -> torch.Tensor:
        """Class counts of f(x + δ) over `num` noise draws, as an int64 tensor on x's device.

        The base classifier runs in eval mode; every module's own mode is restored afterwards.
        """
        _check_image(x, finite=False)  # the public methods check finiteness once per input
        num = _count("num", num, 0)
        batch_size = _count("batch_size", batch_size, 1)
        with self._eval_mode():
            return self._sample_counts(x, num, batch_size, idx=idx, stage=stage)

    @contextlib.contextmanager
    def _eval_mode(self):
        modes = [(module, module.training) for module in self.base_classifier.modules()]
        self.base_classifier.eval()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training

    def _sample_counts(self, x: torch.Tensor, num: int, batch_size: int, *, idx: int, stage: int) -> torch.Tensor:
        device = x.device
        stream = NoiseStream(tuple(x.shape), device, self.seed, idx, stage)
        counts = torch.zeros(self.num_classes, dtype=torch.long, device=device)
        all_finite = torch.ones((), dtype=torch.bool, device=device)
        # One input buffer for every batch of this call: the noise is drawn into it and scaled and shifted
        # in place, x + σ·δ bit for bit as out of place (σ·δ rounded first, then the sum, which commutes),
        # without a fresh batch-sized allocation (and page faults) per step. Another dtype of x than the
        # noise's promotes: out of place, as before.
        in_place = x.dtype == torch.get_default_dtype() and num > 0
        buffer = torch.empty((min(batch_size, num), *x.shape), device=device) if in_place else None
        buffer_cl = None
        remaining = num
        while remaining > 0:
            this_batch = min(batch_size, remaining)
            remaining -= this_batch
            if in_place:
                batch = stream.take_into(buffer[:this_batch])
                batch.mul_(self.sigma).add_(x)
            else:
                batch = x.unsqueeze(0) + self.sigma * stream.take(this_batch)
            if self.channels_last:
                if buffer_cl is None:
                    buffer_cl = torch.empty((min(batch_size, num), *x.shape), dtype=batch.dtype, device=device,
                                            memory_format=torch.channels_last)
                batch = buffer_cl[:this_batch].copy_(batch)
            with self._autocast(device):
                logits = self.base_classifier(batch)
            self._check_shape(logits, this_batch)
            all_finite &= torch.isfinite(logits).all()
            counts += torch.bincount(logits.argmax(dim=1), minlength=self.num_classes)
        if not bool(all_finite):
            raise UserError(f"the model returned NaN or infinite logits (example {idx}); the checkpoint is "
                            "broken: retrain it or check the input data")
        return counts

    def _check_shape(self, logits: torch.Tensor, batch: int) -> None:
        if logits.dim() != 2 or logits.shape[0] != batch or logits.shape[1] != self.num_classes:
            raise UserError(f"the model returned logits of shape {tuple(logits.shape)}, expected "
                            f"({batch}, {self.num_classes}); the checkpoint does not match the data's "
                            "number of classes")

    def _autocast(self, device: torch.device):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)

    def _resolve_idx(self, idx: int | None) -> int:
        # Negative keys never collide with dataset indices.
        return int(idx) if idx is not None else -1 - next(self._call_counter)
