"""Sequential certification through the dataset runner, the CLI and the report: the log is recomputable from
its own columns, does not depend on batch size, packing, process count or resume point, and resuming under
other sequential settings is refused. (The procedure's statistics: tests/test_procedures.py.)"""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from rrcm.certlog import SEQUENTIAL_COLUMNS, read_log
from rrcm.data import load_dataset
from rrcm.errors import UserError
from rrcm.report import samples_per_certificate, summarize
from rrcm.smoothing import SequentialCertify, Smooth
from rrcm.smoothing.procedures import recompute_lower_bound
from rrcm.smoothing.runner import CertifySettings, certify_dataset, part_paths
from tests.helpers.sequential_certify import SETTINGS, Float64Linear
from tests.helpers.torchrun import REPO, torchrun
from tests.test_runner import CPU, Interrupting, log_rows

DATA = load_dataset("digits", "test")


def run(path, settings=SETTINGS, data=DATA, model=None):
    return certify_dataset(model or Float64Linear().eval(), data, settings, path, ctx=CPU, progress=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return run(tmp_path_factory.mktemp("seq") / "log.tsv")


def rows(path):
    lines = Path(path).read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]]


def test_the_log_has_every_column_and_each_row_is_the_procedure_s_certificate(reference):
    assert Path(reference).read_text().splitlines()[0].split("\t") == list(SEQUENTIAL_COLUMNS)
    smooth = Smooth(Float64Linear().eval(), 10, SETTINGS.sigma, seed=SETTINGS.seed)
    procedure = SETTINGS.certification_procedure()
    for row in rows(reference):
        i = int(row["idx"])
        cert = smooth.run(procedure, DATA[i][0], 1000, idx=i)
        assert (int(row["predict"]), float(row["radius"]), int(row["cA"]), int(row["nA"]), float(row["pA_lower"]),
                int(row["n_used"]), int(row["n0A"]), float(row["pA_upper"])) == (
            cert.prediction, cert.radius, cert.selected, cert.count_selected, cert.p_lower, cert.samples_used,
            cert.count_selection, cert.p_upper)
        assert (int(row["n0"]), int(row["n"])) == (20, 3000)


def test_every_decision_is_recomputed_from_the_log_s_own_columns(reference):
    """Independently of the runner: L from (n0A, nA, n_used) and the settings in <log>.json; abstain exactly
    when L < 1/2, else radius σ·Φ⁻¹(L); and the stopping point is one the procedure would have stopped at."""
    config = json.loads(Path(f"{reference}.json").read_text())
    settings = config["settings"]
    procedure = SequentialCertify(settings["n0"], settings["n"], settings["alpha"], radii=tuple(settings["radii"]),
                                  step=settings["step"], growth=settings["growth"],
                                  futility_alpha=settings["futility_alpha"], sequence=settings["sequence"])
    sigma = settings["sigma"]
    thresholds = norm.cdf(torch.tensor(settings["radii"], dtype=torch.float64).numpy() / sigma)
    seen = set()
    for row in rows(reference):
        lower = recompute_lower_bound(procedure, int(row["n0A"]), int(row["nA"]), int(row["n_used"]))
        assert lower == float(row["pA_lower"])
        if lower < 0.5:
            assert (int(row["predict"]), float(row["radius"])) == (-1, 0.0)
            seen.add("abstain")
        else:
            assert int(row["predict"]) == int(row["cA"])
            assert float(row["radius"]) == pytest.approx(sigma * norm.ppf(lower), rel=1e-12)
            seen.add("certify")
        upper = float(row["pA_upper"])
        settled = all(t <= lower or t > upper for t in thresholds)
        if int(row["n_used"]) < settings["n"] and settled:
            seen.add("settled early")
        elif int(row["n_used"]) < settings["n"]:
            seen.add("futile")  # stopped early with a radius open: only the futility rule does that
        else:
            seen.add("budget")
    assert {"abstain", "certify", "settled early"} <= seen
    json_procedure = config["procedure"]
    assert json_procedure == {"procedure": "sequential", "n0": 20, "n": 3000, "alpha": 0.001, "target_radius": None,
                              "radii": [0.0, 0.25, 0.5], "step": 100, "growth": 0.1, "futility_alpha": 0.01,
                              "sequence": "centred"}
    assert config["max_radius"] == pytest.approx(0.5 * norm.ppf(0.001 ** (1 / 3000)), rel=1e-12)


def test_samples_per_certificate_and_the_report_s_summary(reference):
    log = read_log(reference)
    samples = samples_per_certificate(log)
    assert list(samples) == [20 + int(r["n_used"]) for r in rows(reference)]
    summary = summarize(log, [0.0, 0.5])
    assert summary["samples_mean"] == pytest.approx(float(samples.mean()), rel=1e-15)
    ordered = sorted(int(v) for v in samples)
    assert len(ordered) == 20  # an even count: the median is the mean of the middle two
    assert summary["samples_median"] == (ordered[9] + ordered[10]) / 2


@pytest.mark.parametrize("batch_size", [7, 1000])
def test_the_log_does_not_depend_on_batch_size_or_packing(reference, tmp_path, batch_size):
    settings = dataclasses.replace(SETTINGS, batch_size=batch_size)
    assert log_rows(run(tmp_path / "log.tsv", settings)) == log_rows(reference)


def test_resume_after_interruption_gives_the_same_log(reference, tmp_path):
    path = tmp_path / "log.tsv"
    with pytest.raises(KeyboardInterrupt):
        run(path, data=Interrupting(DATA, 12))
    (part,) = part_paths(path)
    assert 1 < len(part.read_text().splitlines()) < 21  # some rows written, not all
    run(path)
    assert log_rows(path) == log_rows(reference)


SEQUENTIAL_CHANGES = [("radii", (0.0, 0.5)), ("step", 50), ("growth", 0.2), ("futility_alpha", None),
                      ("sequence", "kt"), ("n", 4000)]


def test_every_sequential_setting_is_checked_on_resume():
    from rrcm.smoothing.runner import SEQUENTIAL_RESULT_KEYS

    assert {k for k, _ in SEQUENTIAL_CHANGES} - {"n"} | {"target_radius"} == set(SEQUENTIAL_RESULT_KEYS)


@pytest.mark.parametrize("key,value", SEQUENTIAL_CHANGES + [("target_radius", 0.5)],
                         ids=[k for k, _ in SEQUENTIAL_CHANGES] + ["target_radius"])
def test_resume_with_other_sequential_settings_is_refused(key, value, tmp_path):
    path = tmp_path / "log.tsv"
    with pytest.raises(KeyboardInterrupt):
        run(path, data=Interrupting(DATA, 4))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    changes = {key: value, **({"radii": None} if key == "target_radius" else {})}
    with pytest.raises(UserError, match=f"different .*{key}"):
        run(path, dataclasses.replace(SETTINGS, **changes))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_cohen_log_written_before_procedures_existed_resumes_as_cohen(tmp_path):
    """Old <log>.json files have no "procedure": they were Cohen's, and resume as such."""
    cohen = CertifySettings(sigma=0.5, n0=20, n=300, alpha=0.001, batch_size=128, seed=5, skip=25)
    path = tmp_path / "log.tsv"
    with pytest.raises(KeyboardInterrupt):
        run(path, cohen, data=Interrupting(DATA, 4))
    config_path = Path(f"{path}.json")
    config = json.loads(config_path.read_text())
    for key in ("procedure", "target_radius", "radii", "step", "growth", "futility_alpha", "sequence"):
        del config["settings"][key]
    config_path.write_text(json.dumps(config))
    old_json = config_path.read_text()
    with pytest.raises(UserError, match=r"different n, procedure, radii, step, growth, futility_alpha, sequence;"):
        run(path, SETTINGS)  # a sequential run cannot resume it
    assert config_path.read_text() == old_json
    run(path, cohen)
    assert len(read_log(path)) == 20


def test_settings_that_cannot_work_are_refused_before_anything_is_written(tmp_path):
    for settings, message in [
        (dataclasses.replace(SETTINGS, radii=None), "exactly one of --target-radius"),
        (dataclasses.replace(SETTINGS, target_radius=1.0), "exactly one of --target-radius"),
        (dataclasses.replace(SETTINGS, step=0), "--step must be a whole number of samples, at least 1, got 0"),
        (dataclasses.replace(SETTINGS, procedure="cohen"), "--target-radius and --radii belong to --procedure "
                                                            "sequential"),
        (dataclasses.replace(SETTINGS, procedure="fast"), "unknown certification procedure 'fast'"),
    ]:
        with pytest.raises(UserError, match=message):
            run(tmp_path / "log.tsv", settings)
    assert list(tmp_path.iterdir()) == []


def test_certify_sequential_through_the_cli_and_the_report(tiny_checkpoint, tmp_path, capsys):
    from rrcm.cli import main

    out = tmp_path / "seq.tsv"
    assert main(["certify", "--checkpoint", str(tiny_checkpoint), "--precision", "fp32", "--n", "2000",
                 "--skip", "50", "--procedure", "sequential", "--target-radius", "0.5", "--step", "50",
                 "--futility-alpha", "none", "--sequence", "kt", "--out", str(out), "--quiet"]) == 0
    settings = json.loads(Path(f"{out}.json").read_text())["settings"]
    assert {k: settings[k] for k in ("procedure", "n", "target_radius", "radii", "step", "futility_alpha",
                                     "sequence")} == {"procedure": "sequential", "n": 2000, "target_radius": 0.5,
                                                      "radii": None, "step": 50, "futility_alpha": None,
                                                      "sequence": "kt"}
    log = read_log(out)
    assert len(log) == 10 and all(50 <= n <= 2000 for n in log.extras["n_used"])
    capsys.readouterr()
    assert main(["report", str(out), "--radii", "0,0.5"]) == 0
    table = capsys.readouterr().out
    mean = 100 + float(log.extras["n_used"].mean())
    assert "samples (mean)" in table.splitlines()[0] and f"{mean:,.0f}" in table.splitlines()[2]


@pytest.mark.parametrize("argv,message", [
    (["--radii", "0:1"], "cannot read radii '0:1'"),
    (["--radii", "-1"], "radii must be finite numbers >= 0"),
    (["--futility-alpha", "often"], "expected a number in (0, 1) or none"),
    (["--procedure", "fast"], "invalid choice: 'fast'"),
])
def test_bad_sequential_options_end_in_one_line(argv, message, tiny_checkpoint, tmp_path, capsys):
    from rrcm.cli import main

    assert main(["certify", "--checkpoint", str(tiny_checkpoint), "--procedure", "sequential", *argv,
                 "--out", str(tmp_path / "x.tsv")]) != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_two_processes_under_torchrun_write_the_same_log(reference, tmp_path, cli_env):
    out = tmp_path / "dist.tsv"
    torchrun([REPO / "tests" / "helpers" / "sequential_certify.py", out, 64], tmp_path / "logs", env=cli_env,
             extra_path=[REPO])
    assert log_rows(out) == log_rows(reference)
    assert json.loads(Path(f"{out}.json").read_text())["world_size"] == 2


def test_a_folder_where_a_part_file_belongs_is_one_clear_error(tmp_path):
    path = tmp_path / "log.tsv"
    Path(f"{path}.part-rank0").mkdir()
    with pytest.raises(UserError) as error:
        run(path)
    assert str(error.value) == (f"{path}.part-rank0 is not a file, but rrcm keeps a part of the log log.tsv there; "
                                "remove it or choose another --out")


def test_blank_lines_at_the_end_of_a_part_file_are_cut_before_rows_are_appended(reference, tmp_path):
    path = tmp_path / "log.tsv"
    with pytest.raises(KeyboardInterrupt):
        run(path, data=Interrupting(DATA, 4))
    (part,) = part_paths(path)
    with open(part, "a") as f:
        f.write("\n  \n")  # blank lines an editor (or a torn write) left at the end
    run(path)
    assert log_rows(path) == log_rows(reference)


# -- what the mutation run (docs/mutation.md) found open in the sequential code ------------------------------


def test_every_sequential_setting_reaches_the_procedure():
    settings = dataclasses.replace(SETTINGS, alpha=0.01, n0=30, n=5000, radii=None, target_radius=0.75, step=40,
                                   growth=0.3, futility_alpha=0.2, sequence="kt")
    assert settings.certification_procedure() == SequentialCertify(30, 5000, 0.01, target_radius=0.75, step=40,
                                                                   growth=0.3, futility_alpha=0.2, sequence="kt")
    assert dataclasses.replace(settings, futility_alpha=None).certification_procedure().futility_alpha is None


def test_a_cohen_run_with_a_sequential_goal_is_refused_in_full(tmp_path):
    for goal in ({"target_radius": 0.5, "radii": None}, {"radii": (0.0,)}):
        with pytest.raises(UserError) as error:
            run(tmp_path / "log.tsv", dataclasses.replace(SETTINGS, procedure="cohen", **goal))
        assert str(error.value) == ("--target-radius and --radii belong to --procedure sequential; Cohen's CERTIFY "
                                    "certifies whatever radius its n samples give")


def sequential_row(**changes):
    from rrcm.certlog import format_row

    row = {"idx": 0, "label": 1, "predict": 1, "radius": 0.5, "correct": 1, "time": 1.0, "cA": 1, "nA": 90,
           "n0": 100, "n": 1000, "sigma": 0.5, "alpha": 0.001, "seed": 0, "pA_lower": 0.8, "n_used": 100,
           "n0A": 95, "pA_upper": 0.95}
    row.update(changes)
    return format_row(row, SEQUENTIAL_COLUMNS)


@pytest.mark.parametrize("changes", [{"nA": 0, "predict": -1, "radius": 0.0, "correct": 0}, {"nA": 100},
                                     {"n_used": 1, "nA": 1}, {"n_used": 1000}])
def test_sequential_rows_at_the_edges_of_their_counts_are_read(changes, tmp_path):
    from rrcm.certlog import header_line

    path = tmp_path / "log.tsv"
    path.write_text(header_line(SEQUENTIAL_COLUMNS) + sequential_row(**changes))
    log = read_log(path)
    assert (int(log.extras["nA"][0]), int(log.extras["n_used"][0])) == (changes.get("nA", 90),
                                                                      changes.get("n_used", 100))


@pytest.mark.parametrize("changes,problem", [
    ({"nA": 101}, "column 'nA' must be within 0..n_used"),
    ({"nA": -1}, "column 'nA' must be within 0..n_used"),
    ({"n_used": 0, "nA": 0}, "column 'n_used' must be within 1..n"),
    ({"n_used": 1001, "nA": 90}, "column 'n_used' must be within 1..n"),
])
def test_sequential_rows_that_cannot_exist_are_refused_by_line(changes, problem, tmp_path):
    from rrcm.certlog import header_line

    path = tmp_path / "log.tsv"
    path.write_text(header_line(SEQUENTIAL_COLUMNS) + sequential_row(idx=3) + sequential_row(idx=4, **changes))
    with pytest.raises(UserError) as error:
        read_log(path)
    assert str(error.value) == f"{path}:3: {problem}; fix or regenerate the log"


def test_samples_per_certificate_of_a_cohen_log_is_n0_plus_n_and_its_summary_has_no_sample_columns(tmp_path):
    from rrcm.report import render_table

    cohen = certify_dataset(Float64Linear().eval(), DATA,
                            CertifySettings(sigma=0.5, n0=20, n=300, alpha=0.001, batch_size=128, seed=5, skip=100),
                            tmp_path / "cohen.tsv", ctx=CPU, progress=False)
    log = read_log(cohen)
    samples = samples_per_certificate(log)
    assert samples.dtype == np.int64 and list(samples) == [320] * 5
    summary = summarize(log, [0.0])
    assert "samples_mean" not in summary and "samples_median" not in summary
    assert "samples" not in render_table([summary], [0.0], fmt="csv").splitlines()[0]
    one_row = Path(tmp_path / "one.tsv")
    one_row.write_text("\t".join(SEQUENTIAL_COLUMNS) + "\n" + sequential_row())
    single = summarize(read_log(one_row), [0.0])
    assert (single["samples_mean"], single["samples_median"]) == (200.0, 200.0)
    header = render_table([single, summary], [0.0], fmt="csv").splitlines()[0]
    assert header.endswith(",seconds_per_example,samples_mean,samples_median")


@pytest.mark.parametrize("options", [{"channels_last": True}, {"precision": "bf16"}])
def test_packed_runs_in_channels_last_or_bf16_give_run_s_certificates(options):
    """Float64Linear computes in float64 whatever the layout or autocast, so the counts must agree exactly."""
    smooth = Smooth(Float64Linear().eval(), 10, 0.5, seed=5, **options)
    procedure = SETTINGS.certification_procedure()
    examples = [(i, DATA[i][0]) for i in (0, 25, 50)]
    expected = {i: smooth.run(procedure, x, 1000, idx=i) for i, x in examples}
    assert {i: cert for i, cert, _ in smooth.run_packed(procedure, examples, 64)} == expected


def test_a_packed_batch_with_nan_logits_names_its_examples():
    class NaNModel(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 10), float("nan"))

    smooth = Smooth(NaNModel(), 10, 0.5)
    with pytest.raises(UserError) as error:
        list(smooth.run_packed(SETTINGS.certification_procedure(), [(3, DATA[0][0]), (7, DATA[1][0])], 64))
    assert str(error.value) == ("the model returned NaN or infinite logits (examples 3, 7); the checkpoint is broken: "
                                "retrain it or check the input data")


def test_a_one_sample_selection_is_drawn_in_a_packed_run():
    smooth = Smooth(Float64Linear().eval(), 10, 0.5, seed=5)
    procedure = SequentialCertify(1, 300, 0.001, target_radius=0.25)
    x = DATA[0][0]
    expected = smooth.run(procedure, x, 64, idx=0)
    assert [cert for _, cert, _ in smooth.run_packed(procedure, [(0, x)], 64)] == [expected]
    assert expected.count_selection == 1


@pytest.mark.parametrize("call,message", [
    (dict(n0=0), "n0 must be at least 1, got 0"),
    (dict(n_max=0), "n_max must be at least 1, got 0"),
    (dict(batch_size=0), "batch_size must be at least 1, got 0"),
    (dict(n0=11, n_max=10), "n0 (11) is larger than n_max (10): selection should use fewer samples than estimation, "
                            "e.g. n0 = 100, n_max = 100000"),
])
def test_certify_sequential_names_the_bad_argument(call, message):
    from rrcm.smoothing.smooth import InvalidArgument

    arguments = {**dict(n0=10, n_max=1000, alpha=0.001, batch_size=100, target_radius=0.5), **call}
    with pytest.raises(InvalidArgument) as error:
        Smooth(Float64Linear().eval(), 10, 0.5).certify_sequential(DATA[0][0], **arguments)
    assert str(error.value) == message


def test_certify_sequential_takes_the_smallest_settings_that_are_allowed():
    smooth = Smooth(Float64Linear().eval(), 10, 0.5)
    # n0 == n_max == 2 (at α = 0.3 two agreeing samples can certify), batch size 1
    cert = smooth.certify_sequential(DATA[0][0], 2, 2, 0.3, 1, idx=0, target_radius=0.0)
    assert cert.samples_used == 2 and 0 <= cert.count_selection <= 2



def test_an_unknown_procedure_is_named_with_the_choices():
    from rrcm.smoothing.runner import CertifySettings

    with pytest.raises(UserError) as error:
        CertifySettings(sigma=0.25, procedure="fast").certification_procedure()
    assert str(error.value) == "unknown certification procedure 'fast'; choose cohen or sequential"


def test_the_largest_step_growth_is_allowed():
    from rrcm.smoothing.procedures import MAX_GROWTH, SequentialCertify

    SequentialCertify(100, 10_000, 0.001, target_radius=0.5, growth=MAX_GROWTH).validate(0.25)
    with pytest.raises(UserError, match="--step-growth must be a number in"):
        SequentialCertify(100, 10_000, 0.001, target_radius=0.5, growth=MAX_GROWTH * 1.01).validate(0.25)
