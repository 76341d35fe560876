"""The main job at a tiny size: train, certify, report and plot on digits."""

import json

from rrcm.certlog import read_log
from rrcm.cli import main


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
    assert (tmp_path / "certified_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    # running it again resumes: nothing is trained or certified twice
    assert main(["demo", "--quick", "--out", str(tmp_path), "--device", "cpu"]) == 0
    assert "already" in capsys.readouterr().out


def test_demo_dry_run(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert [r["certify"]["sigma"] for r in plan["runs"]] == [0.12, 0.12, 0.25, 0.25, 0.5, 0.5]
    assert {r["certify"]["skip"] for r in plan["runs"]} == {5}  # both methods certify the same images
    assert not (tmp_path / "d").exists()
