"""benchmarks/sequential_certification.py: its numbers on small hand-built logs, exactly, and its plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rrcm.certlog import LOG_COLUMNS, SEQUENTIAL_COLUMNS, format_row, header_line, read_log
from rrcm.cli import build_parser
from tests.helpers.scripts import scripts_from

RADII = (0.0, 0.5, 1.0, 1.5)
SIGMA = 0.5

# (idx, label, predict, radius, nA, n_used) per run; sigma 0.5, so the target radius is 1.0
ROWS = {
    "cohen-seed0": [(0, 1, 1, 2.0, 100_000, None), (200, 2, 2, 0.8, 90_000, None), (400, 3, 5, 1.5, 95_000, None),
                    (600, 4, -1, 0.0, 40_000, None)],
    "cohen-seed1": [(0, 1, 1, 1.9, 99_990, None), (200, 2, 2, 1.1, 97_000, None), (400, 3, 5, 1.4, 94_000, None),
                    (600, 4, -1, 0.0, 41_000, None)],
    # rows out of idx order: every comparison aligns by idx
    "target": [(400, 3, 5, 1.1, 290, 300), (0, 1, 1, 1.2, 500, 500), (600, 4, -1, 0.0, 40, 100),
               (200, 2, 2, 0.9, 1900, 2000)],
    "grid": [(0, 1, 1, 1.6, 9900, 9900), (200, 2, 2, 0.4, 4400, 4900), (400, 3, 5, 1.2, 1850, 1900),
             (600, 4, -1, 0.0, 400, 900)],
}


@pytest.fixture(scope="module")
def bench():
    with scripts_from("benchmarks") as import_module:
        yield import_module("sequential_certification")


def write_log(path: Path, rows, sequential: bool) -> Path:
    columns = SEQUENTIAL_COLUMNS if sequential else LOG_COLUMNS
    lines = [header_line(columns)]
    for idx, label, predict, radius, count, used in rows:
        row = {"idx": idx, "label": label, "predict": predict, "radius": radius, "correct": int(predict == label),
               "time": 1.5, "cA": predict if predict >= 0 else label, "nA": count, "n0": 100, "n": 100_000,
               "sigma": SIGMA, "alpha": 0.001, "seed": 0, "pA_lower": 0.6}
        if sequential:
            row.update(n_used=used, n0A=90, pA_upper=0.99)
        lines.append(format_row(row, columns))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(lines))
    return path


def write_run(folder: Path, model: str, run: str, rows=None, complete: bool = True) -> Path:
    log = write_log(folder / f"{model}-{run}.tsv", ROWS[run] if rows is None else rows, run in ("target", "grid"))
    settings = {"target_radius": 1.0} if run == "target" else {"radii": list(RADII)} if run == "grid" else {}
    (folder / f"{model}-{run}.tsv.json").write_text(json.dumps(
        {"complete": complete, "settings": settings, "subset": {"count": 4}}))
    return log


@pytest.fixture
def logs(tmp_path):
    return {run: read_log(write_run(tmp_path, "m", run), label=run) for run in ROWS}


def test_samples_per_certificate_and_their_ratios(bench, logs):
    assert bench.sample_summary(logs["target"]) == {"mean": 825.0, "median": 500.0, "total": 3300}
    assert bench.sample_summary(logs["grid"]) == {"mean": 4500.0, "median": 3500.0, "total": 18000}
    assert bench.sample_summary(logs["cohen-seed0"])["mean"] == 100_100.0
    assert bench.sample_ratio(logs["cohen-seed0"], logs["target"]) == pytest.approx(100_100 / 825, rel=1e-15)
    assert bench.sample_ratio(logs["cohen-seed0"], logs["grid"]) == pytest.approx(100_100 / 4500, rel=1e-15)
    references, sequential = [logs["cohen-seed0"]] * 2, [logs["target"], logs["grid"]]
    # pooled: (3300 + 18000) / 8 samples on average against 100,100; the mean of the two ratios differs
    assert bench.pooled_sample_ratio(references, sequential) == pytest.approx(100_100 / 2662.5, rel=1e-15)
    assert bench.mean_of_ratios(references, sequential) == pytest.approx((100_100 / 825 + 100_100 / 4500) / 2,
                                                                          rel=1e-15)


def test_decision_agreement_at_the_target_radius_aligns_by_idx(bench, logs):
    assert bench.certified_at(logs["target"], 1.0).tolist() == [True, False, False, False]  # idx 0, 200, 400, 600
    assert bench.decision_agreement(logs["target"], logs["cohen-seed0"], 1.0) == (4, 4)
    assert bench.decision_agreement(logs["cohen-seed1"], logs["cohen-seed0"], 1.0) == (3, 4)  # idx 200: 1.1 vs 0.8
    assert bench.decision_agreement(logs["grid"], logs["cohen-seed0"], 0.5) == (3, 4)  # idx 200: 0.4 vs 0.8
    # a wrong prediction is never certified, whatever its radius (idx 400, radius 1.5 in cohen-seed0)
    assert bench.certified_at(logs["cohen-seed0"], 1.5).tolist() == [True, False, False, False]


def test_decision_agreement_refuses_logs_of_different_images(bench, logs, tmp_path):
    other = read_log(write_log(tmp_path / "other.tsv", ROWS["cohen-seed0"][:3], False))
    with pytest.raises(bench.BenchError, match="certify different images"):
        bench.decision_agreement(other, logs["cohen-seed0"], 1.0)


def test_curves_auc_and_the_grid_check(bench, logs):
    assert bench.accuracy_curve(logs["cohen-seed0"], RADII).tolist() == [0.5, 0.5, 0.25, 0.25]
    assert bench.accuracy_curve(logs["grid"], RADII).tolist() == [0.5, 0.25, 0.25, 0.25]
    assert bench.curve_auc(logs["cohen-seed0"], RADII) == 0.5625  # 0.5 * (0.5 + 0.375 + 0.25)
    assert bench.curve_auc(logs["grid"], RADII) == 0.4375
    assert bench.curve_auc(logs["cohen-seed1"], RADII) == 0.6875
    assert bench.curve_auc(logs["grid"], [1.0]) == 0.0
    assert bench.relative_difference(0.4375, 0.5625) == pytest.approx(-2 / 9, rel=1e-15)
    assert bench.relative_difference(0.0, 0.0) == 0.0
    check = bench.grid_accuracy_check(logs["grid"], logs["cohen-seed0"], logs["cohen-seed1"], RADII)
    assert check == {"max_gap": 0.25, "max_cohen_gap": 0.25, "within_points": False, "within_spread": False}
    # gaps only where the two Cohen runs differ by as much: within the spread, not within 1 point
    check = bench.grid_accuracy_check(logs["cohen-seed1"], logs["cohen-seed0"], logs["cohen-seed1"], RADII)
    assert check == {"max_gap": 0.25, "max_cohen_gap": 0.25, "within_points": False, "within_spread": True}
    check = bench.grid_accuracy_check(logs["cohen-seed0"], logs["cohen-seed0"], logs["cohen-seed1"], RADII)
    assert check["within_points"] and check["max_gap"] == 0.0


def test_model_numbers_and_cohen_p_hat(bench, logs):
    numbers = bench.model_numbers(logs, 1.0, RADII)
    assert numbers["images"] == 4
    assert numbers["agreement"] == (4, 4) and numbers["cohen_agreement"] == (3, 4)
    assert numbers["at_target"] == {"target": 0.25, "grid": 0.25, "cohen-seed0": 0.25, "cohen-seed1": 0.5}
    assert numbers["acr"]["cohen-seed0"] == pytest.approx(0.7, rel=1e-15)  # (2.0 + 0.8) / 4
    assert numbers["acr"]["grid"] == pytest.approx(0.5, rel=1e-15)  # (1.6 + 0.4) / 4
    assert numbers["auc"] == {"grid": 0.4375, "cohen-seed0": 0.5625, "cohen-seed1": 0.6875}
    # in the target log's row order (400, 0, 600, 200)
    assert bench.cohen_p_hat(logs["cohen-seed0"], logs["target"]).tolist() == [0.95, 1.0, 0.4, 0.9]


def test_timing_bookkeeping(bench, tmp_path):
    path = tmp_path / "timing.json"
    bench.record_timing(path, "m-target", 10.0, 3, "CPU A (avx512_bf16)")
    entry = bench.record_timing(path, "m-target", 2.5, 1, "CPU B (no avx512_bf16, no AMX)")
    assert entry == {"seconds": 12.5, "certificates": 4, "invocations": 2,
                     "cpu": "CPU A (avx512_bf16) + CPU B (no avx512_bf16, no AMX)"}
    bench.record_timing(path, "m-cohen-seed0", 100.0, 4, "CPU A (avx512_bf16)")
    timing = json.loads(path.read_text())
    assert bench.seconds_per_certificate(timing, ["m-target"]) == 3.125
    assert bench.seconds_per_certificate(timing, ["m-target", "m-cohen-seed0"]) == 112.5 / 8
    assert bench.seconds_per_certificate(timing, ["m-target", "m-grid"]) is None


def test_run_status_counts_part_files_and_complete_logs(bench, tmp_path):
    log = tmp_path / "m-grid.tsv"
    assert bench.run_status(log, 200) == "not run"
    write_log(Path(f"{log}.part-rank0"), ROWS["grid"][:2], True)
    part1 = write_log(Path(f"{log}.part-rank1"), ROWS["grid"][2:3], True)
    with open(part1, "a") as f:
        f.write("600\t4\t-1")  # a torn last line: not counted
    Path(f"{log}.part-rank2").write_text("")
    assert bench.rows_done(log) == 3
    assert bench.run_status(log, 200) == "incomplete (3 of 50 images)"  # no .json: 10,000 / 200
    (tmp_path / "m-grid.tsv.json").write_text(json.dumps({"complete": False, "subset": {"count": 4}}))
    assert bench.run_status(log, 200) == "incomplete (3 of 4 images)"
    for part in tmp_path.glob("*.part-rank*"):
        part.unlink()
    write_run(tmp_path, "m", "grid")
    assert bench.run_status(log, 200) == "complete" and bench.rows_done(log) == 4


def test_report_from_logs_pools_complete_models_only(bench, tmp_path):
    logs_dir, docs = tmp_path / "results" / "logs", tmp_path / "docs"
    for run in ROWS:
        write_run(logs_dir, "m", run)
    write_run(logs_dir, "half", "target")
    write_log(logs_dir / "half-cohen-seed0.tsv.part-rank0", ROWS["cohen-seed0"][:1], False)  # interrupted
    (logs_dir / "half-cohen-seed0.tsv.json").write_text(json.dumps({"complete": False, "subset": {"count": 4}}))
    models = {name: bench.ModelSpec(name, SIGMA, tmp_path / f"{name}.safetensors", tmp_path / name / "model.safetensors")
              for name in ("m", "half")}
    bench.write_report(models, tmp_path / "results", docs, 200)
    text = (docs / "sequential.md").read_text()
    assert (docs / "sequential_samples.png").stat().st_size > 0
    assert "| half | 0.5 | complete | not run | incomplete (1 of 4 images) | not run |  |" in text
    assert "Over the 1 complete model(s), 4 images:" in text
    assert "121.3× (pooled means, the headline; mean of the per-model ratios 121.3×): **pass**" in text
    assert "100.0% against 75.0% (pooled): **pass**" in text
    assert "Grid mode ≥ 10× fewer samples: 22.2× (pooled; mean of ratios 22.2×): **pass**" in text
    assert "largest gap 25.0 points, largest Cohen-vs-Cohen gap 25.0; within 1 point: no, within the spread: no: " \
           "**FAIL**" in text
    assert "largest relative difference 22.22%: **FAIL**" in text
    assert "target –, grid –: not evaluated" in text  # no timing.json
    assert "| m | 0–1.5 (4) | 25.0 | 25.0 | 0.4375 | 0.5625 | 0.6875 | -22.22% | +22.22% | 0.500 | 0.700 |" in text
    assert "fixed-n cap (3.81σ at n = 100,000, α = 0.001)" in text


def test_dry_run_lists_one_models_commands_in_order(bench, tmp_path, capsys):
    runs = tmp_path / "runs"
    checkpoint = tmp_path / "results" / "checkpoints" / "lenet-consistency-s0.5.safetensors"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")  # a dry run reads nothing
    assert bench.main(["--dry-run", "--no-train", "--models", "rrcm-s1,lenet-consistency-s0.5", "--runs", str(runs),
                       "--results", str(tmp_path / "results"), "--docs", str(tmp_path / "docs")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"rrcm-s1: no checkpoint at {tmp_path / 'results' / 'checkpoints' / 'rrcm-s1.safetensors'} "
                        f"or {runs / 'rrcm-s1' / 'model.safetensors'}; skipped (--no-train)")
    commands = [line for line in lines if line.startswith("rrcm ")]
    assert len(commands) == 4 and lines[-1].startswith("(report) ")
    logs = tmp_path / "results" / "logs"
    expected = [("target", ["--procedure", "sequential", "--target-radius", "1", "--seed", "2"]),
                ("grid", ["--procedure", "sequential", "--radii", "0:1.5:0.25", "--seed", "2"]),
                ("cohen-seed0", ["--seed", "0"]), ("cohen-seed1", ["--seed", "1"])]
    for command, (run, options) in zip(commands, expected):
        argv = command.split()[1:]
        assert argv == ["certify", "--checkpoint", str(checkpoint), "--data-root", argv[4], "--skip", "200",
                        "--n0", "100", "--n", "100000", "--alpha", "0.001", "--batch-size", "1000",
                        "--precision", "bf16", *options, "--quiet", "--channels-last",
                        "--out", str(logs / f"lenet-consistency-s0.5-{run}.tsv")]
        build_parser().parse_args(argv)  # valid `rrcm certify` options
    assert sorted(p.name for p in (tmp_path / "results").rglob("*")) == ["checkpoints", checkpoint.name]
    assert not (tmp_path / "docs").exists()
    assert bench.grid_radii(0.5) == (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
    assert bench.grid_radii(0.25) == (0.0, 0.25, 0.5, 0.75) and len(bench.grid_radii(1.0)) == 13
