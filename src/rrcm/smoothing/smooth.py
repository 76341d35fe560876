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
import time
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from ..arithmetic import autocast
from ..errors import UserError
from . import stats
from .noise import PREDICTION, NoiseStream
from .procedures import Certificate, CohenCertify, SequentialCertify

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


def _check_certify_arguments(x, n0, n, alpha, batch_size, *, n_name: str) -> tuple[int, int, float, int]:
    """CERTIFY's arguments checked (InvalidArgument naming the bad one) and converted; `n_name` is what the
    caller calls its estimation budget (n, or n_max)."""
    _check_image(x)
    n0 = _count("n0", n0, 1)
    n = _count(n_name, n, 1)
    if n0 > n:
        raise InvalidArgument(f"n0 ({n0}) is larger than {n_name} ({n}): selection should use fewer samples than "
                              f"estimation, e.g. n0 = 100, {n_name} = 100000")
    return n0, n, _check_alpha(alpha), _count("batch_size", batch_size, 1)


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
        n0, n, alpha, batch_size = _check_certify_arguments(x, n0, n, alpha, batch_size, n_name="n")
        return self.run(CohenCertify(n0, n, alpha), x, batch_size, idx=idx)

    def certify_sequential(self, x: torch.Tensor, n0: int, n_max: int, alpha: float, batch_size: int, *,
                           idx: int | None = None, target_radius: float | None = None,
                           radii: Sequence[float] | None = None, **options) -> Certificate:
        """Sequential, anytime-valid CERTIFY (`SequentialCertify`): the same kind of certificate from only the
        estimation samples its decision needs, at most `n_max`; `Certificate.samples_used` says how many.

        Give exactly one of `target_radius` (decide "robust at r") or `radii` (settle every radius of a grid).
        `options` are SequentialCertify's (step, growth, futility_alpha, sequence).
        """
        n0, n_max, alpha, batch_size = _check_certify_arguments(x, n0, n_max, alpha, batch_size, n_name="n_max")
        try:
            radii = None if radii is None else tuple(sorted(set(float(r) for r in radii)))
            target_radius = None if target_radius is None else float(target_radius)
        except (TypeError, ValueError):
            raise InvalidArgument(f"radii and target_radius must be numbers, got radii={radii!r}, "
                                  f"target_radius={target_radius!r}") from None
        procedure = SequentialCertify(n0, n_max, alpha, target_radius=target_radius, radii=radii, **options)
        try:
            procedure.validate(self.sigma)
        except UserError as e:
            raise InvalidArgument(str(e)) from None
        return self.run(procedure, x, batch_size, idx=idx)

    def run(self, procedure, x: torch.Tensor, batch_size: int, *, idx: int | None = None) -> Certificate:
        """Drive one certification procedure (rrcm.smoothing.procedures) on `x`: draw the samples it asks for,
        each stage from its own noise stream (selection before, and independent of, estimation), and return
        its certificate. Arguments are the caller's to check (the public methods do)."""
        idx = self._resolve_idx(idx)
        state = procedure.start(self.sigma)
        streams: dict[int, NoiseStream] = {}
        with torch.no_grad(), self._eval_mode():
            while (request := state.next_request()) is not None:
                stage, count = request
                if stage not in streams:
                    streams[stage] = NoiseStream(tuple(x.shape), x.device, self.seed, idx, stage)
                counts = self._sample_counts(x, count, batch_size, idx=idx, stage=stage, stream=streams[stage])
                state.observe(counts.cpu().numpy())
        return state.certificate()

    def run_packed(self, procedure, examples: Iterable[tuple[int, torch.Tensor]], batch_size: int, *,
                   max_pending: int = 64) -> Iterator[tuple[int, Certificate, float]]:
        """Drive one procedure on many inputs at once, packing the samples that several pending inputs ask for
        into shared forward batches of `batch_size` (kept full while inputs remain), and yield (idx,
        certificate, seconds) as each finishes; seconds is its share (by samples) of the time spent drawing the
        noise of, running and counting the batches it was in.

        Every input draws its samples from its own noise streams, in order, so its certificate is the one
        `run(procedure, x, batch_size, idx=idx)` gives (for the default floating dtype, and a model whose
        output for a sample does not depend on the others in its batch): packing changes the batches, not
        the samples. `examples` yields (idx, x) with x of one shape on one device.
        """
        source = iter(examples)
        pending: list[_Pending] = []
        exhausted = False
        buffers: dict[str, torch.Tensor] = {}  # one input batch (and its channels-last copy) for every step
        with torch.no_grad(), self._eval_mode():
            while True:
                # admit inputs until their requests fill a batch (or the cap is reached)
                while not exhausted and len(pending) < max_pending and sum(p.left for p in pending) < batch_size:
                    try:
                        idx, x = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    entry = _Pending(int(idx), x, procedure.start(self.sigma))
                    if entry.advance(self):
                        pending.append(entry)
                    else:  # a procedure that needs no samples
                        yield entry.idx, entry.state.certificate(), 0.0
                if not pending:
                    return
                # one forward batch: the next samples of each pending input, in order
                segments, total = [], 0
                for entry in pending:
                    if total == batch_size:
                        break
                    k = min(entry.left, batch_size - total)
                    segments.append((entry, total, k))
                    total += k
                started = time.perf_counter()  # noise, forward and counting: each input's share of them
                counts = self._packed_counts(segments, total, buffers, batch_size)
                seconds = time.perf_counter() - started
                finished = []
                for (entry, _, k), segment_counts in zip(segments, counts):
                    entry.seconds += seconds * k / total
                    if not entry.receive(segment_counts, k, self):
                        finished.append(entry)
                for entry in finished:
                    pending.remove(entry)
                    yield entry.idx, entry.state.certificate(), entry.seconds

    def _packed_counts(self, segments, total: int, buffers: dict, batch_size: int) -> np.ndarray:
        """Class counts per segment (entry, start, k) of one packed batch: entry's next k samples at rows
        start..start+k, x + σ·δ in place as in `_sample_counts`, so each row is bit for bit what `run` feeds."""
        shape, device = segments[0][0].x.shape, segments[0][0].x.device
        if "batch" not in buffers:
            buffers["batch"] = torch.empty((batch_size, *shape), device=device)
        for entry, start, k in segments:
            entry.stream().take_into(buffers["batch"][start : start + k]).mul_(self.sigma).add_(entry.x)
        batch = buffers["batch"][:total]
        if self.channels_last:
            if "channels_last" not in buffers:
                buffers["channels_last"] = torch.empty_like(buffers["batch"], memory_format=torch.channels_last)
            batch = buffers["channels_last"][:total].copy_(batch)
        with autocast(self.precision, device):
            logits = self.base_classifier(batch)
        self._check_shape(logits, total)
        if not bool(torch.isfinite(logits).all()):
            raise UserError(f"the model returned NaN or infinite logits (examples "
                            f"{', '.join(str(e.idx) for e, _, _ in segments)}); the checkpoint is broken: "
                            "retrain it or check the input data")
        sizes = torch.tensor([k for _, _, k in segments], device=device)
        segment_of = torch.repeat_interleave(torch.arange(len(segments), device=device), sizes)
        counts = torch.bincount(segment_of * self.num_classes + logits.argmax(dim=1),
                                minlength=len(segments) * self.num_classes)
        return counts.view(len(segments), self.num_classes).cpu().numpy()

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

    def _sample_counts(self, x: torch.Tensor, num: int, batch_size: int, *, idx: int, stage: int,
                       stream: NoiseStream | None = None) -> torch.Tensor:
        """Counts of the next `num` samples of `stream` (a fresh stream for (idx, stage) when None)."""
        device = x.device
        if stream is None:
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
            with autocast(self.precision, device):
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

    def _resolve_idx(self, idx: int | None) -> int:
        # Negative keys never collide with dataset indices.
        return int(idx) if idx is not None else -1 - next(self._call_counter)


class _Pending:
    """One input inside `Smooth.run_packed`: its procedure state, its noise streams and the request in hand."""

    def __init__(self, idx: int, x: torch.Tensor, state):
        self.idx, self.x, self.state = idx, x, state
        self.streams: dict[int, NoiseStream] = {}
        self.stage, self.left, self.counts, self.seconds = None, 0, None, 0.0

    def stream(self) -> NoiseStream:
        return self.streams[self.stage]

    def advance(self, smooth: Smooth) -> bool:
        """Take the state's next request; False when it has finished."""
        request = self.state.next_request()
        if request is None:
            return False
        self.stage, self.left = request
        if self.stage not in self.streams:
            self.streams[self.stage] = NoiseStream(tuple(self.x.shape), self.x.device, smooth.seed, self.idx, self.stage)
        self.counts = np.zeros(smooth.num_classes, dtype=np.int64)
        return self.left > 0 or self.advance_empty(smooth)

    def advance_empty(self, smooth: Smooth) -> bool:
        # a request for zero samples is answered at once
        self.state.observe(self.counts)
        return self.advance(smooth)

    def receive(self, counts, k: int, smooth: Smooth) -> bool:
        """Add the counts of k samples; when the request is complete, hand it over. False when finished."""
        self.counts += counts
        self.left -= k
        if self.left > 0:
            return True
        self.state.observe(self.counts)
        return self.advance(smooth)
