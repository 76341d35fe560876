"""The report step of experiments/mnist.py: docs/results.md's tables and plots, from results/mnist/.

Every table is written by `rrcm report` (the command is shown above it) or, for training time and
inference cost, from results/mnist/training.json and cost.json, which the study fills from the runs.
docs/results.md is hand-written prose around generated blocks: the text between
`<!-- begin NAME -->` and `<!-- end NAME -->` is replaced on every run, the rest is kept. Methods
whose logs are not there yet are listed as missing, so a partly finished study still reports.
"""

from __future__ import annotations

import csv
import json
import platform
import re
from pathlib import Path

from rrcm.cli import main as rrcm
from rrcm.report import radius_key

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results" / "mnist"
LOGS = RESULTS / "logs"
DOCS = REPO / "docs"
TABLES = DOCS / "results" / "mnist"
RESULTS_MD = DOCS / "results.md"
README = REPO / "README.md"
PUBLISHED = REPO.parent / "shared" / "oracle" / "certify-logs" / "mnist"

SIGMAS = ("0.25", "0.5", "1")
RADII = ",".join(f"{0.25 * i:g}" for i in range(11))  # 0, 0.25, ..., 2.5
# (label, log name pattern, training runs whose time it took, cost-table key)
METHODS = (
    ("rRCM", "rrcm-s{}", ("rrcm-pretrain", "rrcm-s{}"), "rRCM"),
    ("Consistency, ViT", "vit-consistency-s{}", ("vit-consistency-s{}",), "ViT"),
    ("Gaussian, ViT", "vit-gaussian-s{}", ("vit-gaussian-s{}",), "ViT"),
    ("Consistency, LeNet", "lenet-consistency-s{}", ("lenet-consistency-s{}",), "LeNet"),
    ("Gaussian, LeNet", "lenet-gaussian-s{}", ("lenet-gaussian-s{}",), "LeNet"),
    ("DDS (UNet + clean ViT)", "dds-s{}", ("denoiser", "vit-clean"), "DDS"),
)
PUBLISHED_METHODS = (  # the published logs: LeNet trained on all 60,000 images, certified at n = 100,000
    ("Published: Gaussian, LeNet (Cohen et al.)",
     {"0.25": "cohen/noise_0.25_3870", "0.5": "cohen/noise_0.50_1801", "1": "cohen/noise_1.00_2110"}),
    ("Published: Consistency, LeNet (Jeong & Shin)",
     {"0.25": "consistency/cohen/num_2/lbd_10.0/eta_0.5/noise_0.25_1",
      "0.5": "consistency/cohen/num_2/lbd_5.0/eta_0.5/noise_0.50_1",
      "1": "consistency/cohen/num_2/lbd_5.0/eta_0.5/noise_1.00_0"}),
)
BRIEF_FINETUNE = "ablation-brief-finetune-s0.5"  # the 3-epoch ablations are compared with this run
EARLIER = "earlier-recipe/"  # logs (and training times) of rRCM trained with rrcm's earlier recipe
ABLATIONS = (  # at sigma = 0.5, the authors' recipe
    ("rRCM (the authors' recipe)", "rrcm-s0.5"),
    ("no pre-training", "ablation-no-pretraining-s0.5"),
    ("rrcm's earlier fine-tuning (LayerNorm before the head, lr per step, clipping 3)",
     "ablation-earlier-finetune-s0.5"),
    ("rrcm's earlier head input only (LayerNorm before the head)", "ablation-earlier-head-s0.5"),
    ("rrcm's earlier EMA schedule (logistic at half of training)", "ablation-earlier-ema-s0.5"),
    ("rrcm's earlier instance term (one direction, its own noise)", "ablation-earlier-instance-s0.5"),
    ("rrcm's earlier curriculum (a third of the steps on each grid)", "ablation-earlier-curriculum-s0.5"),
    ("3 fine-tuning epochs (instead of 30)", "ablation-brief-finetune-s0.5"),
    ("3 fine-tuning epochs, no pre-training", "ablation-brief-finetune-no-pretraining-s0.5"),
)
EARLIER_ABLATIONS = (  # the same at sigma = 0.5 with rrcm's earlier recipe (results/mnist/logs/earlier-recipe/)
    ("rRCM, earlier recipe (full pre-training: 3,000 steps, both terms)", EARLIER + "rrcm-s0.5"),
    ("no trajectory term", EARLIER + "ablation-no-trajectory-s0.5"),
    ("no instance term", EARLIER + "ablation-no-instance-s0.5"),
    ("short pre-training (750 steps)", EARLIER + "ablation-short-s0.5"),
    ("no pre-training", EARLIER + "ablation-no-pretraining-s0.5"),
    ("3 fine-tuning epochs (instead of 30)", EARLIER + "ablation-brief-finetune-s0.5"),
    ("3 fine-tuning epochs, no pre-training", EARLIER + "ablation-brief-finetune-no-pretraining-s0.5"),
    ("3 fine-tuning epochs, no trajectory term", EARLIER + "ablation-brief-finetune-no-trajectory-s0.5"),
    ("3 fine-tuning epochs, no instance term", EARLIER + "ablation-brief-finetune-no-instance-s0.5"),
)
TRAINING_RUNS = ("rrcm-pretrain", "denoiser", "vit-clean", *(
    f"{name}-s{s}" for name in ("rrcm", "vit-consistency", "vit-gaussian", "lenet-consistency", "lenet-gaussian")
    for s in SIGMAS), *(f"ablation-{a}-pretrain" for a in ("earlier-ema", "earlier-instance", "earlier-curriculum")),
    *(name for _, name in ABLATIONS[1:]))


def rel(path: Path) -> str:
    """A path as written in the docs: relative to the repository, or ../shared/... for the shared data."""
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return "../" + str(path.relative_to(REPO.parent))


def log_path(name: str) -> Path:
    return LOGS / f"{name}.tsv"


def is_complete(name: str) -> bool:
    try:
        return json.loads((LOGS / f"{name}.tsv.json").read_text()).get("complete") is True
    except (OSError, json.JSONDecodeError):
        return False


def collect_training_times(runs: Path) -> dict:
    """Sum the per-epoch (per-window) seconds of each finished run's metrics.csv into training.json."""
    path = RESULTS / "training.json"
    times = json.loads(path.read_text()) if path.exists() else {}
    for name in TRAINING_RUNS:
        metrics = runs / name / "metrics.csv"
        finished = any((runs / name / f).exists() for f in ("model.safetensors", "encoder.safetensors",
                                                              "denoiser.safetensors"))
        if metrics.exists() and finished:
            with open(metrics) as stream:
                rows = list(csv.DictReader(stream))
            times[name] = {"seconds": round(sum(float(r["seconds"]) for r in rows), 1),
                           "epochs_or_steps": int(rows[-1].get("epoch") or rows[-1]["step"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(times, indent=2, sort_keys=True) + "\n")
    return times


class Block:
    """One generated block: markdown text plus the `rrcm report` commands behind it."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def report(self, name: str, items: list[str], *options: str, plot: str | None = None, title: str = "") -> None:
        """Run `rrcm report` to docs/results/mnist/<name>.md (and a plot), and show the command and table."""
        table = TABLES / f"{name}.md"
        argv = ["report", "--format", "markdown", "--radii", RADII, *options, *items, "--out", str(table)]
        if plot:
            argv += ["--plot", str(DOCS / "results" / plot), "--title", title]
        if rrcm(argv) != 0:
            raise SystemExit(f"mnist_report: rrcm report failed for {name}")
        shown = " ".join(_quote(a.replace(f"{REPO}/", "").replace(f"{REPO.parent}/", "../")) for a in argv)
        self.lines += ["```", f"rrcm {shown}", "```", "", table.read_text()]
        if plot:
            self.lines += ["", f"![{title}](results/{plot})"]
        self.lines.append("")

    def text(self, *lines: str) -> None:
        self.lines += list(lines)

    def render(self) -> str:
        return "\n".join(self.lines).strip() + "\n"


def _quote(arg: str) -> str:
    return f'"{arg}"' if re.search(r"[ ,()&;]", arg) else arg


def group(label: str, names: list[str]) -> str:
    return f"{label}=" + ",".join(str(log_path(n)) for n in names)


def available(pattern: str) -> list[str]:
    names = [pattern.format(s) for s in SIGMAS]
    return names if all(is_complete(n) for n in names) else []


def missing_note(labels: list[str]) -> list[str]:
    return [f"Not yet certified (the study is still running): {', '.join(labels)}.", ""] if labels else []


def headline_block() -> str:
    block, missing, items = Block(), [], []
    for label, pattern, _, _ in METHODS[:-1]:  # DDS certifies a smaller subset: its own table below
        names = available(pattern)
        if names:
            items.append(group(label, names))
        else:
            missing.append(label)
    for label, files in PUBLISHED_METHODS:
        if PUBLISHED.is_dir():
            items.append(f"{label}=" + ",".join(str(PUBLISHED / files[s]) for s in SIGMAS))
    block.text(*missing_note(missing))
    ours = [i for i in items if "Published" not in i]
    if ours:
        block.report("envelopes", ours, "--no-envelope",
                     plot="mnist_envelopes.png", title="MNIST: best over σ ∈ {0.25, 0.5, 1.0} (500 test images)")
    published = [i for i in items if "Published" in i]
    if published:
        block.text("The published logs on the same 500 test images (`--every 20`); their LeNets were trained on "
                   "all 60,000 images and certified at n = 100,000, which lifts the radius cap to 3.8σ:", "")
        block.report("published_envelopes", published, "--every", "20", "--no-envelope")
    return block.render()


def per_sigma_block() -> str:
    block = Block()
    for sigma in SIGMAS:
        items = [f"{label}={log_path(pattern.format(sigma))}" for label, pattern, _, _ in METHODS[:-1]
                 if is_complete(pattern.format(sigma))]
        earlier = f"{EARLIER}rrcm-s{sigma}"  # rrcm's earlier recipe (see the discussion)
        if is_complete(earlier):
            items.insert(1, f"rRCM, earlier recipe={log_path(earlier)}")
        first = f"first-recipe/rrcm-s{sigma}"  # the recipe rRCM was first run with (see the discussion)
        if is_complete(first):
            items.insert(2, f"rRCM, first recipe={log_path(first)}")
        block.text(f"**σ = {sigma}**", "")
        if items:
            block.report(f"sigma{sigma}", items, "--no-envelope", plot=f"mnist_sigma{sigma}.png",
                         title=f"MNIST, σ = {sigma} (500 test images)")
        else:
            block.text("(not yet certified)", "")
    return block.render()


def dds_block() -> str:
    block, items = Block(), []
    for label, pattern, _, _ in METHODS:
        for sigma in SIGMAS:
            if is_complete(pattern.format(sigma)):
                items.append(f"{label} (σ {sigma})={log_path(pattern.format(sigma))}")
    if not any(i.startswith("DDS") for i in items):
        return "DDS is not yet certified (the study is still running).\n"
    block.text("Every method on the 100 test images DDS certifies (every 100th; `--every 100` keeps those rows "
               "of the 500-image logs):", "")
    dds_and_rrcm = [i for i in items if i.startswith(("DDS", "rRCM"))]
    block.report("dds", dds_and_rrcm, "--every", "100", "--no-envelope", plot="mnist_dds.png",
                 title="MNIST: rRCM and DDS (100 test images)")
    return block.render()


def _ablation_table(block: Block, ablations, table: str, plot: str, title: str, short_run: str) -> None:
    """The certification table of one set of ablations and their paired differences with the full run (those
    fine-tuned for 3 epochs with the full pre-training's 3-epoch fine-tuning, where the head start shows)."""
    items, missing = [], []
    for label, name in ablations:
        (items if is_complete(name) else missing).append(f"{label}={log_path(name)}" if is_complete(name) else label)
    block.text(*missing_note(missing))
    if items:
        block.report(table, items, "--no-envelope", plot=plot, title=title)
    (full_label, full), *ablated = ablations
    brief = [(label, name) for label, name in ablated if "brief-finetune-" in name]
    pairs = [("0.5", full_label.split(" (")[0], full, label, name, 1) for label, name in ablated
             if (label, name) not in brief]
    pairs += [("0.5", f"{full_label.split(' (')[0]}, 3 epochs", short_run, label, name, 1)
              for label, name in brief if name != short_run]
    lines = difference_table(pairs)
    if lines:
        block.text("Full rRCM minus each ablation (30 fine-tuning epochs), and rRCM fine-tuned for 3 epochs minus "
                   "each ablation fine-tuned for 3 epochs; paired.", "", *lines, "", DIFFERENCE_NOTE, "")


def ablation_block() -> str:
    block = Block()
    _ablation_table(block, ABLATIONS, "ablations", "mnist_ablations.png",
                    "MNIST rRCM ablations, σ = 0.5 (500 test images)", BRIEF_FINETUNE)
    return block.render()


def earlier_recipe_block() -> str:
    """rRCM with the authors' recipe against rRCM with rrcm's earlier one, paired per σ, and the earlier
    recipe's own ablations."""
    block = Block()
    rows = [(sigma, "rRCM", f"rrcm-s{sigma}", "rRCM, earlier recipe", f"{EARLIER}rrcm-s{sigma}", 1)
            for sigma in SIGMAS]
    rows += [("0.5", "rRCM, 3 epochs", BRIEF_FINETUNE, "rRCM, earlier recipe, 3 epochs", EARLIER + BRIEF_FINETUNE, 1),
             ("0.5", "3 epochs, no pre-training", "ablation-brief-finetune-no-pretraining-s0.5",
              "3 epochs, no pre-training, earlier recipe", EARLIER + "ablation-brief-finetune-no-pretraining-s0.5", 1),
             ("0.5", "no pre-training", "ablation-no-pretraining-s0.5", "no pre-training, earlier recipe",
              EARLIER + "ablation-no-pretraining-s0.5", 1)]
    lines = difference_table(rows)
    block.text(*(lines + ["", DIFFERENCE_NOTE, ""] if lines else ["(the authors' recipe is not yet certified)", ""]))
    block.text("The earlier recipe's ablations (σ = 0.5):", "")
    _ablation_table(block, EARLIER_ABLATIONS, "ablations_earlier_recipe", "mnist_ablations_earlier_recipe.png",
                    "MNIST rRCM ablations, earlier recipe, σ = 0.5 (500 test images)", EARLIER + BRIEF_FINETUNE)
    return block.render()


CLAIM_RADII = (0.5, 0.75, 1.0, 1.5, 2.0, 2.5)
# (first, second, subset): the claims, each "first at or above second"; the LeNet pair and
# rRCM against the strongest baseline are there for the backbone question.
CLAIMS = (
    ("rRCM", "Consistency, ViT", 1),
    ("Consistency, ViT", "Gaussian, ViT", 1),
    ("Consistency, LeNet", "Gaussian, LeNet", 1),
    ("rRCM", "Consistency, LeNet", 1),
    ("rRCM", "DDS (UNet + clean ViT)", 100),
)


def _signed(difference: float, half_width: float, scale: float = 1.0, digits: int = 3) -> str:
    return f"{scale * difference:+.{digits}f} ± {scale * half_width:.{digits}f}"


def verdict(differences: list[tuple[float, float]]) -> str:
    """`holds` if no difference is negative; `fails` if one is negative beyond its interval; else a tie."""
    if all(d >= 0 for d, _ in differences):
        return "holds"
    if any(d + h < 0 for d, h in differences):
        return "fails"
    return "within noise"


def difference_cells(first, second, radii) -> tuple[int, str, list[str], str]:
    """One paired comparison of two logs: test images, the ΔACR cell, a Δ% cell per radius, the verdict."""
    from rrcm.report import paired_difference

    result = paired_difference(first, second, radii)
    acr = result["acr"]
    accuracy = [result["certified_accuracy"][radius_key(r)] for r in radii]
    judged = [(acr["difference"], acr["half_width"])] + [(a["difference"], a["half_width"]) for a in accuracy]
    return (result["n_examples"], _signed(acr["difference"], acr["half_width"]),
            [_signed(a["difference"], a["half_width"], 100, 1) for a in accuracy], verdict(judged))


def difference_table(rows: list[tuple[str, str, str, str, str, int]]) -> list[str]:
    """Markdown table of paired differences; rows are (σ, first label, first log, second label,
    second log, every-kth subset); pairs whose logs are not both complete are skipped."""
    from rrcm.certlog import every_kth, read_log

    lines = ["| σ | comparison | test images | ΔACR | " + " | ".join(f"Δ% at r={r:g}" for r in CLAIM_RADII)
             + " | verdict |", "|---:|:---|---:|---:|" + "---:|" * len(CLAIM_RADII) + ":---|"]
    for sigma, first, first_log, second, second_log, every in rows:
        if not (is_complete(first_log) and is_complete(second_log)):
            continue
        radii = [r for r in CLAIM_RADII if r < 3.2 * float(sigma)]  # beyond the cap both certify nothing
        logs = [every_kth(read_log(log_path(n), label=n), every) for n in (first_log, second_log)]
        n, acr, cells, judged = difference_cells(*logs, radii)
        cells += ["-"] * (len(CLAIM_RADII) - len(radii))
        lines.append(f"| {sigma} | {first} − {second} | {n} | {acr} | " + " | ".join(cells) + f" | {judged} |")
    return lines if len(lines) > 2 else []


DIFFERENCE_NOTE = (
    "Each cell is the mean paired difference over the same test images (first − second: ACR, and certified "
    "accuracy in percentage points) ± the half-width of its 95% interval over the choice of test images "
    "(normal approximation, `rrcm.report.paired_difference`); radii at or beyond the cap 3.2σ, where both "
    "certify nothing, are left out. Verdict on \"first at or above second\": *holds* if no difference is "
    "negative, *fails* if one is negative beyond its interval, otherwise *within noise*.")


def claims_block() -> str:
    """The issue's claims as paired differences per σ."""
    patterns = {label: pattern for label, pattern, _, _ in METHODS}
    rows = [(sigma, first, patterns[first].format(sigma), second, patterns[second].format(sigma), every)
            for sigma in SIGMAS for first, second, every in CLAIMS]
    lines = difference_table(rows)
    if not lines:
        return "No pair of methods is certified yet (the study is still running).\n"
    return "\n".join(lines + ["", DIFFERENCE_NOTE + " DDS comparisons use the 100 images DDS certifies."]) + "\n"


def cost_block(training: dict) -> str:
    cost_path = RESULTS / "cost.json"
    costs = {}
    for path in (cost_path, RESULTS / "cost_rrcm.json"):  # the second: the authors' encoder, labelled rRCM
        if path.exists():
            for row in json.loads(path.read_text())["classifiers"]:
                costs[row["label"]] = row
    lines = ["| method | σ | training (min) | params | MFLOPs / noise sample | bf16 µs / noise sample "
             "| certification s / image |", "|:---|---:|---:|---:|---:|---:|---:|"]
    from rrcm.certlog import read_log

    earlier = ("rRCM, earlier recipe", EARLIER + "rrcm-s{}", (EARLIER + "rrcm-pretrain", EARLIER + "rrcm-s{}"), "ViT")
    for label, pattern, runs, cost_key in (METHODS[0], earlier, *METHODS[1:]):
        for sigma in SIGMAS:
            name = pattern.format(sigma)
            minutes = [training.get(run.format(sigma), {}).get("seconds") for run in runs]
            train = "-" if None in minutes else " + ".join(f"{m / 60:.1f}" for m in minutes)
            cost = costs.get(cost_key)
            params = f"{cost['params'] / 1e6:.3f} M" if cost else "-"
            flops = f"{cost['flops'] / 1e6:.1f}" if cost else "-"
            micro = f"{cost['seconds_per_sample']['bf16'] * 1e6:.0f}" if cost else "-"
            seconds = f"{read_log(log_path(name)).seconds.mean():.1f}" if is_complete(name) else "-"
            lines.append(f"| {label} | {sigma} | {train} | {params} | {flops} | {micro} | {seconds} |")
    notes = ["", "Training time: sum of the epochs' (pre-training: the logging windows') wall time in each run's "
             "metrics.csv; `a + b` = pre-training (rRCM, shared by the three σ) or denoiser (DDS, shared) + "
             "fine-tuning / classifier. Params, FLOPs and µs per noise sample: `rrcm bench cost` on one checkpoint "
             "of each kind (rRCM: its σ = 0.25 model; the other ViTs: the earlier recipe's rRCM at σ = 0.25, whose "
             "backbone they share: the authors' encoder drops the time MLP and the qkv biases); FLOPs count "
             "matrix products, convolutions and attention. Certification s / image: the mean of the logs' `time` column "
             "(n0 + n = 10,100 noise samples, bf16, batch 1000 (DDS: 500), 2 threads)."]
    for path, what in ((cost_path, "Cost"), (RESULTS / "cost_rrcm.json", "rRCM's cost")):
        if path.exists():
            meta = json.loads(path.read_text())["meta"]
            notes.append(f"{what} measured {meta['date'][:10]} on {meta['cpu']}, {meta['torch_threads']} threads, "
                         f"torch {meta['torch']}.")
    return "\n".join(lines + notes) + "\n"


def setup_block() -> str:
    import torch

    seeds = sorted({json.loads(p.read_text())["settings"]["seed"] for p in LOGS.glob("*.tsv.json")})
    return "\n".join([
        f"- Machine: {platform.processor() or platform.machine()}, 2 CPU cores, no GPU; torch {torch.__version__}, "
        f"Python {platform.python_version()}.",
        "- Data: MNIST training images 0–17,434 (the complete part of the truncated training file) for every "
        "model; test images 0, 20, 40, ..., 9,980 (500) for certification, every 100th (100) for DDS.",
        "- Certification: n0 = 100, n = 10,000, α = 0.001 for every method, bf16 autocast. With n = 10,000 the "
        "largest certifiable radius is σ·Φ⁻¹(0.001^(1/10,000)) = 3.20σ (0.80, 1.60, 3.20 at σ = 0.25, 0.5, 1.0).",
        f"- Logs: `results/mnist/logs/*.tsv` (Cohen's columns first), each with its settings, checkpoint SHA-256 "
        f"and finishing time in `<log>.json`; noise seed {', '.join(map(str, seeds)) or '-'}.",
    ]) + "\n"


def replace_block(document: str, name: str, content: str) -> str:
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    if begin not in document:
        return document.rstrip() + f"\n\n{begin}\n{content}{end}\n"
    head, rest = document.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{content}{end}{tail}"


def write_report(runs: Path) -> None:
    TABLES.mkdir(parents=True, exist_ok=True)
    training = collect_training_times(runs)
    document = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Results\n"
    for name, content in (("mnist-setup", setup_block()), ("mnist-headline", headline_block()),
                          ("mnist-per-sigma", per_sigma_block()), ("mnist-dds", dds_block()),
                          ("mnist-claims", claims_block()), ("mnist-cost", cost_block(training)),
                          ("mnist-ablations", ablation_block()), ("mnist-earlier-recipe", earlier_recipe_block())):
        document = replace_block(document, name, content)
    RESULTS_MD.write_text(document)
    print(f"report: {rel(RESULTS_MD)}")
    # the README shows the headline envelopes and plot (docs/results.md has the rest)
    if README.exists() and "<!-- begin mnist-headline -->" in README.read_text():
        envelopes = TABLES / "envelopes.md"
        table = envelopes.read_text() if envelopes.exists() else "(not yet certified)\n"
        plot = "\n![MNIST envelopes](docs/results/mnist_envelopes.png)\n" if envelopes.exists() else ""
        README.write_text(replace_block(README.read_text(), "mnist-headline", table + plot))
