"""Profiling a model: FLOPs of one forward, wall time of a forward, the load of the rest of the machine.

Written once for `rrcm bench cost` (`rrcm.bench_cost`) and the scripts in `benchmarks/`.

FLOPs. `count_flops` runs one forward under `torch.utils.flop_counter.FlopCounterMode`, which counts
matrix products, convolutions and attention; element-wise work (norms, activations, softmax,
residual adds) is not counted, as usual. MACs = FLOPs / 2.

`count_model` counts without allocating weights: the model is built on the `meta` device and run on
a meta tensor. A plain `with torch.device("meta")` does not work for rrcm's models: `Normalize`
checks its std with `bool((std > 0).all())`, which needs a value. `meta_init()` therefore sends the
storage factories that have no device (the `torch.empty` behind each parameter, zeros, ones,
randn, ...) to meta but leaves value constructors (`torch.tensor([...])`, arange, linspace: small,
and their values may be needed, e.g. a DDPM noise schedule) on the CPU; the built model is then
moved to meta. Counting on meta is also what makes attention count: on a real CPU tensor
`scaled_dot_product_attention` runs the fused `_scaled_dot_product_flash_attention_for_cpu` kernel,
which FlopCounterMode (torch 2.13) has no formula for, while on meta it decomposes into counted
matrix products. Should a model not run on meta, it is counted on the CPU instead, with a formula
for that kernel added (`counted_on` says which was used).

Load. On a shared machine a time taken beside other work is not clean. `Stopwatch` times a block
together with the CPU time this process used and the busy time of all CPUs (from /proc/stat); the
difference is the cores other processes kept busy meanwhile. `wait_for_idle` waits for them to go
quiet and `measure_uncontended` redoes a measurement that ran beside other work.

Timing. `time_model`: the median wall time of a model's forward per sample, at a stated batch size,
precision (fp32, or bf16 autocast) and device.
"""

from __future__ import annotations

import datetime
import operator
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from .arithmetic import autocast
from .errors import UserError, short_message

__all__ = ["PRECISIONS", "IDLE_CORES", "CONTENDED_CORES", "CONTENDED_RETRIES", "ISA_FLAGS", "meta_init",
           "flop_counter", "count_flops", "count_model", "parse_busy_jiffies", "busy_jiffies", "cores_elsewhere",
           "Stopwatch", "other_busy_cores", "wait_for_idle", "measure_uncontended", "time_model", "cpu_name", "cpu_summary",
           "cpu_flags", "describe_machine"]

PRECISIONS = ("fp32", "bf16")
IDLE_CORES = 0.1        # the rest of the machine counts as idle below this many busy cores
CONTENDED_CORES = 0.25  # a measurement with more than this many cores busy elsewhere is not clean
CONTENDED_RETRIES = 3   # with a wait for idle, a contended measurement is redone up to this many times
PROC_STAT = "/proc/stat"
CPUINFO = "/proc/cpuinfo"
# The CPU flags that decide how fast fp32 and bf16 kernels can be.
ISA_FLAGS = frozenset({"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_tile"})

T = TypeVar("T")


# ---- FLOPs, counted on the meta device

# Constructors that allocate storage to be filled (parameters, running statistics). Constructors of
# values (torch.tensor, arange, linspace, eye, ...) stay on the CPU: a model may need those values
# (a noise schedule, a check), and they are small.
_FACTORIES = frozenset({torch.empty, torch.empty_strided, torch.zeros, torch.ones, torch.full, torch.rand,
                        torch.randn, torch.randint})


class _MetaFactories(TorchFunctionMode):
    """Storage factories without an explicit device go to meta; value constructors stay on the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in _FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = torch.device("meta")
        return func(*args, **kwargs)


def meta_init() -> TorchFunctionMode:
    """Context manager: build a model's parameters on the meta device (no memory, no init cost).

    Unlike `torch.device("meta")`, tensors built from values (torch.tensor, arange, linspace, ...)
    stay real, so constructors that check such values (rrcm's `Normalize`) or keep them (a DDPM noise
    schedule) work; move the model with `.to("meta")` afterwards (plain tensor attributes stay put).
    """
    return _MetaFactories()


def _sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of softmax(QKᵀ)V for shapes (B, H, L, E), (B, H, S, E), (B, H, S, Ev): two matrix products."""
    b, h, l, e = query
    s, ev = key[-2], value[-1]
    return 2 * b * h * l * s * e + 2 * b * h * l * s * ev


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode that also counts the CPU's fused attention kernel."""
    # that kernel has no formula in torch's registry; the meta path never reaches it
    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _sdpa_flops
    return FlopCounterMode(display=False, custom_mapping=mapping)


def count_flops(model: nn.Module, input_shape: tuple[int, ...], device: str = "cpu") -> int:
    """FLOPs of `model`'s forward of one sample shaped `input_shape`, on `device` (where the model is)."""
    x = torch.zeros((1, *input_shape), device=device)
    counter = flop_counter()
    with torch.no_grad(), counter:
        model(x)
    return int(counter.get_total_flops())


def count_model(build: Callable[[], nn.Module], input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Parameters and FLOPs of one sample's forward of the model `build()` makes.

    Counted on meta; where the model does not run there, it is built for real (seed 0) and counted on
    the CPU, and `note` says why. A `UserError` from `build` is the user's to fix and is raised.
    """
    try:
        with meta_init():
            model = build()
        model = model.to("meta").eval()
        flops, where, note = count_flops(model, input_shape, "meta"), "meta", None
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - any op without a meta kernel: count the real thing instead
        note = f"meta failed ({type(e).__name__}: {short_message(e)})"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = build().eval()
        flops, where = count_flops(model, input_shape, "cpu"), "cpu"
    params = sum(p.numel() for p in model.parameters())
    result = {"params": int(params), "flops": flops, "macs": flops // 2, "counted_on": where}
    if note:
        result["note"] = note
    return result


# ---- the load of the rest of the machine, from /proc/stat

def parse_busy_jiffies(line: str) -> int:
    """Jiffies spent on anything but idling, from /proc/stat's first line ("cpu user nice system idle
    iowait irq softirq steal guest guest_nice"): the first eight fields less idle and iowait (guest
    time is already inside user and nice)."""
    fields = [int(v) for v in line.split()[1:]]
    return sum(fields[:8]) - fields[3] - fields[4]


def busy_jiffies(path: str | os.PathLike = PROC_STAT) -> int | None:
    """Jiffies all CPUs spent on anything but idling since boot; None where /proc/stat cannot be read."""
    try:
        with open(path, encoding="ascii") as f:
            return parse_busy_jiffies(f.readline())
    except (OSError, ValueError, IndexError):
        return None


def _clock_ticks() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


def cores_elsewhere(busy_jiffies_delta: int, cpu_seconds: float, wall_seconds: float,
                    ticks: int | None = None) -> float:
    """Cores other processes kept busy: the machine's busy seconds less this process's CPU seconds, per
    wall second; clamped at 0 because jiffy accounting is coarse."""
    if wall_seconds <= 0:
        return 0.0
    busy_seconds = busy_jiffies_delta / (ticks or _clock_ticks())
    return max(0.0, (busy_seconds - cpu_seconds) / wall_seconds)


class Stopwatch:
    """Times a `with` block: `seconds` (wall), `cpu_seconds` (this process) and `busy_elsewhere`
    (the cores other processes kept busy meanwhile; 0 where /proc/stat cannot be read)."""

    def __init__(self, *, stat_path: str | os.PathLike = PROC_STAT, clock: Callable[[], float] = time.perf_counter,
                 cpu_clock: Callable[[], float] = time.process_time):
        self._stat_path, self._clock, self._cpu_clock = stat_path, clock, cpu_clock
        self.seconds = self.cpu_seconds = self.busy_elsewhere = 0.0

    def __enter__(self) -> Stopwatch:
        self._busy0, self._cpu0, self._t0 = busy_jiffies(self._stat_path), self._cpu_clock(), self._clock()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = self._clock() - self._t0
        self.cpu_seconds = self._cpu_clock() - self._cpu0
        busy = busy_jiffies(self._stat_path)
        if busy is not None and self._busy0 is not None:
            self.busy_elsewhere = cores_elsewhere(busy - self._busy0, self.cpu_seconds, self.seconds)


def other_busy_cores(window: float) -> float:
    """Cores that processes other than this one kept busy over the next `window` seconds."""
    with Stopwatch() as watch:
        time.sleep(window)
    return watch.busy_elsewhere


def wait_for_idle(limit_s: float, *, probe: Callable[[float], float] = other_busy_cores,
                  clock: Callable[[], float] = time.perf_counter) -> float:
    """Wait at most `limit_s` seconds, in probes of one second, until the rest of the machine is idle
    (at most IDLE_CORES busy); return the seconds waited (0 for `limit_s` <= 0)."""
    if limit_s <= 0:
        return 0.0
    t0 = clock()
    while clock() - t0 < limit_s:
        if probe(1.0) <= IDLE_CORES:
            break
    return clock() - t0


def measure_uncontended(measure: Callable[[], T], *, wait_idle: float,
                        busy: Callable[[T], float] = operator.attrgetter("busy_elsewhere"),
                        on_contended: Callable[[T], None] | None = None,
                        wait: Callable[[float], float] = wait_for_idle) -> tuple[T, int]:
    """Run `measure()` and return its result with the attempt (from 1) that gave it.

    With `wait_idle` > 0 each attempt first waits up to that many seconds for the machine to go idle,
    and a result that ran beside other work (`busy(result)` > CONTENDED_CORES) is measured again, up
    to CONTENDED_RETRIES times; the last one stands. `on_contended` is called with each contended result.
    """
    attempts = 1 + (CONTENDED_RETRIES if wait_idle > 0 else 0)
    for attempt in range(1, attempts + 1):
        wait(wait_idle)
        result = measure()
        if busy(result) <= CONTENDED_CORES:
            break
        if on_contended is not None:
            on_contended(result)
    return result, attempt


# ---- timing a model's forward

def time_model(model: nn.Module, input_shape: tuple[int, ...], *, batch_size: int, precision: str,
               repeats: int, warmup: int = 1, seed: int = 0, wait_idle: float = 0.0,
               device: str = "cpu") -> dict[str, Any]:
    """Median wall time of a forward of `batch_size` samples (random [0, 1] pixels), per sample.

    Also reports how many cores other processes kept busy meanwhile (from /proc/stat): on a small
    machine, figures taken beside other work are not clean. With `wait_idle` > 0 each timed forward
    first waits up to that many seconds for the rest of the machine to go idle, and one that still
    ran beside other work is redone (`measure_uncontended`).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    x = torch.rand((batch_size, *input_shape), generator=torch.Generator().manual_seed(seed)).to(device)
    model = model.to(device)
    on_gpu = torch.device(device).type == "cuda"
    # a GPU runs asynchronously: wait for its queue before starting and before stopping the clock
    sync = (lambda: torch.cuda.synchronize(device)) if on_gpu else (lambda: None)

    def forward() -> Stopwatch:
        with Stopwatch() as watch:
            model(x)
            sync()
        return watch

    with torch.inference_mode(), autocast(precision, torch.device(device)):
        for _ in range(warmup):
            model(x)
        sync()
        runs = [measure_uncontended(forward, wait_idle=wait_idle) for _ in range(repeats)]
    seconds = [watch.seconds for watch, _ in runs]
    elsewhere = [watch.busy_elsewhere for watch, _ in runs]
    return {"precision": precision, "device": device, "batch_size": batch_size, "repeats": repeats,
            "warmup": warmup,
            "seconds_per_forward": seconds, "seconds_per_sample": statistics.median(seconds) / batch_size,
            "busy_elsewhere_cores": max(elsewhere), "busy_elsewhere_per_forward": elsewhere,
            "attempts": [attempt for _, attempt in runs]}


# ---- the machine

def _cpuinfo_value(names: tuple[str, ...], path: str | os.PathLike) -> str | None:
    """What follows the colon on the first line of /proc/cpuinfo that starts with one of `names`
    (lower case); None where there is none or the file cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith(names) and ":" in line:
                    return line.split(":", 1)[1]
    except OSError:
        pass
    return None


def cpu_name(path: str | os.PathLike = CPUINFO) -> str:
    """The CPU's model name from /proc/cpuinfo (else what `platform` knows, else "unknown")."""
    name = _cpuinfo_value(("model name",), path)
    if name is not None:
        return name.strip()
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags(path: str | os.PathLike = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (x86 "flags", Arm "Features"; empty where it cannot be
    read)."""
    return frozenset((_cpuinfo_value(("flags", "features"), path) or "").split())


def cpu_summary() -> str:
    """The CPU's name and its bf16 instructions, the two things a speed figure needs beside it, e.g.
    "Intel(R) Xeon(R) Processor (amx_bf16, amx_int8, amx_tile, avx512_bf16)"."""
    bf16 = sorted(f for f in cpu_flags() if f == "avx512_bf16" or f.startswith("amx"))
    return f"{cpu_name()} ({', '.join(bf16) if bf16 else 'no avx512_bf16, no AMX'})"


def describe_machine() -> dict[str, Any]:
    """What decides a measurement's speed: CPU (and its ISA_FLAGS), GPU, threads, versions, malloc, date."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu_name(), "gpu": gpu, "cpu_flags": sorted(cpu_flags() & ISA_FLAGS),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
