"""experiments/mnist.py: the study's steps stay in step with the CLI, and its report regenerates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rrcm.certlog import LOG_COLUMNS, format_row, header_line
from rrcm.cli import main as rrcm
from tests.helpers.scripts import scripts_from



@pytest.fixture(scope="module")
def study():
    with scripts_from("experiments") as import_module:
        yield import_module("mnist"), import_module("mnist_report")


def test_steps_cover_every_method_and_sigma_with_the_issue_settings(study, tmp_path):
    mnist, _ = study
    steps = mnist.build_steps(tmp_path, "/data/mnist")
    names = [s.name for s in steps]
    assert len(names) == len(set(names))
    for method in ("rrcm", "vit-gaussian", "vit-consistency", "lenet-gaussian", "lenet-consistency", "dds"):
        for sigma in ("0.25", "0.5", "1"):
            assert f"certify:{method}-s{sigma}" in names
    for ablation in ("no-pretraining", "brief-finetune", "brief-finetune-no-pretraining", "earlier-finetune", "earlier-ema",
                     "earlier-instance", "earlier-curriculum"):
        assert f"certify:ablation-{ablation}-s0.5" in names
    for step in steps:
        if step.name.startswith("certify:"):
            argv = step.argv
            settings = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
            assert (settings["--n0"], settings["--n"], settings["--alpha"]) == ("100", "10000", "0.001")
            assert settings["--skip"] == ("100" if "dds" in step.name else "20")
            assert step.log.parent.name == "logs" and step.log.suffix == ".tsv"
        # a step runs after the steps that write what it reads
        for i, arg in enumerate(step.argv):
            if arg.endswith(".safetensors") and step.argv[i - 1] != "--out":
                writers = [s for s in steps if s.done_file == Path(arg.split("=", 1)[-1])]
                assert len(writers) == 1 and names.index(writers[0].name) < names.index(step.name), (step.name, arg)
    assert names[-1] == "report"
    assert names.index("cost") > max(names.index(f"certify:dds-s{sigma}") for sigma in ("0.25", "0.5", "1"))
    brief = steps[names.index("ablation-brief-finetune-s0.5")].argv
    assert brief[brief.index("--epochs") + 1] == "3" and "--pretrained" in brief
    # each of rrcm's earlier pre-training choices, one at a time, fine-tuned from its own encoder
    earlier = {"earlier-ema": ["--ema-schedule", "sigmoid"], "earlier-curriculum": ["--curriculum", "equal-stages"],
               "earlier-instance": ["--one-sided-instance", "--view-noise", "independent"]}
    for name, options in earlier.items():
        pretrain = steps[names.index(f"ablation-{name}-pretrain")].argv
        assert pretrain[:3] == ["pretrain", "--preset", "mnist-rrcm-pretrain"]
        assert pretrain[3:3 + len(options)] == options and "--steps" not in pretrain
        argv = steps[names.index(f"ablation-{name}-s0.5")].argv
        assert argv[argv.index("--pretrained") + 1].endswith(f"ablation-{name}-pretrain/encoder.safetensors")
        assert "--epochs" not in argv  # the full 30-epoch fine-tuning, as rRCM's
    argv = steps[names.index("ablation-earlier-finetune-s0.5")].argv  # rRCM's encoder, rrcm's earlier fine-tuning
    assert argv[argv.index("--pretrained") + 1].endswith("/rrcm-pretrain/encoder.safetensors")
    head = steps[names.index("ablation-earlier-head-s0.5")].argv  # and only its first part
    assert head[head.index("--arch-option") + 1] == "feature_norm=true" and "--lr-schedule" not in head
    start = argv.index("--arch-option")
    assert argv[start:start + 6] == ["--arch-option", "feature_norm=true", "--lr-schedule", "step", "--grad-clip", "3.0"]


def test_a_training_whose_outputs_are_all_certified_is_not_run_again(study, tmp_path):
    mnist, _ = study
    steps = {s.name: s for s in mnist.build_steps(tmp_path, "/data/mnist")}
    (tmp_path / "logs").mkdir()
    for step in steps.values():  # every log and result in tmp_path, none written: not the study's own files
        if step.log is not None:
            step.log = tmp_path / "logs" / step.log.name
        elif step.done_file is not None and mnist.RESULTS in step.done_file.parents:
            step.done_file = tmp_path / "logs" / step.done_file.name

    def write_log(step, complete):
        step.log.write_text("")
        step.log.with_name(step.log.name + ".json").write_text(json.dumps({"complete": complete}))

    train, certify = steps["vit-gaussian-s0.5"], steps["certify:vit-gaussian-s0.5"]
    assert train.consumers == [certify]
    assert not mnist.is_done(train)
    write_log(certify, complete=False)
    assert not mnist.is_done(train)  # its log is not finished: train it (or find its checkpoint)
    write_log(certify, complete=True)
    assert mnist.is_done(train) and not train.done_file.exists()
    # the pre-training is needed while any of its fine-tunings is, and not once all their logs are complete
    pretrain = steps["rrcm-pretrain"]
    finetunings = pretrain.consumers
    assert steps["rrcm-s0.5"] in finetunings and steps["ablation-earlier-head-s0.5"] in finetunings

    def finish(finetuning):  # its certification's log, and the cost measured on its checkpoint (rrcm-s0.25)
        for consumer in finetuning.consumers:
            if consumer.log is not None:
                write_log(consumer, complete=True)
            else:
                consumer.done_file.write_text("{}")

    for finetuning in finetunings[:-1]:
        finish(finetuning)
    assert not mnist.is_done(pretrain)
    finish(finetunings[-1])
    assert mnist.is_done(pretrain) and not pretrain.done_file.exists()


def test_training_steps_resolve_with_the_cli(study, tmp_path, shared_dir, capsys):
    # every training command of the study is valid as written (--dry-run resolves it on the real data)
    mnist, _ = study
    steps = mnist.build_steps(tmp_path / "runs", str(shared_dir / "data" / "mnist"))
    checked = 0
    for step in steps:
        if step.argv and step.argv[0] in ("train", "pretrain", "train-denoiser") or (
                step.argv and step.argv[0] == "finetune" and "--pretrained" not in step.argv):
            assert rrcm([*step.argv, "--dry-run"]) == 0, step.name
            resolved = json.loads(capsys.readouterr().out)
            assert resolved["data"]["name"] == "mnist" and resolved["data"]["image_size"] == 28
            checked += 1
    assert checked == 20  # 12 baselines, clean ViT, denoiser, 4 pre-trainings, 2 fine-tunings without one
    assert not (tmp_path / "runs").exists()


def fake_log(path: Path, idx: range, radius: float, sigma: float, wrong_every: int = 5) -> None:
    text = header_line()
    for i in idx:
        right = (i // 20) % wrong_every != 0
        text += format_row(dict(idx=i, label=i % 10, predict=i % 10 if right else (i + 1) % 10,
                                radius=radius, correct=int(right), time=0.5, cA=i % 10, nA=9000, n0=100, n=10000,
                                sigma=sigma, alpha=0.001, seed=0, pA_lower=0.9), LOG_COLUMNS)
    path.write_text(text)
    path.with_name(path.name + ".json").write_text(json.dumps({"complete": True, "settings": {"seed": 0}}))


def test_report_regenerates_blocks_and_keeps_the_prose(study, tmp_path, monkeypatch, capsys):
    _, report = study
    repo = tmp_path / "repo"
    logs = repo / "results" / "mnist" / "logs"
    logs.mkdir(parents=True)
    for name, value in {"REPO": repo, "RESULTS": repo / "results" / "mnist", "LOGS": logs, "DOCS": repo / "docs",
                        "TABLES": repo / "docs" / "results" / "mnist", "RESULTS_MD": repo / "docs" / "results.md",
                        "README": repo / "README.md",
                        "PUBLISHED": tmp_path / "no-published-logs"}.items():
        monkeypatch.setattr(report, name, value)
    # rRCM and Gaussian LeNet finished, the rest not yet
    for sigma, radius in (("0.25", 0.5), ("0.5", 1.0), ("1", 1.5)):
        fake_log(logs / f"rrcm-s{sigma}.tsv", range(0, 10000, 20), radius, float(sigma))
        fake_log(logs / f"lenet-gaussian-s{sigma}.tsv", range(0, 10000, 20), radius / 2, float(sigma), 4)
    (repo / "docs").mkdir()
    (repo / "docs" / "results.md").write_text("# Results\n\nHand-written.\n\n<!-- begin mnist-headline -->\nold\n"
                                              "<!-- end mnist-headline -->\n\nDiscussion stays.\n")
    (repo / "README.md").write_text("# rrcm\n<!-- begin mnist-headline -->\n<!-- end mnist-headline -->\nmore\n")
    report.write_report(tmp_path / "runs")
    capsys.readouterr()
    readme = (repo / "README.md").read_text()
    assert "| rRCM |" in readme and "mnist_envelopes.png" in readme and readme.endswith("more\n")
    document = (repo / "docs" / "results.md").read_text()
    assert "Hand-written." in document and "Discussion stays." in document and "\nold\n" not in document
    headline = document.split("<!-- begin mnist-headline -->")[1].split("<!-- end mnist-headline -->")[0]
    assert "Not yet certified" in headline and "Consistency, ViT" in headline
    rows = {line.split("|")[1].strip(): line for line in headline.splitlines() if line.startswith("| ")}
    # envelope over σ: 80% correct, certified to 1.5 by σ = 1 -> 80.0 at r = 1.5, 0 beyond
    cells = [c.strip() for c in rows["rRCM"].split("|")[1:-1]]
    assert cells[2] == "80.0" and cells[2 + 6] == "80.0" and cells[2 + 7] == "0.0"  # label, n, r=0, ...
    assert "Gaussian, LeNet" in rows and "rrcm report" in headline and "results/mnist/logs/rrcm-s0.25.tsv" in headline
    assert (repo / "docs" / "results" / "mnist_envelopes.png").exists()
    for block in ("mnist-setup", "mnist-per-sigma", "mnist-dds", "mnist-cost", "mnist-ablations"):
        assert f"<!-- begin {block} -->" in document
    # running it again changes nothing
    report.write_report(tmp_path / "runs")
    assert (repo / "docs" / "results.md").read_text() == document


def test_claims_are_paired_differences_with_verdicts(study, tmp_path, monkeypatch):
    _, report = study
    logs = tmp_path / "logs"
    logs.mkdir()
    monkeypatch.setattr(report, "LOGS", logs)
    assert "No pair" in report.claims_block()
    # on the same 500 images: rRCM 80% correct at radius 1.0, consistency ViT 75% correct at radius 0.5
    fake_log(logs / "rrcm-s0.5.tsv", range(0, 10000, 20), 1.0, 0.5)
    fake_log(logs / "vit-consistency-s0.5.tsv", range(0, 10000, 20), 0.5, 0.5, 4)
    rows = [line for line in report.claims_block().splitlines() if line.startswith("| 0.5 |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].split("|")[1:-1]]
    assert cells[1] == "rRCM − Consistency, ViT" and cells[2] == "500"
    assert cells[3].startswith("+0.425 ± ")  # 0.8 × 1.0 − 0.75 × 0.5
    assert cells[4].startswith("+5.0 ± ")  # r = 0.5: 80% against 75%
    # r = 0.75: only rRCM certifies (400 of 500): 1.96 · sd(0/1 with mean 0.8) / √500 = 3.5 points
    assert cells[5] == "+80.0 ± 3.5"
    assert cells[8:10] == ["-", "-"]  # r = 2 and 2.5 lie beyond the cap 3.2σ = 1.6
    assert cells[10] == "holds"
    assert report.verdict([(0.01, 0.02), (-0.01, 0.02)]) == "within noise"
    assert report.verdict([(0.01, 0.02), (-0.03, 0.02)]) == "fails"
