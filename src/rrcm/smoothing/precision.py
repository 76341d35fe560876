"""`--precision auto`: the autocast precision of certification chosen by measurement, not by claim.

bf16 autocast is only faster where the hardware computes in bf16. On CPUs without native bf16 (no
`avx512_bf16` or `amx_bf16` flag, e.g. AVX2-only machines) every bf16 kernel converts to and from
fp32, and bf16 made LeNet-5 certification 5-7x slower there. Where the CPU has native bf16 the gain
depends on the model and the batch: on an AMD EPYC (Zen 5, avx512_bf16) at batch 1000, bf16 certified
ResNet-110 1.84x and ResNet-20 1.68x as fast as fp32, the digits rRCM ViT 1.27x and LeNet-5 0.69x (its
layers are too small to pay for the casts); see benchmarks/README.md. So the rule is:

- CUDA: bf16 when the GPU computes in bf16 natively (compute capability 8.0 and up), else fp32;
  nothing is timed.
- any other non-CPU device: fp32.
- CPU without native bf16: fp32; nothing is timed.
- CPU with native bf16: a short probe (`PROBE_BUDGET_S`) times forwards of the actual model on random
  inputs of the actual image shape, fp32 against bf16 autocast, alternating, one warm-up each, best of
  `PROBE_REPEATS`; bf16 is chosen only when its best forward takes at most `BF16_MARGIN` of fp32's,
  i.e. is at least 1.25x faster (fp32 is the more accurate arithmetic, so a tie or a gain within a short
  probe's noise goes to it). The probe batch is the certification batch, or smaller when one forward
  of it would not fit the budget. The decision is cached per machine,
  model, image shape, batch size and memory format in `<cache>/precision.json`, where `<cache>` is
  `$RRCM_CACHE`, else `$XDG_CACHE_HOME/rrcm`, else `~/.cache/rrcm`; a probe that ran while other
  processes kept more than `CONTENDED_CORES` busy (from /proc/stat) decides that run only, uncached.

The choice changes the certificates' numbers, so a run resolves it once and records the concrete value
(`settings.precision` of the log's `.json`); a resumed run reuses the recorded value and never re-probes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from ..arithmetic import autocast
from ..profiling import Stopwatch, cpu_flags, cpu_name

AUTO = "auto"
CONCRETE = ("fp32", "bf16", "fp16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_MARGIN = 0.8  # bf16 must take at most this fraction of fp32's time (be 1.25x faster) to be chosen
PROBE_BUDGET_S = 1.5  # the probe's target wall time (one forward of a batch of 1 may exceed it)
PROBE_REPEATS = 3  # timed forwards per precision, after one warm-up each
PROBE_MIN_BATCH = 8
CACHE_FORMAT = 1  # bump when the probe or the rule changes, so old decisions are not reused
CACHE_FILE = "precision.json"

CONTENDED_CORES = 0.5  # a probe that ran while other processes kept more cores busy is not cached


@dataclass(frozen=True)
class Probe:
    """What one timing probe measured."""

    seconds: dict[str, float]  # precision -> best seconds per forward of the probe batch
    probe_batch: int
    busy_elsewhere: float = 0.0  # CPU cores other processes kept busy meanwhile (0 where unknown)


@dataclass(frozen=True)
class Decision:
    """What `auto` resolved to, and why."""

    precision: str  # fp32 or bf16
    reason: str  # one line
    seconds: dict[str, float] | None = None  # best seconds per forward, when timed
    probe_batch: int | None = None
    cached: bool = False
    busy_elsewhere: float | None = None  # cores other processes kept busy during the probe
    key: dict[str, Any] | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("key")
        return out


# -- the machine -----------------------------------------------------------------------------------

def native_bf16_flags(flags: Iterable[str]) -> list[str]:
    return sorted(set(flags) & set(NATIVE_BF16_FLAGS))


# -- the rule --------------------------------------------------------------------------------------

def decide(seconds_fp32: float, seconds_bf16: float, margin: float = BF16_MARGIN) -> str:
    """bf16 when its forward is clearly faster (at most `margin` of fp32's time), else fp32."""
    if not (math.isfinite(seconds_fp32) and math.isfinite(seconds_bf16)) or seconds_fp32 <= 0:
        return "fp32"
    return "bf16" if seconds_bf16 <= margin * seconds_fp32 else "fp32"


def untimed_decision(device: torch.device | str, flags: Iterable[str] | None = None) -> Decision | None:
    """The decision when nothing needs timing; None when only a probe can tell (CPU with native bf16)."""
    device = torch.device(device)
    if device.type == "cuda":
        # Native bf16 only (compute capability 8.0 and up): torch would otherwise count an emulated one.
        with torch.cuda.device(device):
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        if native:
            return Decision("bf16", f"CUDA device {device} computes in bf16 natively")
        return Decision("fp32", f"CUDA device {device} has no native bf16")
    if device.type != "cpu":
        return Decision("fp32", f"no bf16 rule for device type {device.type!r}")
    flags = cpu_flags() if flags is None else frozenset(flags)
    if not native_bf16_flags(flags):
        return Decision("fp32", f"the CPU ({cpu_name()}) has no native bf16 (no {' or '.join(NATIVE_BF16_FLAGS)} "
                                "flag), where bf16 autocast is several times slower; nothing timed")
    return None


def describe_auto(device: torch.device | str, flags: Iterable[str] | None = None) -> str:
    """For --dry-run: what `auto` would decide here, without timing anything."""
    decision = untimed_decision(device, flags)
    if decision is not None:
        return f"auto: {decision.precision} ({decision.reason})"
    have = ", ".join(native_bf16_flags(cpu_flags() if flags is None else flags))
    return (f"auto: fp32 or bf16, decided at run time by a ~{PROBE_BUDGET_S:g} s timing probe of this model at this "
            f"batch size (the CPU, {cpu_name()}, has {have}), or taken from the cache of an earlier probe")


def describe_dry_run(requested: str, device_arg: str) -> str | None:
    """`rrcm certify --dry-run`'s line about `auto` for `--device device_arg`; None for a concrete precision."""
    if requested != AUTO:
        return None
    from ..distributed import choose_device
    from ..errors import UserError

    try:
        device = choose_device(device_arg)
    except UserError as e:
        return f"auto: cannot tell for --device {device_arg} ({e})"
    return describe_auto(device)


# -- the cache -------------------------------------------------------------------------------------

def cache_root() -> Path:
    explicit = os.environ.get("RRCM_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "rrcm"
    return Path("~").expanduser() / ".cache" / "rrcm"


def cache_path() -> Path:
    return cache_root() / CACHE_FILE


def model_fingerprint(model: torch.nn.Module) -> str:
    """What decides a model's speed: its structure and its parameters' shapes and dtypes, not their values."""
    digest = hashlib.sha256(repr(model).encode())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
    return digest.hexdigest()[:32]


def probe_key(model: torch.nn.Module, shape: tuple[int, ...], batch_size: int, device: torch.device,
              channels_last: bool, flags: Iterable[str]) -> dict[str, Any]:
    return {
        "format": CACHE_FORMAT,
        "host": platform.node(),
        "cpu": cpu_name(),
        "cpu_flags": native_bf16_flags(flags),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": device.type,
        "model": model_fingerprint(model),
        "shape": list(shape),
        "batch_size": int(batch_size),
        "channels_last": bool(channels_last),
    }


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def cached_decision(key: dict[str, Any]) -> Decision | None:
    entry = _read_cache(cache_path()).get(_digest(key))
    if not isinstance(entry, dict) or entry.get("key") != key or entry.get("precision") not in ("fp32", "bf16"):
        return None
    seconds = entry.get("seconds")
    return Decision(entry["precision"], str(entry.get("reason", "")), seconds if isinstance(seconds, dict) else None,
                    entry.get("probe_batch"), cached=True, busy_elsewhere=entry.get("busy_elsewhere"), key=key)


def store_decision(decision: Decision) -> None:
    """Add a probe's decision to the cache; a cache that cannot be written only costs a re-probe."""
    from ..fileio import write_json_atomic

    path = cache_path()
    entries = _read_cache(path)
    entries[_digest(decision.key)] = {**decision.to_dict(), "cached": False, "key": decision.key,
                                      "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        write_json_atomic(path, entries)
    except OSError as e:
        warnings.warn(f"cannot write the precision cache {path} ({e.strerror or e}); the next run probes again")


# -- the probe -------------------------------------------------------------------------------------

@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module):
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def timing_probe(model: torch.nn.Module, shape: tuple[int, ...], batch_size: int, device: torch.device, *,
                 channels_last: bool = False, budget_s: float = PROBE_BUDGET_S, repeats: int = PROBE_REPEATS,
                 timer: Callable[[], float] = time.perf_counter) -> Probe:
    """Best seconds per forward of fp32 and bf16 autocast on a random batch of the image shape.

    The batch is `batch_size`, or smaller when (1 warm-up + `repeats`) forwards in each precision would
    not fit `budget_s` (judged from the best of two fp32 forwards of a small batch). Precisions alternate,
    so a change in the machine's load hits both. Uses no global random state; the model's modes are kept.
    """
    generator = torch.Generator(device="cpu").manual_seed(0)

    def batch_of(size: int) -> torch.Tensor:
        batch = torch.rand((size, *shape), generator=generator).to(device)
        return batch.contiguous(memory_format=torch.channels_last) if channels_last and batch.dim() == 4 else batch

    def forward(batch: torch.Tensor, precision: str) -> float:
        t0 = timer()
        with autocast(precision, device):
            model(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return timer() - t0

    with Stopwatch() as elsewhere, torch.no_grad(), _eval_mode(model):
        small = min(batch_size, PROBE_MIN_BATCH)
        calibrate = batch_of(small)
        forward(calibrate, "fp32")  # first call: allocations, kernel selection
        per_sample = max(min(forward(calibrate, "fp32"), forward(calibrate, "fp32")), 1e-9) / small
        forwards = 2 * (1 + repeats)
        probe_batch = int(min(batch_size, max(1, budget_s / forwards / per_sample)))
        batch = batch_of(probe_batch)
        best = {"fp32": math.inf, "bf16": math.inf}
        started = timer()
        for round_ in range(1 + repeats):
            for precision in ("fp32", "bf16"):
                seconds = forward(batch, precision)
                if round_ > 0:  # round 0 warms both up
                    best[precision] = min(best[precision], seconds)
            if round_ >= 1 and timer() - started > 2 * budget_s:
                break  # the calibration underestimated: stop at one timed forward each
    return Probe(best, probe_batch, elsewhere.busy_elsewhere)


def choose_precision(model: torch.nn.Module, shape: tuple[int, ...], batch_size: int,
                     device: torch.device | str, *, channels_last: bool = False, flags: Iterable[str] | None = None,
                     measure: Callable[[], Probe] | None = None, use_cache: bool = True) -> Decision:
    """What `--precision auto` resolves to for this model, image shape, batch size and device.

    `flags` (the CPU's flags) and `measure` (returns a `Probe`) replace the machine's for tests; by
    default `timing_probe` measures. A probe that ran beside other work (more than `CONTENDED_CORES`
    busy elsewhere) decides this run only and is not cached.
    """
    device = torch.device(device)
    flags = cpu_flags() if flags is None else frozenset(flags)
    decision = untimed_decision(device, flags)
    if decision is not None:
        return decision
    key = probe_key(model, tuple(shape), batch_size, device, channels_last, flags)
    if use_cache:
        cached = cached_decision(key)
        if cached is not None:
            return cached
    if measure is None:
        def measure():
            return timing_probe(model, tuple(shape), batch_size, device, channels_last=channels_last)
    probe = measure()
    seconds = {k: float(v) for k, v in probe.seconds.items()}
    precision = decide(seconds["fp32"], seconds["bf16"])
    ratio = seconds["fp32"] / seconds["bf16"] if seconds["bf16"] > 0 else math.inf
    contended = probe.busy_elsewhere > CONTENDED_CORES
    reason = (f"timed on {cpu_name()} ({', '.join(native_bf16_flags(flags))}): one forward of {probe.probe_batch} "
              f"samples took {seconds['fp32'] * 1e3:.3g} ms in fp32 and {seconds['bf16'] * 1e3:.3g} ms in bf16 "
              f"({ratio:.2f}x); bf16 needs at least {1 / BF16_MARGIN:.2f}x")
    if contended:
        reason += f"; {probe.busy_elsewhere:.1f} cores were busy elsewhere, so this is not cached"
    decision = Decision(precision, reason, seconds, int(probe.probe_batch), busy_elsewhere=round(probe.busy_elsewhere, 3),
                        key=key)
    if use_cache and not contended:
        store_decision(decision)
    return decision


# -- a certification run ---------------------------------------------------------------------------

def recorded_precision(run_config_path: str | os.PathLike) -> str | None:
    """The concrete precision an earlier run of this log recorded in its `.json`, if any."""
    try:
        previous = json.loads(Path(run_config_path).read_text(encoding="utf-8"))
        value = previous.get("settings", {}).get("precision")
    except (OSError, ValueError, AttributeError):
        return None
    return value if value in CONCRETE else None


def resolve_run_precision(requested: str, model: torch.nn.Module, dataset, indices, *, batch_size: int,
                          channels_last: bool, run_config_path: str | os.PathLike, ctx,
                          chooser: Callable[..., Decision] | None = None) -> Decision:
    """The concrete precision of one certification run: `requested` itself unless it is `auto`; for
    `auto`, what the log's earlier run recorded (a resume never re-probes), else `chooser`'s decision.
    Under torchrun every process probes at the same time (as they will certify: side by side) and rank 0's
    decision is shared with all, so every shard computes with the same arithmetic."""
    if requested != AUTO:
        return Decision(requested, "requested")
    recorded = recorded_precision(run_config_path)
    if recorded is not None:
        decision = Decision(recorded, f"recorded by the earlier run of this log ({Path(run_config_path).name})")
    elif not indices:
        decision = Decision("fp32", "nothing to certify")
    else:
        x0, _ = dataset[indices[0]]
        model.to(ctx.device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        try:
            choose = chooser or choose_precision
            decision = choose(model, tuple(x0.shape), batch_size, ctx.device, channels_last=channels_last)
        except RuntimeError as e:  # the model fails on this data: the runner's own check says so next
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            decision = Decision("fp32", f"the timing probe failed ({first_line[:120]})")
    if ctx.enabled:  # every process of an `auto` run takes part, whichever branch it took
        import torch.distributed as dist

        # One number, not a pickled object: which of CONCRETE rank 0 chose.
        code = torch.tensor([CONCRETE.index(decision.precision)], device=ctx.device)
        dist.broadcast(code, src=0)
        if not ctx.is_main:
            decision = Decision(CONCRETE[int(code.item())], "chosen by rank 0")
    return decision
