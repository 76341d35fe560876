#!/usr/bin/env python3
"""The CIFAR-10 study of docs/results.md (GPU): rRCM against Gaussian augmentation, same training budget.

    python experiments/cifar10.py --data-root DIR            # every step, in order (skips what is done)
    python experiments/cifar10.py --list                     # the steps and whether each is done
    python experiments/cifar10.py --dry-run                  # the commands the plan gives
    python experiments/cifar10.py --only report              # tables and plot from the committed logs

One σ (0.25). rRCM: the "cifar-small" ViT (192 wide, 6 deep, patch 4) pre-trained with
`cifar10-small-rrcm-pretrain`, then fine-tuned with the paper's CIFAR-10 fine-tuning recipe
(`cifar10-b-finetune`: consistency, m = 2, λ = 10 at σ = 0.25). Baseline: Cohen et al.'s ResNet-110 with
Gaussian augmentation (`cifar10-resnet110`). Both get the same GPU training time, --minutes each (rRCM:
two thirds pre-training, one third fine-tuning). The time is turned into steps and epochs by a short
calibration on the machine at hand (one probe run per training command); the plan is saved to
results/cifar10/plan.json and reused on every later run, so a resumed or repeated study runs the same
commands. Certification: every 100th test image (100, ten per class), n0 = 100, n = 10,000, α = 0.001
(radius capped at 3.20σ = 0.80).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist import Step, is_done, run_step, select_steps  # noqa: E402  (the same step machinery as the MNIST study)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results" / "cifar10"
PLAN = RESULTS / "plan.json"
SIGMA = 0.25
SKIP = 100
CERTIFY = ["--n0", "100", "--n", "10000", "--alpha", "0.001", "--precision", "bf16", "--quiet"]
PRETRAIN_SHARE = 2 / 3
PROBE_PRETRAIN_STEPS, PROBE_LOG_EVERY = 60, 20  # the pre-training probe: 3 timing windows
LABELS = {"rrcm-s0.25": "rRCM (cifar-small ViT)", "resnet110-gaussian-s0.25": "Gaussian, ResNet-110"}


def commands(plan: dict, runs: Path, log_every: int = 50, checkpoint_every: int = 500) -> dict[str, list[str]]:
    """The training commands of a plan (steps and epochs fixed by calibration)."""
    steps, ft_epochs, r110_epochs = plan["pretrain_steps"], plan["finetune_epochs"], plan["resnet110_epochs"]
    return {
        "rrcm-pretrain": ["pretrain", "--preset", "cifar10-small-rrcm-pretrain", "--steps", str(steps),
                          "--warmup-steps", str(max(1, steps // 20)), "--log-every", str(log_every),
                          "--checkpoint-every", str(checkpoint_every)],
        "rrcm-s0.25": ["finetune", "--preset", "cifar10-b-finetune", "--sigma", str(SIGMA),
                       "--pretrained", str(runs / "rrcm-pretrain" / "encoder.safetensors"),
                       "--epochs", str(ft_epochs), "--warmup-epochs", f"{max(0.5, ft_epochs / 10):g}"],
        "resnet110-gaussian-s0.25": ["train", "--preset", "cifar10-resnet110", "--sigma", str(SIGMA),
                                     "--epochs", str(r110_epochs), "--precision", "bf16"],
    }


def out_file(name: str) -> str:
    return "encoder.safetensors" if name.endswith("pretrain") else "model.safetensors"


def build_steps(runs: Path, data_root: str, plan: dict | None) -> list[Step]:
    data = ["--data", "cifar10", "--data-root", data_root]
    steps = [Step("calibrate", [], PLAN)]
    if plan is None:  # the training steps exist once the plan does
        return steps + [Step("report", [], None)]
    for name, argv in commands(plan, runs).items():
        out = runs / name
        steps.append(Step(name, [*argv, *data, "--quiet", "--out", str(out)], out / out_file(name)))
    for name in LABELS:
        log = RESULTS / "logs" / f"{name}.tsv"
        argv = ["certify", "--checkpoint", str(runs / name / "model.safetensors"), "--data", "cifar10",
                "--data-root", data_root, "--skip", str(SKIP), "--batch-size", "1000", *CERTIFY, "--out", str(log)]
        if name.startswith("resnet"):
            argv.append("--channels-last")
        steps.append(Step(f"certify:{name}", argv, None, log=log))
    return steps + [Step("report", [], None)]


def _window_seconds(metrics: Path) -> list[float]:
    with open(metrics) as f:
        return [float(row["seconds"]) for row in csv.DictReader(f)]


def calibrate(runs: Path, data_root: str, minutes: float) -> dict:
    """Time one short probe of each training command; turn the budget into steps and epochs."""
    data = ["--data", "cifar10", "--data-root", data_root, "--quiet"]
    probes = runs / "probes"
    shutil.rmtree(probes, ignore_errors=True)
    probe_plan = {"pretrain_steps": PROBE_PRETRAIN_STEPS, "finetune_epochs": 1, "resnet110_epochs": 1}
    argvs = commands(probe_plan, probes, log_every=PROBE_LOG_EVERY, checkpoint_every=PROBE_PRETRAIN_STEPS)
    measured = {}
    for name, argv in argvs.items():
        run_step(Step(f"probe-{name}", [*argv, *data, "--out", str(probes / name)], None), runs)
        windows = _window_seconds(probes / name / "metrics.csv")
        # pre-training: seconds per step from the windows after the first (which holds compilation/warm-up);
        # training: the one epoch's seconds (warm-up included: the plan errs on the short side)
        measured[name] = (sum(windows[1:]) / (PROBE_LOG_EVERY * len(windows[1:]))) if name.endswith("pretrain") \
            else windows[0]
    budget = 60 * minutes
    plan = {
        "minutes_per_method": minutes,
        "measured": {"pretrain_seconds_per_step": measured["rrcm-pretrain"],
                     "finetune_seconds_per_epoch": measured["rrcm-s0.25"],
                     "resnet110_seconds_per_epoch": measured["resnet110-gaussian-s0.25"]},
        "pretrain_steps": max(100, int(PRETRAIN_SHARE * budget / measured["rrcm-pretrain"])),
        "finetune_epochs": max(1, math.floor((1 - PRETRAIN_SHARE) * budget / measured["rrcm-s0.25"])),
        "resnet110_epochs": max(1, math.floor(budget / measured["resnet110-gaussian-s0.25"])),
    }
    shutil.rmtree(probes, ignore_errors=True)
    return plan


def write_training_times(runs: Path) -> None:
    """Seconds of each finished training run (sum of its metrics.csv windows) into training.json."""
    times = {}
    for name in ("rrcm-pretrain", *LABELS):
        metrics = runs / name / "metrics.csv"
        if metrics.exists():
            times[name] = round(sum(_window_seconds(metrics)), 1)
    if times:
        (RESULTS / "training.json").write_text(json.dumps(times, indent=2) + "\n")


RADII = (0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.75)


def difference_lines() -> list[str]:
    """rRCM minus the baseline on the same test images, paired, with 95% intervals."""
    from mnist_report import difference_cells  # the MNIST report's cells and verdict rule
    from rrcm.certlog import read_log

    n, acr, cells, judged = difference_cells(*(read_log(RESULTS / "logs" / f"{name}.tsv") for name in LABELS), RADII)
    first, second = LABELS.values()
    return ["| comparison | test images | ΔACR | " + " | ".join(f"Δ% at r={r:g}" for r in RADII) + " | verdict |",
            "|:---|---:|---:|" + "---:|" * len(RADII) + ":---|",
            f"| {first} − {second} | {n} | {acr} | " + " | ".join(cells) + f" | {judged} |"]


def write_report() -> None:
    """Table, plot and paired differences from the committed logs, into docs/results.md's cifar10 block."""
    from mnist_report import replace_block
    from rrcm.cli import main as rrcm

    logs = [(label, RESULTS / "logs" / f"{name}.tsv") for name, label in LABELS.items()]
    done = [f"{label}={path.relative_to(REPO)}" for label, path in logs if path.exists()]
    if len(done) < len(logs):
        print("report: the CIFAR-10 certification logs are not all there yet")
        return
    out = REPO / "docs" / "results" / "cifar10"
    out.mkdir(parents=True, exist_ok=True)
    argv = ["report", "--format", "markdown", "--radii", ",".join(f"{r:g}" for r in RADII), "--no-envelope",
            *done, "--out", "docs/results/cifar10/table.md", "--plot", "docs/results/cifar10.png",
            "--title", "CIFAR-10, σ = 0.25 (100 test images)"]
    cwd = os.getcwd()
    os.chdir(REPO)  # the paths above are relative to the repository
    try:
        code = rrcm(argv)
    finally:
        os.chdir(cwd)
    if code != 0:
        raise SystemExit("cifar10.py: report failed")
    plan = json.loads(PLAN.read_text())
    times = json.loads((RESULTS / "training.json").read_text()) if (RESULTS / "training.json").exists() else {}
    minutes = {k: f"{v / 60:.1f}" for k, v in times.items()}
    table = (out / "table.md").read_text().rstrip()
    lines = ["```", "rrcm " + " ".join(f'"{a}"' if " " in a or "=" in a else a for a in argv), "```", "",
             table, "", "![CIFAR-10, σ = 0.25](results/cifar10.png)", "",
             "Paired, on the same 100 test images:", "", *difference_lines(), "",
             f"Training: rRCM {plan['pretrain_steps']:,} pre-training steps of 512 + {plan['finetune_epochs']} "
             f"fine-tuning epochs ({minutes.get('rrcm-pretrain', '-')} + {minutes.get('rrcm-s0.25', '-')} min); "
             f"ResNet-110 {plan['resnet110_epochs']} epochs ({minutes.get('resnet110-gaussian-s0.25', '-')} min); "
             "minutes are the sums of each run's metrics.csv windows (results/cifar10/training.json), steps and "
             "epochs come from the calibration in results/cifar10/plan.json."]
    document = REPO / "docs" / "results.md"
    document.write_text(replace_block(document.read_text(), "cifar10", "\n".join(lines) + "\n"))
    readme = REPO / "README.md"  # the README shows the table and plot
    headline = table + "\n\n![CIFAR-10, σ = 0.25](docs/results/cifar10.png)\n"
    readme.write_text(replace_block(readme.read_text(), "cifar10-headline", headline))
    print("report: docs/results.md")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg"),
                        help="CIFAR-10: python batches, train/ test/ folders or train.tar.gz/test.tar.gz")
    parser.add_argument("--runs", default=str(REPO / "runs" / "cifar10"), help="checkpoints and step outputs")
    parser.add_argument("--minutes", type=float, default=6.0,
                        help="training time per method on this machine (calibration turns it into steps)")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="run only the steps matching this glob (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the steps and whether each is done")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error(f"--minutes must be > 0, got {args.minutes}")

    runs = Path(args.runs).resolve()
    plan = json.loads(PLAN.read_text()) if PLAN.exists() else None
    steps = select_steps(build_steps(runs, args.data_root, plan), args.only)
    if not steps:
        parser.error(f"no step matches {args.only}; see --list")
    if args.list or args.dry_run:
        for step in steps:
            if args.list:
                print(f"{'done' if is_done(step) else '    '}  {step.name}")
            elif step.argv and not is_done(step):
                print("rrcm " + " ".join(step.argv))
        if plan is None:
            print("(no plan yet: the calibrate step times one probe of each training command)")
        return 0
    if any(step.argv or step.name == "calibrate" for step in steps if not is_done(step)) \
            and not Path(args.data_root).exists():
        parser.error(f"CIFAR-10 not found at {args.data_root}; give --data-root")
    done_names: set[str] = set()
    while True:  # the steps after `calibrate` exist only once it has made the plan: rebuild as we go
        pending = [s for s in steps if s.name not in done_names]
        if not pending:
            break
        step = pending[0]
        done_names.add(step.name)
        if step.name == "report":
            write_training_times(runs)
            write_report()
            continue
        if is_done(step):
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {step.name} ...", flush=True)
        start = time.perf_counter()
        if step.name == "calibrate":
            RESULTS.mkdir(parents=True, exist_ok=True)
            plan = calibrate(runs, args.data_root, args.minutes)
            PLAN.write_text(json.dumps(plan, indent=2) + "\n")
            print(json.dumps(plan), flush=True)
            steps = select_steps(build_steps(runs, args.data_root, plan), args.only)
        else:
            run_step(step, runs)
        print(f"[{time.strftime('%H:%M:%S')}] {step.name} done in {(time.perf_counter() - start) / 60:.1f} min",
              flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
