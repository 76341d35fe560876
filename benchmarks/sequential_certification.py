#!/usr/bin/env python
"""Sequential (anytime-valid) certification against Cohen's fixed n on the MNIST models (issue 14, item 7).

For rRCM and Consistency LeNet at σ ∈ {0.25, 0.5, 1.0} (the models of experiments/mnist.py), the same test
images (every --skip-th, default 200: 50 of the 10,000), α = 0.001, n0 = 100, and four `rrcm certify` runs
per model, in this order, so that a partial run already gives complete models:

  target       --procedure sequential --target-radius 2σ --n 100000 (the budget), seed 2
  grid         --procedure sequential --radii 0:3σ:0.25 --n 100000, seed 2
  cohen-seed0  Cohen's CERTIFY, n = 100,000, seed 0
  cohen-seed1  the same with seed 1: how often two Cohen runs agree is the noise floor

Every run is one `python -m rrcm certify` process writing results/mnist/sequential/logs/<model>-<run>.tsv;
re-running the script resumes an interrupted log (the runner's own resume) and skips a complete one. The
wall time of each process and the certificates it added go to results/mnist/sequential/timing.json. The runs
certify the copies of the models in results/mnist/sequential/checkpoints/ (committed with the logs, so that a
later session resumes them: a retrained model is another checkpoint); a missing copy is taken from
runs/mnist/<model>/model.safetensors, which is trained first with `experiments/mnist.py --only ...` when it is
missing too (unless --no-train). At the end the report is regenerated from the logs: docs/results/sequential.md and the plot
docs/results/sequential_samples.png.

    python benchmarks/sequential_certification.py                          # everything (resumable)
    python benchmarks/sequential_certification.py --dry-run --no-train     # the commands it would run
    python benchmarks/sequential_certification.py --models rrcm-s0.5 --runs-to-do target,cohen-seed0
    python benchmarks/sequential_certification.py --report-only            # the report from the logs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results" / "mnist" / "sequential"
DOCS = REPO / "docs" / "results"
REPORT_NAME, PLOT_NAME = "sequential.md", "sequential_samples.png"
SIGMAS = (0.25, 0.5, 1.0)
RUN_NAMES = ("target", "grid", "cohen-seed0", "cohen-seed1")
N0, N, ALPHA = 100, 100_000, 0.001
DEFAULT_SKIP, BATCH_SIZE, TEST_IMAGES = 200, 1000, 10_000
GRID_STEP = 0.25
# a seed of their own: the sequential runs' noise is independent of both Cohen runs', so sequential-vs-Cohen
# agreement is between independent runs, as Cohen-vs-Cohen agreement is
SEQUENTIAL_SEED = "2"
# the targets
TARGET_SAMPLES, GRID_SAMPLES, AGREEMENT, ACCURACY_POINTS, AUC_TOLERANCE, WALL_SPEEDUP = 50.0, 10.0, 0.99, 1.0, 0.02, 5.0
EPS = 1e-12  # accuracies are multiples of 1/images: compare them with this slack
REPORT_COMMAND = "python benchmarks/sequential_certification.py --report-only"


class BenchError(Exception):
    """A failure reported to the user as one line."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    sigma: float
    checkpoint: Path  # the copy the runs certify, committed beside the logs so that a later session resumes them
    trained: Path  # where experiments/mnist.py writes the model
    channels_last: bool = False
    train_steps: tuple[str, ...] = ()  # experiments/mnist.py step names that write `trained`


@dataclass(frozen=True)
class Run:
    model: str
    name: str  # one of RUN_NAMES
    argv: tuple[str, ...]  # arguments of `rrcm`
    log: Path

    @property
    def key(self) -> str:
        return f"{self.model}-{self.name}"


def sigma_tag(sigma: float) -> str:
    return f"s{sigma:g}"


def mnist_models(runs: Path, results: Path = RESULTS) -> dict[str, ModelSpec]:
    """The six models, named as in experiments/mnist.py: trained under `runs`, certified from their copies in
    <results>/checkpoints (a few hundred kB each; a retrained model would not resume the committed logs)."""
    models = {}
    for family in ("rrcm", "lenet-consistency"):
        for sigma in SIGMAS:
            name = f"{family}-{sigma_tag(sigma)}"
            steps = ("rrcm-pretrain", name) if family == "rrcm" else (name,)
            models[name] = ModelSpec(name, sigma, results / "checkpoints" / f"{name}.safetensors",
                                     runs / name / "model.safetensors", channels_last=family.startswith("lenet"),
                                     train_steps=steps)
    return models


# ---------------------------------------------------------------------------------------------------------
# planning and running
# ---------------------------------------------------------------------------------------------------------

def target_radius(sigma: float) -> float:
    return 2 * sigma


def grid_text(sigma: float) -> str:
    return f"0:{3 * sigma:g}:{GRID_STEP:g}"


def grid_radii(sigma: float) -> tuple[float, ...]:
    """The radii the grid run settles, exactly as `rrcm certify --radii` reads them."""
    from rrcm.smoothing.procedures import parse_radii

    return parse_radii(grid_text(sigma))


def run_options(name: str, sigma: float) -> list[str]:
    """What distinguishes one run of a model from the others."""
    if name == "target":
        return ["--procedure", "sequential", "--target-radius", f"{target_radius(sigma):g}", "--seed", SEQUENTIAL_SEED]
    if name == "grid":
        return ["--procedure", "sequential", "--radii", grid_text(sigma), "--seed", SEQUENTIAL_SEED]
    if name.startswith("cohen-seed"):
        return ["--seed", name.removeprefix("cohen-seed")]
    raise BenchError(f"unknown run {name!r}; choose from {', '.join(RUN_NAMES)}")


def plan_runs(spec: ModelSpec, logs_dir: Path, data_args: Sequence[str], *, skip: int = DEFAULT_SKIP,
              precision: str = "bf16", n: int = N, runs: Sequence[str] = RUN_NAMES) -> list[Run]:
    """The `rrcm certify` runs of one model, in RUN_NAMES order (restricted to `runs`)."""
    planned = []
    for name in RUN_NAMES:
        if name not in runs:
            continue
        log = logs_dir / f"{spec.name}-{name}.tsv"
        argv = ["certify", "--checkpoint", str(spec.checkpoint), *data_args, "--skip", str(skip),
                "--n0", str(N0), "--n", str(n), "--alpha", str(ALPHA), "--batch-size", str(BATCH_SIZE),
                "--precision", precision, *run_options(name, spec.sigma), "--quiet", "--out", str(log)]
        if spec.channels_last:
            argv.insert(-2, "--channels-last")
        planned.append(Run(spec.name, name, tuple(argv), log))
    return planned


def settings_path(log: Path) -> Path:
    return log.with_name(log.name + ".json")


def log_settings(log: Path) -> dict:
    """The runner's `<log>.json` (empty when absent or unreadable)."""
    try:
        return json.loads(settings_path(log).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def log_complete(log: Path) -> bool:
    from rrcm.smoothing.runner import part_paths

    return log.is_file() and log_settings(log).get("complete") is True and not part_paths(log)


def rows_done(log: Path) -> int:
    """Certificates a log holds: the merged log's rows once complete, else the rows of its part files."""
    from rrcm.certlog import read_log
    from rrcm.smoothing.runner import part_paths

    if log_complete(log):
        return len(read_log(log))
    return sum(len(read_log(part, allow_partial_last_line=True)) for part in part_paths(log)
               if part.stat().st_size > 0)


def cpu_description() -> str:
    from rrcm.profiling import cpu_summary

    return cpu_summary()


def read_timing(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as e:
        raise BenchError(f"cannot read {path} ({e}); fix or remove it") from None


def record_timing(path: Path, key: str, seconds: float, certificates: int, cpu: str) -> dict:
    """Add one invocation's wall time and certificates to `key` in timing.json (written atomically)."""
    from rrcm.fileio import write_json_atomic

    timing = read_timing(path)
    entry = timing.get(key, {"seconds": 0.0, "certificates": 0, "cpu": cpu, "invocations": 0})
    entry["seconds"] = round(entry["seconds"] + seconds, 3)
    entry["certificates"] += certificates
    entry["invocations"] = entry.get("invocations", 0) + 1
    if cpu not in entry["cpu"].split(" + "):
        entry["cpu"] = f"{entry['cpu']} + {cpu}"
    timing[key] = entry
    write_json_atomic(path, timing)
    return entry


def run_one(run: Run, timing_path: Path, cpu: str) -> None:
    """One `rrcm certify` process; its wall time and the certificates it added go to timing.json.

    An invocation that added no certificate (it failed at once, or was stopped within its first one) is not
    recorded: its seconds bought nothing that a per-certificate time could divide."""
    if log_complete(run.log):
        print(f"{run.key}: already complete", flush=True)
        return
    before = rows_done(run.log)
    print(f"[{time.strftime('%H:%M:%S')}] {run.key} ({before} certificates already done) ...", flush=True)
    start = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, "-m", "rrcm", *run.argv], cwd=REPO)
    finally:
        seconds = time.perf_counter() - start
        added = rows_done(run.log) - before
        if added > 0:
            record_timing(timing_path, run.key, seconds, added, cpu)
    if result.returncode != 0:
        raise BenchError(f"{run.key}: rrcm certify failed (exit {result.returncode}); command: "
                         + shlex.join(["rrcm", *run.argv]))
    print(f"[{time.strftime('%H:%M:%S')}] {run.key} done in {seconds:.0f} s, {added} certificates", flush=True)


def train_command(spec: ModelSpec, runs: Path, data_root: str) -> list[str]:
    only = [arg for step in spec.train_steps for arg in ("--only", step)]
    return [sys.executable, str(REPO / "experiments" / "mnist.py"), *only, "--runs", str(runs),
            "--data-root", data_root]


def ensure_checkpoint(spec: ModelSpec, args: argparse.Namespace) -> bool:
    """Whether the model's certified copy is there: copied from the trained model, which is trained first
    when it is missing too (unless --no-train)."""
    if spec.checkpoint.is_file():
        return True
    if not spec.trained.is_file():
        if args.no_train or not spec.train_steps:
            print(f"{spec.name}: no checkpoint at {spec.checkpoint} or {spec.trained}; skipped (--no-train)",
                  flush=True)
            return False
        command = train_command(spec, Path(args.runs), args.data_root)
        if args.dry_run:
            print(shlex.join(command))
            return True
        print(f"[{time.strftime('%H:%M:%S')}] {spec.name}: training ({', '.join(spec.train_steps)}) ...", flush=True)
        if subprocess.run(command, cwd=REPO).returncode != 0 or not spec.trained.is_file():
            raise BenchError(f"{spec.name}: training did not write {spec.trained}; command: {shlex.join(command)}")
    if args.dry_run:
        print(f"(copy) {spec.trained} -> {spec.checkpoint}")
        return True
    spec.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    partial = spec.checkpoint.with_name(spec.checkpoint.name + ".partial")
    shutil.copyfile(spec.trained, partial)
    os.replace(partial, spec.checkpoint)  # never a half-copied checkpoint under the final name
    return True


def run_benchmark(models: Mapping[str, ModelSpec], args: argparse.Namespace, data_args: Sequence[str],
                  results: Path, n: int = N) -> None:
    """Model by model: train when needed, then its runs in order (or print them, with --dry-run)."""
    cpu = None if args.dry_run else cpu_description()
    for spec in models.values():
        if not ensure_checkpoint(spec, args):
            continue
        for run in plan_runs(spec, results / "logs", data_args, skip=args.skip, precision=args.precision, n=n,
                             runs=args.runs_to_do):
            if args.dry_run:
                print("already complete: " if log_complete(run.log) else "", shlex.join(["rrcm", *run.argv]),
                      sep="")
            else:
                run_one(run, results / "timing.json", cpu)


# ---------------------------------------------------------------------------------------------------------
# the numbers (pure functions of CertLog objects)
# ---------------------------------------------------------------------------------------------------------

def check_same_images(*logs) -> None:
    reference = np.sort(logs[0].idx)
    for log in logs[1:]:
        if not np.array_equal(np.sort(log.idx), reference):
            raise BenchError(f"{logs[0].path} and {log.path} certify different images")


def certified_at(log, radius: float) -> np.ndarray:
    """Per image, in idx order: certified correct at `radius` (correct = 1 and radius >= r)."""
    order = np.argsort(log.idx, kind="stable")
    return ((log.correct == 1) & (log.radius >= radius))[order]


def decision_agreement(first, second, radius: float) -> tuple[int, int]:
    """(images where both logs decide alike whether the image is certified at `radius`, images)."""
    check_same_images(first, second)
    same = certified_at(first, radius) == certified_at(second, radius)
    return int(same.sum()), int(same.size)


def samples(log) -> np.ndarray:
    """Noise samples per certificate, n0 + n_used (sequential) or n0 + n (Cohen)."""
    from rrcm.report import samples_per_certificate

    per_row = samples_per_certificate(log)
    if per_row is None or len(per_row) == 0:
        raise BenchError(f"{log.path}: no n0/n columns (or no rows): not a log this benchmark wrote")
    return per_row


def sample_summary(log) -> dict:
    per_row = samples(log)
    return {"mean": float(np.mean(per_row)), "median": float(np.median(per_row)), "total": int(per_row.sum())}


def sample_ratio(reference, log) -> float:
    """How many times fewer samples per certificate `log` drew than `reference`, on average."""
    return float(np.mean(samples(reference)) / np.mean(samples(log)))


def pooled_sample_ratio(references: Sequence, logs: Sequence) -> float:
    """Ratio of the pooled means over every image of every pair (the headline)."""
    reference = np.concatenate([samples(log) for log in references])
    pooled = np.concatenate([samples(log) for log in logs])
    return float(np.mean(reference) / np.mean(pooled))


def mean_of_ratios(references: Sequence, logs: Sequence) -> float:
    return float(np.mean([sample_ratio(r, log) for r, log in zip(references, logs)]))


def accuracy_curve(log, radii: Sequence[float]) -> np.ndarray:
    from rrcm.report import certified_accuracy

    return certified_accuracy(log, list(radii))


def trapezoid(values: np.ndarray, radii: Sequence[float]) -> float:
    radii = np.asarray(radii, dtype=np.float64)
    return float(np.sum(np.diff(radii) * (values[1:] + values[:-1]) / 2)) if radii.size > 1 else 0.0


def curve_auc(log, radii: Sequence[float]) -> float:
    """Area under the certified-accuracy curve over the grid radii (trapezoid rule)."""
    return trapezoid(accuracy_curve(log, radii), radii)


def relative_difference(value: float, reference: float) -> float:
    return (value - reference) / reference if reference else (0.0 if value == reference else math.inf)


def grid_accuracy_check(grid, cohen0, cohen1, radii: Sequence[float], points: float = ACCURACY_POINTS) -> dict:
    """Grid against Cohen (seed 0) at every radius: the largest gap, the Cohen-vs-Cohen one, and whether
    every gap is within `points` percentage points, or within max(points, that radius's Cohen gap)."""
    check_same_images(grid, cohen0, cohen1)
    gap = np.abs(accuracy_curve(grid, radii) - accuracy_curve(cohen0, radii))
    spread = np.abs(accuracy_curve(cohen1, radii) - accuracy_curve(cohen0, radii))
    tolerance = points / 100
    return {"max_gap": float(gap.max()), "max_cohen_gap": float(spread.max()),
            "within_points": bool(np.all(gap <= tolerance + EPS)),
            "within_spread": bool(np.all(gap <= np.maximum(tolerance, spread) + EPS))}


def cohen_p_hat(cohen, log) -> np.ndarray:
    """Cohen's p̂_A = nA / n for each image of `log`, in `log`'s row order."""
    check_same_images(cohen, log)
    p_hat = dict(zip(cohen.idx.tolist(), (cohen.extras["nA"] / cohen.extras["n"]).tolist()))
    return np.array([p_hat[i] for i in log.idx.tolist()])


def model_numbers(logs: Mapping, radius: float, radii: Sequence[float]) -> dict:
    """Every number of one model's report from its four logs (keyed by RUN_NAMES)."""
    from rrcm.report import average_certified_radius

    check_same_images(*(logs[name] for name in RUN_NAMES))
    c0, c1 = logs["cohen-seed0"], logs["cohen-seed1"]
    return {
        "images": len(c0),
        "samples": {name: sample_summary(logs[name]) for name in RUN_NAMES},
        "ratio": {name: sample_ratio(c0, logs[name]) for name in ("target", "grid")},
        "agreement": decision_agreement(logs["target"], c0, radius),
        "cohen_agreement": decision_agreement(c1, c0, radius),
        "at_target": {name: float(certified_at(logs[name], radius).mean()) for name in RUN_NAMES},
        "curves": {name: accuracy_curve(logs[name], radii) for name in ("grid", "cohen-seed0", "cohen-seed1")},
        "auc": {name: curve_auc(logs[name], radii) for name in ("grid", "cohen-seed0", "cohen-seed1")},
        "acr": {name: average_certified_radius(logs[name]) for name in RUN_NAMES},
        "grid_check": grid_accuracy_check(logs["grid"], c0, c1, radii),
    }


def seconds_per_certificate(timing: Mapping, keys: Sequence[str]) -> float | None:
    """Pooled wall seconds per certificate over the timing entries `keys` (None if any is missing)."""
    entries = [timing.get(key) for key in keys]
    if not entries or any(e is None or not e.get("certificates") for e in entries):
        return None
    return sum(e["seconds"] for e in entries) / sum(e["certificates"] for e in entries)


# ---------------------------------------------------------------------------------------------------------
# loading the logs of a model
# ---------------------------------------------------------------------------------------------------------

@dataclass
class ModelLogs:
    spec: ModelSpec
    status: dict[str, str]  # run name -> "complete", "incomplete (k of N images)" or "not run"
    logs: dict  # run name -> CertLog, complete runs only
    radius: float
    radii: tuple[float, ...]

    @property
    def complete(self) -> bool:
        return len(self.logs) == len(RUN_NAMES) and "different images" not in self.status.get("all", "")


def expected_images(log: Path, skip: int) -> int:
    count = log_settings(log).get("subset", {}).get("count")
    return int(count) if count is not None else len(range(0, TEST_IMAGES, skip))


def run_status(log: Path, skip: int) -> str:
    if log_complete(log):
        return "complete"
    done = rows_done(log)
    if done == 0 and not settings_path(log).exists():
        return "not run"
    return f"incomplete ({done} of {expected_images(log, skip)} images)"


def load_model(spec: ModelSpec, logs_dir: Path, skip: int) -> ModelLogs:
    """A model's complete logs, the status of each run, and the radii its sequential runs settled."""
    from rrcm.certlog import read_log

    status, logs = {}, {}
    for name in RUN_NAMES:
        path = logs_dir / f"{spec.name}-{name}.tsv"
        status[name] = run_status(path, skip)
        if status[name] == "complete":
            logs[name] = read_log(path, label=f"{spec.name} {name}")
    radius = log_settings(logs_dir / f"{spec.name}-target.tsv").get("settings", {}).get("target_radius")
    radii = log_settings(logs_dir / f"{spec.name}-grid.tsv").get("settings", {}).get("radii")
    model = ModelLogs(spec, status, logs, target_radius(spec.sigma) if radius is None else float(radius),
                      grid_radii(spec.sigma) if radii is None else tuple(float(r) for r in radii))
    if len(logs) == len(RUN_NAMES):
        try:
            check_same_images(*logs.values())
        except BenchError:
            status["all"] = "the runs certify different images"
    return model


# ---------------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------------

def pct(value: float) -> str:
    return f"{100 * value:.1f}"


def times(value: float | None) -> str:
    return "–" if value is None else f"{value:,.1f}×"


def verdict(passed: bool | None) -> str:
    return "not evaluated" if passed is None else ("**pass**" if passed else "**FAIL**")


def table(headings: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headings) + " |", "|" + "|".join([":---"] + ["---:"] * (len(headings) - 1)) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def pooled_numbers(done: Sequence[ModelLogs], numbers: Mapping[str, dict], timing: Mapping) -> dict:
    """Over every image of every complete model: sample ratios, agreements, wall time per certificate."""
    c0 = [m.logs["cohen-seed0"] for m in done]
    pooled = {"images": sum(numbers[m.spec.name]["images"] for m in done)}
    for mode in ("target", "grid"):
        logs = [m.logs[mode] for m in done]
        pooled[mode] = {"ratio": pooled_sample_ratio(c0, logs), "mean_of_ratios": mean_of_ratios(c0, logs),
                        "mean": float(np.mean(np.concatenate([samples(log) for log in logs]))),
                        "median": float(np.median(np.concatenate([samples(log) for log in logs])))}
    pooled["cohen_mean"] = float(np.mean(np.concatenate([samples(log) for log in c0])))
    for key in ("agreement", "cohen_agreement"):
        agree = sum(numbers[m.spec.name][key][0] for m in done)
        pooled[key] = agree / pooled["images"]
    pooled["wall"] = {name: seconds_per_certificate(timing, [f"{m.spec.name}-{name}" for m in done])
                      for name in RUN_NAMES}
    return pooled


def wall_ratio(wall: Mapping, mode: str) -> float | None:
    cohen, other = wall.get("cohen-seed0"), wall.get(mode)
    return None if cohen is None or not other else cohen / other


def target_lines(done: Sequence[ModelLogs], numbers: Mapping, pooled: Mapping | None) -> list[str]:
    """One pass/fail line per target of the issue."""
    if pooled is None:
        return [f"- {line}: not evaluated (no complete model)" for line in (
            "target mode ≥ 50× fewer samples", "decision agreement at 2σ", "grid ≥ 10× fewer samples",
            "grid certified accuracy", "grid AUC", "wall time ≥ 5× lower")]
    t, g, wall = pooled["target"], pooled["grid"], pooled["wall"]
    checks = [numbers[m.spec.name]["grid_check"] for m in done]
    auc = [abs(relative_difference(numbers[m.spec.name]["auc"]["grid"], numbers[m.spec.name]["auc"]["cohen-seed0"]))
           for m in done]
    ratios = [wall_ratio(wall, mode) for mode in ("target", "grid")]
    agreement_ok = pooled["agreement"] >= AGREEMENT - EPS or pooled["agreement"] >= pooled["cohen_agreement"] - EPS
    return [
        f"- Target mode ≥ {TARGET_SAMPLES:g}× fewer samples per certificate: {times(t['ratio'])} (pooled means, "
        f"the headline; mean of the per-model ratios {times(t['mean_of_ratios'])}): "
        f"{verdict(t['ratio'] >= TARGET_SAMPLES)}",
        f"- Decision at 2σ agrees with Cohen's on ≥ {100 * AGREEMENT:g}% of images or at least as often as two "
        f"Cohen runs agree: {pct(pooled['agreement'])}% against {pct(pooled['cohen_agreement'])}% (pooled): "
        f"{verdict(agreement_ok)}",
        f"- Grid mode ≥ {GRID_SAMPLES:g}× fewer samples: {times(g['ratio'])} (pooled; mean of ratios "
        f"{times(g['mean_of_ratios'])}): {verdict(g['ratio'] >= GRID_SAMPLES)}",
        f"- Grid certified accuracy within {ACCURACY_POINTS:g} point of Cohen's (seed 0) at every grid radius of every "
        f"model, or within the two Cohen runs' spread (every gap ≤ max(1 point, |cohen-seed1 − cohen-seed0|) at "
        f"its radius): largest gap {max(100 * c['max_gap'] for c in checks):.1f} points, largest Cohen-vs-Cohen gap "
        f"{max(100 * c['max_cohen_gap'] for c in checks):.1f}; within 1 point: "
        f"{'yes' if all(c['within_points'] for c in checks) else 'no'}, within the spread: "
        f"{'yes' if all(c['within_spread'] for c in checks) else 'no'}: "
        f"{verdict(all(c['within_points'] for c in checks) or all(c['within_spread'] for c in checks))}",
        f"- Grid AUC within {100 * AUC_TOLERANCE:g}% of Cohen's for every model: largest relative difference "
        f"{100 * max(auc):.2f}%: {verdict(max(auc) <= AUC_TOLERANCE + EPS)}",
        f"- Wall time ≥ {WALL_SPEEDUP:g}× lower in both modes (pooled seconds per certificate): target "
        f"{times(ratios[0])}, grid {times(ratios[1])}: "
        f"{verdict(None if None in ratios else min(ratios) >= WALL_SPEEDUP)}",
    ]


def status_section(models: Sequence[ModelLogs]) -> list[str]:
    rows = []
    for m in models:
        note = m.status.get("all", "")
        rows.append([m.spec.name, f"{m.spec.sigma:g}", *(m.status[name] for name in RUN_NAMES), note])
    return ["## Runs", "", *table(["model", "σ", *RUN_NAMES, "note"], rows), "",
            "Only models whose four runs are complete (and certify the same images) enter the numbers below.", ""]


def samples_section(done: Sequence[ModelLogs], numbers: Mapping, pooled: Mapping) -> list[str]:
    rows = []
    for m in done:
        s, r = numbers[m.spec.name]["samples"], numbers[m.spec.name]["ratio"]
        rows.append([m.spec.name, numbers[m.spec.name]["images"], f"{s['cohen-seed0']['mean']:,.0f}",
                     f"{s['target']['mean']:,.0f}", f"{s['target']['median']:,.0f}", times(r["target"]),
                     f"{s['grid']['mean']:,.0f}", f"{s['grid']['median']:,.0f}", times(r["grid"])])
    t, g = pooled["target"], pooled["grid"]
    rows.append(["**all (pooled)**", pooled["images"], f"{pooled['cohen_mean']:,.0f}", f"{t['mean']:,.0f}",
                 f"{t['median']:,.0f}", times(t["ratio"]), f"{g['mean']:,.0f}", f"{g['median']:,.0f}",
                 times(g["ratio"])])
    rows.append(["mean of per-model ratios", "", "", "", "", times(t["mean_of_ratios"]), "", "",
                 times(g["mean_of_ratios"])])
    return ["## Samples per certificate", "",
            "n0 + n_used for the sequential runs, n0 + n for Cohen's; ratio = Cohen's mean / the run's mean.", "",
            *table(["model", "images", "Cohen", "target mean", "target median", "target ratio", "grid mean",
                    "grid median", "grid ratio"], rows), ""]


def decision_section(done: Sequence[ModelLogs], numbers: Mapping, pooled: Mapping) -> list[str]:
    rows = []
    for m in done:
        x = numbers[m.spec.name]
        (agree, n), (cohen_agree, _) = x["agreement"], x["cohen_agreement"]
        rows.append([m.spec.name, f"{m.radius:g}", *(pct(x["at_target"][name]) for name in RUN_NAMES),
                     f"{agree}/{n} ({pct(agree / n)}%)", f"{cohen_agree}/{n} ({pct(cohen_agree / n)}%)"])
    rows.append(["**all (pooled)**", "", "", "", "", "", f"{pct(pooled['agreement'])}%",
                 f"{pct(pooled['cohen_agreement'])}%"])
    return ["## Decisions at the target radius 2σ", "",
            "Certified at r means predict = label and radius ≥ r (the certified-accuracy indicator). Columns 3–6: "
            "certified accuracy at r (%); then the images where the target run decides as cohen-seed0 does, and "
            "where the two Cohen runs decide alike (the noise floor).", "",
            *table(["model", "r", *(f"{name} %" for name in RUN_NAMES), "target = cohen-seed0",
                    "cohen-seed1 = cohen-seed0"], rows), ""]


def fixed_n_cap(done: Sequence[ModelLogs]) -> str:
    """Cohen's largest certifiable radius, σ·Φ⁻¹(α^(1/n)), at the n and α of the Cohen logs."""
    from rrcm.smoothing.stats import max_certifiable_radius

    extras = done[0].logs["cohen-seed0"].extras
    n, alpha = int(extras["n"][0]), float(extras["alpha"][0])
    return f"{max_certifiable_radius(n, alpha, 1.0):.2f}σ at n = {n:,}, α = {alpha:g}"


def grid_summary_section(done: Sequence[ModelLogs], numbers: Mapping) -> list[str]:
    rows = []
    for m in done:
        x = numbers[m.spec.name]
        auc, acr, check = x["auc"], x["acr"], x["grid_check"]
        rows.append([m.spec.name, f"{m.radii[0]:g}–{m.radii[-1]:g} ({len(m.radii)})",
                     f"{100 * check['max_gap']:.1f}", f"{100 * check['max_cohen_gap']:.1f}",
                     f"{auc['grid']:.4f}", f"{auc['cohen-seed0']:.4f}", f"{auc['cohen-seed1']:.4f}",
                     f"{100 * relative_difference(auc['grid'], auc['cohen-seed0']):+.2f}%",
                     f"{100 * relative_difference(auc['cohen-seed1'], auc['cohen-seed0']):+.2f}%",
                     f"{acr['grid']:.3f}", f"{acr['cohen-seed0']:.3f}", f"{acr['cohen-seed1']:.3f}"])
    return ["## Certified accuracy on the grid", "",
            "Gaps in percentage points (largest over the grid radii); AUC = area under the certified-accuracy "
            "curve over the grid radii (trapezoid rule); relative differences against cohen-seed0.", "",
            *table(["model", "radii", "max |grid − c0|", "max |c1 − c0|", "AUC grid", "AUC c0", "AUC c1",
                    "grid vs c0", "c1 vs c0", "ACR grid", "ACR c0", "ACR c1"], rows), "",
            "The grid run's ordinary ACR is lower than Cohen's by construction: a certificate that stops once every "
            f"grid radius is settled never pushes its radius towards the fixed-n cap ({fixed_n_cap(done)}), which "
            "Cohen's ACR counts for every image whose samples all agree.", ""]


def grid_curves_section(done: Sequence[ModelLogs], numbers: Mapping) -> list[str]:
    lines = ["### Certified accuracy (%) at every grid radius", ""]
    for m in done:
        curves = numbers[m.spec.name]["curves"]
        g, c0, c1 = curves["grid"], curves["cohen-seed0"], curves["cohen-seed1"]
        rows = [[f"{r:g}", pct(g[j]), pct(c0[j]), pct(c1[j]), f"{100 * (g[j] - c0[j]):+.1f}",
                 f"{100 * (c1[j] - c0[j]):+.1f}"] for j, r in enumerate(m.radii)]
        lines += [f"**{m.spec.name}** (σ = {m.spec.sigma:g})", "",
                  *table(["radius", "grid", "cohen-seed0", "cohen-seed1", "grid − c0", "c1 − c0"], rows), ""]
    return lines


def wall_section(done: Sequence[ModelLogs], timing: Mapping, pooled: Mapping) -> list[str]:
    def cells(wall: Mapping) -> list[str]:
        return [("–" if wall[name] is None else f"{wall[name]:.3g}") for name in RUN_NAMES] + [
            times(wall_ratio(wall, "target")), times(wall_ratio(wall, "grid"))]

    rows = [[m.spec.name, *cells({name: seconds_per_certificate(timing, [f"{m.spec.name}-{name}"])
                                  for name in RUN_NAMES})] for m in done]
    rows.append(["**all (pooled)**", *cells(pooled["wall"])])
    return ["## Wall time per certificate (s)", "",
            "Seconds of each `rrcm certify` process (start-up, loading the model and data included; a resumed run "
            "pays its start-up again) divided by the certificates it added, from timing.json. Taken on whatever "
            "else the machine was doing at the time.", "",
            *table(["model", *RUN_NAMES, "cohen-seed0 / target", "cohen-seed0 / grid"], rows), ""]


def setup_lines(models: Sequence[ModelLogs], done: Sequence[ModelLogs], timing: Mapping) -> list[str]:
    cpus = sorted({cpu for entry in timing.values() for cpu in str(entry.get("cpu", "")).split(" + ") if cpu})
    some = next(iter(done[0].logs.values())).extras if done else None
    settings = (f"n0 = {int(some['n0'][0])}, n = {int(some['n'][0]):,} (the sequential runs' budget), "
                f"α = {some['alpha'][0]:g}" if some is not None else f"n0 = {N0}, n = {N:,}, α = {ALPHA:g}")
    images = sorted({len(next(iter(m.logs.values()))) for m in done})
    return [f"Models: {', '.join(m.spec.name for m in models)} (experiments/mnist.py). {settings}; "
            f"images per model: {', '.join(map(str, images)) or 'none yet'} (every `--skip`-th MNIST test image). "
            "Runs: `target` (sequential, `--target-radius 2σ`), `grid` (sequential, `--radii 0:3σ:0.25`), both "
            "seed 2; `cohen-seed0` and `cohen-seed1` (Cohen's CERTIFY, seeds 0 and 1).", "",
            "Each run has noise of its own (its seed), so sequential-vs-Cohen agreement is between independent "
            "runs, like the Cohen-vs-Cohen agreement beside it.", "",
            f"CPU: {'; '.join(cpus) if cpus else cpu_description() + ' (no timing recorded: this machine)'}.", ""]


def render_markdown(models: Sequence[ModelLogs], timing: Mapping) -> str:
    done = [m for m in models if m.complete]
    numbers = {m.spec.name: model_numbers(m.logs, m.radius, m.radii) for m in done}
    pooled = pooled_numbers(done, numbers, timing) if done else None
    lines = ["# Sequential certification against Cohen's fixed n (MNIST, issue 14 item 7)", "",
             f"Generated from results/mnist/sequential/ by `{REPORT_COMMAND}`; do not edit by hand.", "",
             *setup_lines(models, done, timing), *status_section(models),
             "## Targets", "", f"Over the {len(done)} complete model(s), {pooled['images'] if pooled else 0} images:",
             "", *target_lines(done, numbers, pooled), ""]
    if done:
        lines += [*samples_section(done, numbers, pooled), f"![samples per certificate]({PLOT_NAME})", "",
                  *decision_section(done, numbers, pooled), *grid_summary_section(done, numbers),
                  *grid_curves_section(done, numbers), *wall_section(done, timing, pooled)]
    lines += ["## Commands", "", "```", "python benchmarks/sequential_certification.py        # run (resumable)",
              f"{REPORT_COMMAND}   # this report", "```", ""]
    return "\n".join(lines)


def plot_samples(done: Sequence[ModelLogs], out_png: Path) -> Path:
    """Samples per certificate (log scale) against cohen-seed0's p̂_A, target and grid runs of every model."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from rrcm.fileio import atomic_path

    figure = Figure(figsize=(9.0, 4.8), dpi=150)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    colors = [f"C{i}" for i in range(10)]
    for i, m in enumerate(done):
        c0 = m.logs["cohen-seed0"]
        for mode, marker in (("target", "o"), ("grid", "x")):
            log = m.logs[mode]
            axes.scatter(cohen_p_hat(c0, log), samples(log), marker=marker, s=14, color=colors[i % 10],
                         facecolors="none" if marker == "o" else None, linewidths=0.8, label=f"{m.spec.name} {mode}")
    cohen = int(samples(done[0].logs["cohen-seed0"])[0])
    axes.axhline(cohen, color="k", linestyle="--", linewidth=1.0, label=f"Cohen, fixed n ({cohen:,})")
    axes.set_yscale("log")
    axes.set_xlim(0.0, 1.005)
    axes.set_xlabel("Cohen (seed 0) p̂_A = nA / n")
    axes.set_ylabel("noise samples per certificate")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    figure.tight_layout()
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, format="png")
    return out_png


def write_report(models: Mapping[str, ModelSpec], results: Path, docs: Path, skip: int) -> Path:
    """docs/<sequential.md> (and the plot, when some model is complete) from the logs and timing.json."""
    from rrcm.fileio import write_text_atomic

    loaded = [load_model(spec, results / "logs", skip) for spec in models.values()]
    text = render_markdown(loaded, read_timing(results / "timing.json"))
    done = [m for m in loaded if m.complete]
    if done:
        plot_samples(done, docs / PLOT_NAME)
    write_text_atomic(docs / REPORT_NAME, text)
    plot = f", plot: {docs / PLOT_NAME}" if done else " (no complete model: no plot)"
    print(f"report: {docs / REPORT_NAME}{plot}")
    return docs / REPORT_NAME


# ---------------------------------------------------------------------------------------------------------

def names_list(text: str, allowed: Sequence[str], what: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or '(none)'}; choose from "
                                         f"{', '.join(allowed)}")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    model_names = list(mnist_models(Path("runs")))
    parser.add_argument("--models", type=lambda t: names_list(t, model_names, "model"), default=model_names,
                        help=f"comma-separated subset of {','.join(model_names)}")
    parser.add_argument("--runs-to-do", type=lambda t: names_list(t, RUN_NAMES, "run"), default=list(RUN_NAMES),
                        help=f"comma-separated subset of {','.join(RUN_NAMES)}")
    parser.add_argument("--skip", type=int, default=DEFAULT_SKIP,
                        help="certify every skip-th test image (default 200: 50 images)")
    parser.add_argument("--precision", default="bf16", help="rrcm certify --precision (default bf16)")
    parser.add_argument("--runs", default=str(REPO / "runs" / "mnist"), help="checkpoints (default runs/mnist)")
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "mnist"),
                        help="folder with the MNIST idx files (default ../shared/data/mnist)")
    parser.add_argument("--results", default=str(RESULTS),
                        help="logs and timing.json (default results/mnist/sequential)")
    parser.add_argument("--docs", default=str(DOCS), help="where the report and plot go (default docs/results)")
    parser.add_argument("--no-train", action="store_true", help="skip a model whose checkpoint is missing")
    parser.add_argument("--report-only", action="store_true", help="only regenerate the report from the logs")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    args = parser.parse_args(argv)
    if args.skip < 1:
        parser.error(f"--skip must be at least 1, got {args.skip}")
    args.data_root = str(Path(args.data_root).resolve())  # recorded in each log's .json: a resume must agree
    args.runs = str(Path(args.runs).resolve())
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    runs, results, docs = Path(args.runs).resolve(), Path(args.results).resolve(), Path(args.docs).resolve()
    models = {name: spec for name, spec in mnist_models(runs, results).items() if name in args.models}
    if args.report_only:
        write_report(models, results, docs, args.skip)
        return 0
    if not args.dry_run and not Path(args.data_root).is_dir():
        raise BenchError(f"MNIST not found at {args.data_root}; give --data-root (the folder with the idx .gz files)")
    failure = None
    try:
        run_benchmark(models, args, ["--data-root", args.data_root], results)
    except BenchError as e:
        failure = e
    if args.dry_run:
        print(f"(report) {docs / REPORT_NAME} from {results}")
    else:
        write_report(models, results, docs, args.skip)
    if failure is not None:
        raise failure
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"sequential_certification: error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # a log that cannot be read (rrcm's UserError names file and line), a full disk...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"sequential_certification: error: {type(e).__name__}: {first}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("sequential_certification: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)
