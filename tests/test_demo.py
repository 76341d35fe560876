"""The main job at a tiny size: train, certify, report and plot on digits."""

import json

from rrcm.certlog import read_log
from rrcm.cli import main


def check_table_numbers_against_logs(table: str, root, plan) -> None:
    """Every number of every run's row, recomputed from its log (as printed: 1 or 3 decimals)."""
    import numpy as np

    logs = {run["label"]: read_log(root / run["folder"].split("/")[-1] / "certify.tsv") for run in plan["runs"]}
    checked = set()
    for block in table.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        header_at = next(i for i, line in enumerate(lines) if line.startswith("label"))
        columns = lines[header_at].split()
        for line in lines[header_at + 2 :]:
            label = next((name for name in logs if line.startswith(name + " ")), None)
            if label is None:
                continue
            log, cells = logs[label], line[len(label):].split()
            values = dict(zip(columns[1:], cells))
            correct = log.correct == 1
            assert float(values["clean%"]) == round(100 * correct.mean(), 1)
            assert float(values["abstain%"]) == round(100 * (log.predict == -1).mean(), 1)
            assert abs(float(values["ACR"]) - (log.radius * correct).mean()) <= 5e-4
            for column, cell in values.items():
                if column.startswith("r="):
                    radius = float(column[2:])
                    assert float(cell) == round(100 * (correct & (log.radius >= radius)).mean(), 1), (label, column)
            checked.add(label)
    assert checked == set(logs)  # every run has its row


def test_quick_demo_end_to_end(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    plan = json.loads((tmp_path / "demo.json").read_text())
    assert plan["quick"] is True and len(plan["runs"]) == 4
    assert {run["method"] for run in plan["runs"]} == {"gaussian", "rrcm"}
    for run in plan["runs"]:
        log = read_log(tmp_path / run["folder"].split("/")[-1] / "certify.tsv")
        assert len(log) == 20  # every 25th of the 500 test images
        assert (log.extras["n"] == 200).all()
    table = (tmp_path / "report.txt").read_text()
    assert "envelope" in table and "rRCM" in table and "Gaussian" in table and table.strip() in out
    check_table_numbers_against_logs(table, tmp_path, plan)
    assert (tmp_path / "certified_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # running it again resumes: nothing is trained or certified twice
    assert main(["demo", "--quick", "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert "already" in capsys.readouterr().out


def test_demo_dry_run(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [r["certify"]["sigma"] for r in plan["runs"]] == [0.12, 0.12, 0.25, 0.25, 0.5, 0.5]
    assert {r["certify"]["skip"] for r in plan["runs"]} == {5}  # both methods certify the same images
    # rRCM as its authors train it: their pre-training schedules, and fine-tuning without clipping, the rate
    # set once per epoch
    rrcm = [r["train"] for r in plan["runs"] if r["method"] == "rrcm"]
    assert all(t["lr_schedule"] == "epoch" and t["grad_clip"] is None for t in rrcm)
    assert (plan["pretrain"]["ema_schedule"], plan["pretrain"]["curriculum"], plan["pretrain"]["symmetric"]) == (
        "rrcm", "rrcm", True)
    assert not (tmp_path / "d").exists()
