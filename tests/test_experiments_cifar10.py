"""experiments/cifar10.py: the plan turns into valid commands, and the report regenerates from logs."""

from __future__ import annotations

import json

import pytest

from rrcm.cli import main as rrcm
from tests.helpers.scripts import scripts_from

PLAN = {"minutes_per_method": 6.0, "pretrain_steps": 1607, "finetune_epochs": 38, "resnet110_epochs": 24}


@pytest.fixture(scope="module")
def cifar10():
    with scripts_from("experiments") as import_module:
        yield import_module("cifar10")


def test_steps_follow_the_plan(cifar10, tmp_path):
    assert [s.name for s in cifar10.build_steps(tmp_path, "/data", None)] == ["calibrate", "report"]
    steps = {s.name: s.argv for s in cifar10.build_steps(tmp_path, "/data", PLAN)}
    assert list(steps) == ["calibrate", "rrcm-pretrain", "rrcm-s0.25", "resnet110-gaussian-s0.25",
                           "certify:rrcm-s0.25", "certify:resnet110-gaussian-s0.25", "report"]
    pretrain, finetune, resnet = steps["rrcm-pretrain"], steps["rrcm-s0.25"], steps["resnet110-gaussian-s0.25"]
    assert pretrain[pretrain.index("--steps") + 1] == "1607" and pretrain[pretrain.index("--warmup-steps") + 1] == "80"
    assert finetune[finetune.index("--epochs") + 1] == "38" and finetune[finetune.index("--warmup-epochs") + 1] == "3.8"
    assert finetune[finetune.index("--pretrained") + 1] == str(tmp_path / "rrcm-pretrain" / "encoder.safetensors")
    assert resnet[resnet.index("--epochs") + 1] == "24" and resnet[resnet.index("--precision") + 1] == "bf16"
    for name in ("certify:rrcm-s0.25", "certify:resnet110-gaussian-s0.25"):
        argv = steps[name]
        settings = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--")}
        assert (settings["--n0"], settings["--n"], settings["--alpha"], settings["--skip"]) == \
            ("100", "10000", "0.001", "100")


def test_plan_commands_resolve_with_the_cli(cifar10, tmp_path, shared_dir, capsys):
    # the pre-training and ResNet commands as the plan writes them are valid on the real CIFAR-10 copy
    data_root = shared_dir / "data" / "cifar10-jpeg"
    if not data_root.is_dir():
        pytest.skip("no CIFAR-10 copy")
    steps = {s.name: s for s in cifar10.build_steps(tmp_path / "runs", str(data_root), PLAN)}
    for name in ("rrcm-pretrain", "resnet110-gaussian-s0.25"):
        assert rrcm([*steps[name].argv, "--dry-run"]) == 0
        resolved = json.loads(capsys.readouterr().out)
        assert resolved["data"]["name"] == "cifar10" and resolved["data"]["image_size"] == 32
    assert not (tmp_path / "runs").exists()


def test_report_from_the_committed_logs_is_what_the_docs_show(cifar10, tmp_path, monkeypatch, capsys):
    # regenerate into a copy of docs/results.md: the cifar10 block comes out as committed, the prose stays
    repo = tmp_path / "repo"
    (repo / "docs").mkdir(parents=True)
    committed = (cifar10.REPO / "docs" / "results.md").read_text()
    (repo / "docs" / "results.md").write_text(committed)
    readme = (cifar10.REPO / "README.md").read_text()
    (repo / "README.md").write_text(readme)
    (repo / "results").symlink_to(cifar10.REPO / "results")
    monkeypatch.setattr(cifar10, "REPO", repo)
    monkeypatch.setattr(cifar10, "RESULTS", repo / "results" / "cifar10")
    monkeypatch.setattr(cifar10, "PLAN", repo / "results" / "cifar10" / "plan.json")
    cifar10.write_report()
    capsys.readouterr()
    assert (repo / "docs" / "results.md").read_text() == committed
    assert (repo / "README.md").read_text() == readme and "cifar10.png" in readme
    table = (repo / "docs" / "results" / "cifar10" / "table.md").read_text()
    assert "| rRCM (cifar-small ViT) | 0.25 | 100 | 55.0 |" in table
    assert "| Gaussian, ResNet-110 | 0.25 | 100 | 71.0 |" in table
    # the paired difference at r = 0 is exact: 55 - 71 = -16 points
    assert "-16.0 ±" in committed.split("<!-- begin cifar10 -->")[1]
