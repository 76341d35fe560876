#!/usr/bin/env python
"""Certification throughput: rrcm's `Smooth` against the per-batch loop of Cohen et al.'s `core.py`.

Measures noise samples per second (forward passes of the base classifier on noisy copies of one
image) for CIFAR-10-shaped inputs (3x32x32, 10 classes) with randomly initialised CIFAR ResNets in
eval mode. Configurations (all with the same batch size and the same number of samples):

  baseline             a plain re-implementation of Cohen et al.'s `Smooth._sample_noise`: repeat x,
                       `randn_like`, forward, argmax, counts on the CPU with numpy; fp32, default
                       memory format, default glibc malloc
  rrcm-fp32            rrcm `Smooth.sample_counts`, fp32, default malloc
  rrcm-bf16-cl         rrcm, bf16 autocast + channels_last (model and input), default malloc
  rrcm-bf16-cl-malloc  as rrcm-bf16-cl, with GLIBC_TUNABLES raising glibc's mmap/trim thresholds to
                       4 GiB, so large activation buffers are reused instead of being mmapped,
                       page-faulted in and unmapped again on every batch

Extra configurations for investigation (select with --configs): rrcm-bf16, rrcm-bf16-malloc,
rrcm-fp32-malloc, rrcm-fp32-cl, baseline-malloc, and rrcm-auto-malloc: what `rrcm certify` runs by
default (`--precision auto`, resolved in the worker by the same probe without its cache, and the malloc
tunables the CLI sets by re-executing itself). Each worker records which rrcm it imported (path and git
commit), so a before/after comparison with PYTHONPATH pointing at another checkout says what it measured
(that checkout must have `rrcm.profiling`, which times the repeats and samples the machine's load).

GLIBC_TUNABLES is read by the dynamic loader when a process starts, so every configuration runs in
its own child process (`certify_throughput.py --worker ...`) with its own environment; the parent
only orchestrates and prints. Each worker warms up, then times `--repeats` measurements of
`--samples` noise samples each and reports them as JSON; the table shows the median (and range).

While a worker measures, it also records how many CPU cores *other* processes kept busy (from
/proc/stat, by `rrcm.profiling`), because on a shared 2-core machine a concurrent test run halves
throughput and can make OpenMP regions stall. Figures taken with "busy elsewhere" well above 0 are
not clean.

    python benchmarks/certify_throughput.py                       # full run (a few minutes on 2 cores)
    python benchmarks/certify_throughput.py --quick               # smoke run, seconds
    python benchmarks/certify_throughput.py --models resnet110 --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time

from rrcm.cli import MALLOC_TUNABLES
from rrcm.profiling import (CONTENDED_CORES, CONTENDED_RETRIES, ISA_FLAGS, Stopwatch, cpu_flags, cpu_name,
                            measure_uncontended)

# name -> (implementation, precision, channels_last, tuned malloc, description)
CONFIGS: dict[str, tuple[str, str, bool, bool, str]] = {
    "baseline": ("cohen", "fp32", False, False, "Cohen-style loop, fp32, default malloc"),
    "rrcm-fp32": ("rrcm", "fp32", False, False, "rrcm Smooth fp32, default malloc"),
    "rrcm-bf16-cl": ("rrcm", "bf16", True, False, "rrcm Smooth bf16 + channels_last, default malloc"),
    "rrcm-bf16-cl-malloc": ("rrcm", "bf16", True, True, "rrcm Smooth bf16 + channels_last + malloc tunables"),
    # for investigation only
    "rrcm-bf16": ("rrcm", "bf16", False, False, "rrcm Smooth bf16, default malloc"),
    "rrcm-bf16-malloc": ("rrcm", "bf16", False, True, "rrcm Smooth bf16 + malloc tunables"),
    "rrcm-fp32-malloc": ("rrcm", "fp32", False, True, "rrcm Smooth fp32 + malloc tunables"),
    "rrcm-fp32-cl": ("rrcm", "fp32", True, False, "rrcm Smooth fp32 + channels_last, default malloc"),
    "baseline-malloc": ("cohen", "fp32", False, True, "Cohen-style loop, fp32 + malloc tunables"),
    "rrcm-auto-malloc": ("rrcm", "auto", False, True, "rrcm Smooth --precision auto + malloc tunables (the CLI default)"),
}
DEFAULT_CONFIGS = ("baseline", "rrcm-fp32", "rrcm-bf16-cl", "rrcm-bf16-cl-malloc")
HEADLINE = ("rrcm-bf16-cl-malloc", "baseline")
TARGET_SPEEDUP = 3.0

MODELS = {"resnet20": "cifar_resnet20", "resnet110": "cifar_resnet110"}
CIFAR_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR_STD = [0.2470, 0.2435, 0.2616]
NUM_CLASSES = 10
SHAPE = (3, 32, 32)

DEFAULT_SAMPLES = 2000
DEFAULT_REPEATS = 3
RESULT_PREFIX = "CERTIFY_THROUGHPUT_RESULT "


class BenchError(Exception):
    """A failure reported to the user as one line."""


# ----------------------------------------------------------------------------------------------
# worker side: build the model, time one configuration, print JSON
# ----------------------------------------------------------------------------------------------

def cohen_count_arr(predictions, length: int):
    """Counts of each class among `predictions` (a numpy int array), the way Cohen's `_count_arr` does."""
    import numpy as np

    counts = np.zeros(length, dtype=int)
    for p in predictions:
        counts[p] += 1
    return counts


def cohen_sample_noise(model, x, num: int, batch_size: int, sigma: float, num_classes: int):
    """The baseline: Cohen et al.'s per-batch sampling loop, rewritten plainly (fp32, CPU counts)."""
    import numpy as np
    import torch

    with torch.no_grad():
        counts = np.zeros(num_classes, dtype=int)
        for _ in range(math.ceil(num / batch_size)):
            this_batch_size = min(batch_size, num)
            num -= this_batch_size
            batch = x.repeat((this_batch_size, 1, 1, 1))
            noise = torch.randn_like(batch) * sigma
            predictions = model(batch + noise).argmax(1)
            counts += cohen_count_arr(predictions.cpu().numpy(), num_classes)
        return counts


def rrcm_source() -> dict:
    """Which rrcm a worker imported: its folder and, when that is a git checkout, the commit and whether
    the smoothing code has uncommitted changes."""
    import rrcm

    folder = os.path.dirname(os.path.dirname(os.path.abspath(rrcm.__file__)))
    info = {"path": folder, "commit": None, "smoothing_modified": None}
    try:
        commit = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if commit.returncode == 0:
            info["commit"] = commit.stdout.strip()
            status = subprocess.run(["git", "-C", folder, "status", "--porcelain", "--", "rrcm/smoothing"],
                                    capture_output=True, text=True, timeout=10)
            info["smoothing_modified"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def build_sampler(args: argparse.Namespace):
    """The configuration's model and its `sample(num, key) -> counts`, with the precision it runs at and
    `--precision auto`'s decision (None for a fixed precision)."""
    import torch

    from rrcm.models import build_model, model_config
    from rrcm.smoothing.noise import ESTIMATION
    from rrcm.smoothing.smooth import Smooth

    impl, precision, channels_last, _, _ = CONFIGS[args.config]
    torch.manual_seed(args.seed)
    cfg = model_config(MODELS[args.model], num_classes=NUM_CLASSES, in_channels=SHAPE[0], image_size=SHAPE[1],
                       mean=CIFAR_MEAN, std=CIFAR_STD)
    model = build_model(cfg).eval()
    x = torch.rand(SHAPE, generator=torch.Generator().manual_seed(args.seed))
    if channels_last:
        # As the certification runner does: model weights and inputs both in channels_last.
        model = model.to(memory_format=torch.channels_last)

    auto = None
    if impl == "cohen":
        def sample(num: int, key: int):
            return cohen_sample_noise(model, x, num, args.batch_size, args.sigma, NUM_CLASSES)
    else:
        if precision == "auto":
            from rrcm.smoothing.precision import choose_precision

            auto = choose_precision(model, SHAPE, args.batch_size, "cpu", channels_last=channels_last, use_cache=False)
            precision = auto.precision
        smooth = Smooth(model, NUM_CLASSES, args.sigma, seed=args.seed, precision=precision,
                        channels_last=channels_last)

        def sample(num: int, key: int):
            return smooth.sample_counts(x, num, args.batch_size, idx=key, stage=ESTIMATION)
    return model, sample, precision, auto


def time_repeats(args: argparse.Namespace, sample) -> list[dict]:
    """`--repeats` timed measurements of `--samples` noise samples each; with `--wait-idle`, a repeat
    that ran beside other work is redone (`rrcm.profiling.measure_uncontended`)."""
    def one_repeat(r: int) -> dict:
        faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        with Stopwatch() as watch:
            counts = sample(args.samples, r)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
        total = int(sum(int(c) for c in counts))
        if total != args.samples:
            raise BenchError(f"{args.model}/{args.config}: counts sum to {total}, expected {args.samples}")
        return {
            "seconds": watch.seconds,
            "samples_per_s": args.samples / watch.seconds,
            "cpu_cores_used": watch.cpu_seconds / watch.seconds,
            "busy_elsewhere_cores": watch.busy_elsewhere,
            "minor_page_faults_per_batch": faults / math.ceil(args.samples / args.batch_size),
        }

    def contended(r: int, run: dict) -> None:
        print(f"{args.model}/{args.config}: repeat {r + 1} ran beside other work "
              f"({run['busy_elsewhere_cores']:.2f} cores busy elsewhere)", file=sys.stderr, flush=True)

    runs = []
    for r in range(args.repeats):
        run, attempt = measure_uncontended(lambda r=r: one_repeat(r), wait_idle=args.wait_idle,
                                           busy=lambda run: run["busy_elsewhere_cores"],
                                           on_contended=lambda run, r=r: contended(r, run))
        runs.append({**run, "attempt": attempt})
    return runs


def run_worker(args: argparse.Namespace) -> dict:
    import torch

    impl, _, channels_last, tuned_malloc, description = CONFIGS[args.config]
    expected_env = MALLOC_TUNABLES if tuned_malloc else None
    if os.environ.get("GLIBC_TUNABLES") != expected_env:
        raise BenchError(f"config {args.config} expects GLIBC_TUNABLES={expected_env!r} but the worker has "
                         f"{os.environ.get('GLIBC_TUNABLES')!r}; run it through the parent script")
    model, sample, precision, auto = build_sampler(args)

    t0 = time.perf_counter()
    if args.warmup > 0:
        sample(args.warmup, 10_000)
    warmup_s = time.perf_counter() - t0
    runs = time_repeats(args, sample)

    rates = [r["samples_per_s"] for r in runs]
    return {
        "model": args.model,
        "arch": MODELS[args.model],
        "config": args.config,
        "description": description,
        "implementation": impl,
        "precision": precision,
        "precision_auto": None if auto is None else auto.reason,
        "rrcm": rrcm_source(),
        "channels_last": channels_last,
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "batch_size": args.batch_size,
        "samples": args.samples,
        "warmup_samples": args.warmup,
        "warmup_seconds": warmup_s,
        "repeats": args.repeats,
        "runs": runs,
        "samples_per_s_median": statistics.median(rates),
        "samples_per_s_min": min(rates),
        "samples_per_s_max": max(rates),
        "busy_elsewhere_cores_max": max(r["busy_elsewhere_cores"] for r in runs),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


# ----------------------------------------------------------------------------------------------
# parent side: launch one child per (model, config), collect, print, compare
# ----------------------------------------------------------------------------------------------

def launch_worker(model: str, config: str, args: argparse.Namespace) -> dict:
    tuned_malloc = CONFIGS[config][3]
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if tuned_malloc:
        env["GLIBC_TUNABLES"] = MALLOC_TUNABLES
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--model", model, "--config", config,
           "--batch-size", str(args.batch_size), "--samples", str(args.samples), "--warmup", str(args.warmup),
           "--repeats", str(args.repeats), "--wait-idle", str(args.wait_idle), "--sigma", str(args.sigma),
           "--seed", str(args.seed)]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"no error output (exit status {proc.returncode})"
        reason = reason.removeprefix("certify_throughput: error: ")
        raise BenchError(f"worker {model}/{config} failed: {reason}")
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise BenchError(f"worker {model}/{config} printed no result")


def fmt_rate(v: float) -> str:
    return f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"


def print_table(results: list[dict], models: list[str], configs: list[str]) -> dict:
    """Print the results table; return {model: {config: ratio to baseline (median)}}."""
    ratios: dict[str, dict[str, float]] = {}
    header = (f"{'model':<10} {'configuration':<21} {'samples/s':>10} {'(min - max)':>17} {'x baseline':>10} "
              f"{'cores':>6} {'elsewhere':>9} {'faults/batch':>12}")
    print(header)
    print("-" * len(header))
    for model in models:
        rows = {r["config"]: r for r in results if r["model"] == model}
        base = rows.get("baseline")
        ratios[model] = {}
        for config in configs:
            r = rows[config]
            ratio = r["samples_per_s_median"] / base["samples_per_s_median"] if base else float("nan")
            ratios[model][config] = ratio
            cores = statistics.median(run["cpu_cores_used"] for run in r["runs"])
            faults = statistics.median(run["minor_page_faults_per_batch"] for run in r["runs"])
            span = f"{fmt_rate(r['samples_per_s_min'])} - {fmt_rate(r['samples_per_s_max'])}"
            print(f"{model:<10} {config:<21} {fmt_rate(r['samples_per_s_median']):>10} {span:>17} "
                  f"{ratio:>9.2f}x {cores:>6.2f} {r['busy_elsewhere_cores_max']:>9.2f} {faults:>12,.0f}")
        print()
    return ratios


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        self.exit(2, f"certify_throughput: error: {message} (see --help)\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(description="Noise samples/s of rrcm's Smooth vs Cohen et al.'s sampling loop "
                                            "(CIFAR ResNets, random weights, CPU).")
    p.add_argument("--models", default="resnet20,resnet110",
                   help=f"comma-separated, from: {', '.join(MODELS)} (default: both)")
    p.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                   help=f"comma-separated, from: {', '.join(CONFIGS)} (default: {','.join(DEFAULT_CONFIGS)})")
    p.add_argument("--batch-size", type=int, default=None, help="noise samples per forward pass, the same for "
                   "every configuration (default 1000; 100 with --quick)")
    p.add_argument("--samples", type=int, default=None,
                   help=f"noise samples per timed measurement (default {DEFAULT_SAMPLES}; 200 with --quick)")
    p.add_argument("--warmup", type=int, default=None,
                   help="noise samples drawn before timing (default 2 batches; 1 batch with --quick)")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed measurements per configuration; the table shows their median "
                        f"(default {DEFAULT_REPEATS}; 1 with --quick)")
    p.add_argument("--sigma", type=float, default=0.25, help="noise level (does not affect speed; default 0.25)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, image and noise (default 0)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="on a shared machine: before each measurement wait up to SECONDS for other processes "
                        f"to go idle, and redo a repeat that ran beside other work (up to {CONTENDED_RETRIES} "
                        "times); default 0 = measure at once")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sample counts, finishes in seconds")
    p.add_argument("--json", metavar="PATH", help="also write all settings and results as JSON to PATH")
    # internal: one measurement in a child process
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.batch_size is None:
        args.batch_size = 100 if args.quick else 1000
    if args.samples is None:
        args.samples = 200 if args.quick else DEFAULT_SAMPLES
    if args.warmup is None:
        args.warmup = args.batch_size * (1 if args.quick else 2)
    if args.repeats is None:
        args.repeats = 1 if args.quick else DEFAULT_REPEATS
    for name in ("batch_size", "samples", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be at least 0")
    if not (args.wait_idle >= 0):
        p.error("--wait-idle must be at least 0")
    if not (args.sigma > 0):
        p.error("--sigma must be positive")
    if args.worker:
        if args.model not in MODELS or args.config not in CONFIGS:
            p.error("--worker needs --model and --config")
        return args
    args.model_list = [m.strip() for m in args.models.split(",") if m.strip()]
    args.config_list = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [m for m in args.model_list if m not in MODELS]
    if bad or not args.model_list:
        p.error(f"unknown model(s) {', '.join(bad) or '(none)'}; choose from {', '.join(MODELS)}")
    bad = [c for c in args.config_list if c not in CONFIGS]
    if bad or not args.config_list:
        p.error(f"unknown configuration(s) {', '.join(bad) or '(none)'}; choose from {', '.join(CONFIGS)}")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        p.error(f"--json {args.json}: directory {os.path.dirname(os.path.abspath(args.json))} does not exist")
    if "baseline" not in args.config_list:
        args.config_list.insert(0, "baseline")  # every ratio is against it
    return args


def run_meta(args: argparse.Namespace) -> dict:
    """The run's settings and the machine it runs on, as the JSON's `meta`."""
    import torch  # for the header; the measurements run in child processes

    command = " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    return {
        "command": "python " + command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_name(),
        "cpu_flags": sorted(cpu_flags() & ISA_FLAGS),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python_version": platform.python_version(),
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "batch_size": args.batch_size,
        "samples": args.samples,
        "warmup_samples": args.warmup,
        "repeats": args.repeats,
        "sigma": args.sigma,
        "seed": args.seed,
        "input_shape": list(SHAPE),
        "num_classes": NUM_CLASSES,
        "glibc_tunables_for_malloc_configs": MALLOC_TUNABLES,
        "wait_idle_seconds": args.wait_idle,
        "loadavg_at_start": list(os.getloadavg()),
    }


def print_header(meta: dict, args: argparse.Namespace) -> None:
    print("rrcm certification throughput (noise samples/s; higher is better)")
    print(f"  date        {meta['date']}")
    print(f"  command     {meta['command']}")
    print(f"  CPU         {meta['cpu_model']} ({meta['cpu_count']} logical CPUs; {' '.join(meta['cpu_flags'])})")
    print(f"  torch       {meta['torch_version']}, {meta['torch_threads']} threads (default), python "
          f"{meta['python_version']}")
    print(f"  settings    batch size {args.batch_size}, {args.samples} samples x {args.repeats} timed repeats "
          f"per configuration after {args.warmup} warm-up samples; input {'x'.join(map(str, SHAPE))}, "
          f"{NUM_CLASSES} classes, random weights, eval mode, sigma {args.sigma}")
    if args.wait_idle > 0:
        print(f"  shared CPU  each repeat waits up to {args.wait_idle:g} s for other processes to go idle and is "
              f"redone (up to {CONTENDED_RETRIES}x) if they kept more than {CONTENDED_CORES} cores busy")
    print(f"  malloc      '-malloc' configurations run with GLIBC_TUNABLES={MALLOC_TUNABLES}")
    print(f"  load avg    {' '.join(f'{v:.2f}' for v in meta['loadavg_at_start'])} at start")
    print()


def measure_all(args: argparse.Namespace) -> list[dict]:
    """One worker per (model, configuration), in order; progress on stderr."""
    results = []
    for model in args.model_list:
        for config in args.config_list:
            t0 = time.perf_counter()
            print(f"  measuring {model} / {config} ...", end="", flush=True, file=sys.stderr)
            try:
                result = launch_worker(model, config, args)
            except BaseException:
                print(file=sys.stderr, flush=True)  # end the "measuring ..." line
                raise
            result["wall_seconds_including_startup"] = time.perf_counter() - t0
            print(f" {fmt_rate(result['samples_per_s_median'])} samples/s "
                  f"({result['wall_seconds_including_startup']:.0f} s)", file=sys.stderr, flush=True)
            results.append(result)
    print(file=sys.stderr)
    return results


def same_malloc_ratios(results: list[dict], args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Like for like: every rrcm configuration against the baseline with the same malloc setting (printed
    when both malloc settings were measured)."""
    same_malloc: dict[str, dict[str, float]] = {}
    for model in args.model_list:
        rows = {r["config"]: r for r in results if r["model"] == model}
        for config, r in rows.items():
            base = rows.get("baseline-malloc" if CONFIGS[config][3] else "baseline")
            if r["implementation"] == "rrcm" and base is not None:
                same_malloc.setdefault(model, {})[config] = r["samples_per_s_median"] / base["samples_per_s_median"]
    if any(CONFIGS[c][3] for c in args.config_list) and "baseline-malloc" in args.config_list:
        for model, by_config in same_malloc.items():
            print(f"{model}: against the baseline with the same malloc setting: "
                  + ", ".join(f"{c} {v:.2f}x" for c, v in by_config.items()))
        print()
    return same_malloc


def print_headline(ratios: dict[str, dict[str, float]], args: argparse.Namespace) -> dict[str, float]:
    """The headline configuration against the baseline, per model, against TARGET_SPEEDUP."""
    top, base = HEADLINE
    headline = {}
    if top in args.config_list:
        for model in args.model_list:
            ratio = ratios[model][top]
            headline[model] = ratio
            verdict = "meets" if ratio >= TARGET_SPEEDUP else "MISSES"
            print(f"headline {model}: {top} vs {base}: {ratio:.2f}x ({verdict} the {TARGET_SPEEDUP:.0f}x target)")
    return headline


def write_json(path: str, payload: dict) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
    except OSError as e:
        raise BenchError(f"cannot write --json {path}: {e.strerror or e}") from e
    print(f"results written to {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = run_worker(args)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    started = time.perf_counter()
    meta = run_meta(args)
    print_header(meta, args)
    results = measure_all(args)
    ratios = print_table(results, args.model_list, args.config_list)
    same_malloc = same_malloc_ratios(results, args)
    for r in results:
        if r.get("precision_auto"):
            print(f"{r['model']}/{r['config']}: auto chose {r['precision']}: {r['precision_auto']}")
    print("samples/s: median of the timed repeats (range in brackets); x baseline: ratio of medians; cores: CPU")
    print("cores this process used; elsewhere: most cores other processes kept busy during a repeat (should be ~0);")
    print("faults/batch: minor page faults per forward batch (mmap churn of large buffers).")
    print()
    headline = print_headline(ratios, args)
    if args.quick:
        print("(--quick is a smoke run: tiny batches and one short repeat; the figures are only indicative)")
    busiest = max(r["busy_elsewhere_cores_max"] for r in results)
    if busiest > CONTENDED_CORES:
        print(f"warning: other processes kept up to {busiest:.2f} cores busy during the measurements; "
              "figures are not clean; rerun on an idle machine")
    elapsed = time.perf_counter() - started
    print(f"total time {elapsed:.0f} s")

    if args.json:
        meta["loadavg_at_end"] = list(os.getloadavg())
        meta["total_seconds"] = elapsed
        top, base = HEADLINE
        write_json(args.json, {"meta": meta, "results": results, "ratios_to_baseline": ratios,
                               "ratios_to_same_malloc_baseline": same_malloc,
                               "headline": {"config": top, "against": base, "target": TARGET_SPEEDUP,
                                            "ratios": headline}})
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"certify_throughput: error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("certify_throughput: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - one line, not a traceback, as the script promises
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"certify_throughput: error: {type(e).__name__}: {first}", file=sys.stderr)
        sys.exit(1)
