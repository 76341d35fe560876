#!/usr/bin/env python3
"""The MNIST study of docs/results.md, from nothing to the tables: one command, resumable.

    python experiments/mnist.py                      # every step, in order (skips what is done)
    python experiments/mnist.py --list               # the steps and whether each is done
    python experiments/mnist.py --only 'certify:rrcm-*' --dry-run   # what some steps would run
    python experiments/mnist.py --only report        # tables and plots from the committed logs

Every step is one `rrcm` command. Training, pre-training and certification resume where they
stopped (re-running a finished step is a no-op), so the script can be stopped at any point and run
again, in this session or the next. Checkpoints go to --runs (not committed); certification logs,
training times and inference costs go to results/mnist/ (committed); the report goes to
docs/results.md and docs/results/.

Settings (the issue's): train on the 17,435 complete MNIST training images, certify every 20th test
image (500) with n0 = 100, n = 10,000, alpha = 0.001, at sigma in {0.25, 0.5, 1.0}. DDS certifies every
100th test image (100): its UNet makes one run ~5x longer than the others (see docs/results.md).

rRCM is trained with the authors' recipe (the presets' defaults). The logs of rRCM trained with rrcm's
earlier recipe, and of the ablations made with it (no trajectory term, no instance term, a quarter of the
pre-training), are kept in results/mnist/logs/earlier-recipe/; they were written by this script as it
was on 2026-11-25 (commit 6e6cf9b), and docs/results.md compares them with today's.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results" / "mnist"
SIGMAS = (0.25, 0.5, 1.0)
# consistency weight per sigma: Jeong & Shin's published MNIST settings (lambda 10 at 0.25, 5 above)
LBD = {0.25: 10.0, 0.5: 5.0, 1.0: 5.0}
ABLATION_SIGMA = 0.5
CERTIFY = ["--n0", "100", "--n", "10000", "--alpha", "0.001", "--precision", "bf16", "--quiet"]
SKIP, DDS_SKIP = 20, 100
# the same ViT backbone for every ViT method: patch 7 (16 tokens), width 64, depth 4
VIT = ["--arch", "rrcm_vit", "--arch-option", "size=mnist"]
VIT_SCRATCH = ["--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "0.05", "--epochs", "30",
               "--batch-size", "128", "--warmup-epochs", "2", "--grad-clip", "3.0"]
# rrcm's earlier fine-tuning choices, together: the head on the cls token after the final LayerNorm, the
# learning rate set every step (no epoch at lr 0), gradient clipping at 3
EARLIER_FINETUNE = ["--arch-option", "feature_norm=true", "--lr-schedule", "step", "--grad-clip", "3.0"]
# rrcm's earlier pre-training choices, each an option of today's (the authors') recipe: departures 1-3 of issue 16
EARLIER_CHOICES = (("earlier-ema", ["--ema-schedule", "sigmoid"]),
                   ("earlier-instance", ["--one-sided-instance", "--view-noise", "independent"]),
                   ("earlier-curriculum", ["--curriculum", "equal-stages"]))


@dataclass
class Step:
    name: str
    argv: list[str]            # arguments of `rrcm`
    done_file: Path | None     # exists when the step has finished (None: always run, e.g. report)
    log: Path | None = None    # certification log this step writes (results/), if any
    extra: dict = field(default_factory=dict)
    consumers: list["Step"] = field(default_factory=list)  # the steps that read what this one writes


def sigma_tag(sigma: float) -> str:
    return f"s{sigma:g}"


def build_steps(runs: Path, data_root: str) -> list[Step]:
    data = ["--data", "mnist", "--data-root", data_root]
    steps: list[Step] = []

    def train(name: str, command: list[str], out_file: str = "model.safetensors") -> None:
        out = runs / name
        steps.append(Step(name, [*command, *data, "--quiet", "--out", str(out)], out / out_file))

    def certify(name: str, checkpoint: Path, skip: int = SKIP, batch: int = 1000) -> None:
        log = RESULTS / "logs" / f"{name}.tsv"
        argv = ["certify", "--checkpoint", str(checkpoint), "--data-root", data_root, "--skip", str(skip),
                "--batch-size", str(batch), *CERTIFY, "--out", str(log)]
        if name.startswith("lenet"):
            argv.append("--channels-last")
        steps.append(Step(f"certify:{name}", argv, None, log=log))

    def pretrain(name: str, *options: str) -> Path:
        train(name, ["pretrain", "--preset", "mnist-rrcm-pretrain", *options], "encoder.safetensors")
        return runs / name / "encoder.safetensors"

    def finetune(name: str, sigma: float, encoder: Path | None, *options: str) -> None:
        pretrained = ["--pretrained", str(encoder)] if encoder else ["--arch-option", "size=mnist"]
        train(name, ["finetune", "--preset", "mnist-rrcm-finetune", "--sigma", str(sigma), *pretrained, *options])
        certify(name, runs / name / "model.safetensors")

    # rRCM (pre-trained once, fine-tuned per sigma) and the baselines, sigma by sigma so that each sigma's
    # comparison is complete early: the same ViT trained from scratch with Gaussian augmentation and with
    # consistency regularisation, and LeNet (Jeong & Shin's MNIST network; 30 epochs instead of 90, CPU budget)
    encoder = pretrain("rrcm-pretrain")
    for sigma in SIGMAS:
        finetune(f"rrcm-{sigma_tag(sigma)}", sigma, encoder)
        consistency = ["--num-noise", "2", "--lbd", str(LBD[sigma]), "--eta", "0.5"]
        for method, options in (("gaussian", []), ("consistency", consistency)):
            name = f"vit-{method}-{sigma_tag(sigma)}"
            train(name, ["train", *VIT, *VIT_SCRATCH, "--method", method, "--sigma", str(sigma), *options])
            certify(name, runs / name / "model.safetensors")
        for method, preset, options in (("gaussian", "mnist-lenet", []),
                                        ("consistency", "mnist-lenet-consistency", ["--lbd", str(LBD[sigma])])):
            name = f"lenet-{method}-{sigma_tag(sigma)}"
            train(name, ["train", "--preset", preset, "--sigma", str(sigma), "--epochs", "30", *options])
            certify(name, runs / name / "model.safetensors")
        if sigma == ABLATION_SIGMA:  # the cheapest ablation, early: the same fine-tuning without pre-training
            finetune(f"ablation-no-pretraining-{sigma_tag(sigma)}", sigma, None)
    # DDS: a denoiser trained here + the same ViT backbone (no time token) trained on clean images
    train("vit-clean", ["train", "--arch", "vit", "--arch-option", "patch_size=7", *VIT_SCRATCH, "--method", "clean"])
    train("denoiser", ["train-denoiser", "--preset", "mnist-denoiser"], "denoiser.safetensors")
    for sigma in SIGMAS:
        name = f"dds-{sigma_tag(sigma)}"
        out = runs / f"{name}.safetensors"
        steps.append(Step(name, ["dds", "assemble", "--denoiser", str(runs / "denoiser" / "denoiser.safetensors"),
                                 "--classifier", str(runs / "vit-clean" / "model.safetensors"),
                                 "--sigma", str(sigma), "--out", str(out)], out))
        certify(name, out, skip=DDS_SKIP, batch=500)
    # inference cost per noise sample of each kind of base classifier (cheap: before the ablations)
    steps.append(Step("cost", ["bench", "cost", "--no-paper", "--batch-size", "1000", "--precision", "bf16",
                               "--repeats", "5", "--quiet", "--json", str(RESULTS / "cost.json"),
                               "--checkpoint", f"LeNet={runs / 'lenet-gaussian-s0.25' / 'model.safetensors'}",
                               "--checkpoint", f"ViT={runs / 'rrcm-s0.25' / 'model.safetensors'}",
                               "--checkpoint", f"DDS={runs / 'dds-s0.25.safetensors'}"],
                      RESULTS / "cost.json"))
    # the inference cost of the authors' encoder (the "cost" step above measured rrcm's earlier one)
    steps.append(Step("cost-rrcm", ["bench", "cost", "--no-paper", "--batch-size", "1000", "--precision", "bf16",
                                    "--repeats", "5", "--quiet", "--json", str(RESULTS / "cost_rrcm.json"),
                                    "--checkpoint", f"rRCM={runs / 'rrcm-s0.25' / 'model.safetensors'}"],
                      RESULTS / "cost_rrcm.json"))
    # the other ablations at the same sigma: both fine-tunings (pre-trained, from scratch) for 3 epochs instead
    # of 30, which shows whether pre-training gives a head start that long fine-tuning hides; then each of the
    # authors' pre-training choices that rrcm used to make otherwise (issue 16's departures 1-3), put back
    # to rrcm's earlier choice one at a time, pre-trained and fine-tuned as rRCM is
    tag = sigma_tag(ABLATION_SIGMA)
    brief = ["--epochs", "3", "--warmup-epochs", "0.3"]
    finetune(f"ablation-brief-finetune-{tag}", ABLATION_SIGMA, encoder, *brief)
    finetune(f"ablation-brief-finetune-no-pretraining-{tag}", ABLATION_SIGMA, None, *brief)
    finetune(f"ablation-earlier-finetune-{tag}", ABLATION_SIGMA, encoder, *EARLIER_FINETUNE)
    finetune(f"ablation-earlier-head-{tag}", ABLATION_SIGMA, encoder, *EARLIER_FINETUNE[:2])  # only the head's input
    for name, options in EARLIER_CHOICES:
        finetune(f"ablation-{name}-{tag}", ABLATION_SIGMA, pretrain(f"ablation-{name}-pretrain", *options))
    steps.append(Step("report", [], None))
    link_consumers(steps)
    return steps


def link_consumers(steps: list[Step]) -> None:
    """Record, for each step, the steps whose arguments name its output (a checkpoint read by a certification,
    an encoder read by a fine-tuning, the parts of a DDS model)."""
    producers = {str(s.done_file): s for s in steps if s.done_file is not None}
    for step in steps:
        for arg in step.argv:
            for path in {arg, arg.split("=", 1)[-1]}:  # `--checkpoint LABEL=PATH` names a path after '='
                if path in producers and producers[path] is not step and step not in producers[path].consumers:
                    producers[path].consumers.append(step)


def is_done(step: Step) -> bool:
    """A certification is done when its log is complete; any other step when its output exists, or when
    every step that reads its output is done (a checkpoint deleted after its logs were written is not
    trained again)."""
    if step.log is not None:
        settings = step.log.with_name(step.log.name + ".json")
        try:
            return step.log.exists() and json.loads(settings.read_text()).get("complete") is True
        except (OSError, json.JSONDecodeError):
            return False
    if step.done_file is not None and step.done_file.exists():
        return True
    return bool(step.consumers) and all(is_done(consumer) for consumer in step.consumers)


def run_step(step: Step, runs: Path) -> float:
    """Run one rrcm command, its output appended to <runs>/logs/<step>.out; returns its wall time."""
    out = runs / "logs" / (step.name.replace(":", "-") + ".out")
    out.parent.mkdir(parents=True, exist_ok=True)
    if step.log is not None:
        step.log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(out, "a") as stream:
        stream.write(f"$ rrcm {' '.join(step.argv)}\n")
        stream.flush()
        result = subprocess.run([sys.executable, "-m", "rrcm", *step.argv], stdout=stream, stderr=subprocess.STDOUT,
                                cwd=REPO)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        tail = out.read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise SystemExit(f"mnist.py: step {step.name} failed (exit {result.returncode}): {tail[0]}  [see {out}]")
    return seconds


def select_steps(steps: list[Step], patterns: list[str]) -> list[Step]:
    """The steps whose names match any of the glob patterns (all steps when there are none)."""
    return [s for s in steps if any(fnmatch.fnmatchcase(s.name, p) for p in patterns)] if patterns else steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(REPO.parent / "shared" / "data" / "mnist"),
                        help="folder with the MNIST idx files (default: ../shared/data/mnist)")
    parser.add_argument("--runs", default=str(REPO / "runs" / "mnist"), help="checkpoints and step outputs")
    parser.add_argument("--only", action="append", default=[], metavar="PATTERN",
                        help="run only the steps matching this glob (repeatable), e.g. 'certify:*' or report")
    parser.add_argument("--list", action="store_true", help="list the steps and whether each is done")
    parser.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    args = parser.parse_args(argv)

    runs = Path(args.runs).resolve()
    steps = build_steps(runs, args.data_root)
    steps = select_steps(steps, args.only)
    if not steps:
        parser.error(f"no step matches {args.only}; see --list")
    if args.list:
        for step in steps:
            print(f"{'done' if is_done(step) else '    '}  {step.name}")
        return 0
    needs_data = any(step.argv and not is_done(step) for step in steps)
    if needs_data and not args.dry_run and not Path(args.data_root).is_dir():
        parser.error(f"MNIST not found at {args.data_root}; give --data-root (the folder with the idx .gz files)")
    for step in steps:
        if step.name == "report":
            if args.dry_run:
                print("(report) docs/results.md from results/mnist/")
            else:
                from mnist_report import write_report  # beside this script
                write_report(runs)
            continue
        if is_done(step):
            continue
        if args.dry_run:
            print("rrcm " + " ".join(step.argv))
            continue
        print(f"[{time.strftime('%H:%M:%S')}] {step.name} ...", flush=True)
        seconds = run_step(step, runs)
        print(f"[{time.strftime('%H:%M:%S')}] {step.name} done in {seconds / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
