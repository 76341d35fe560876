"""Certification log format (rrcm.certlog) and reports (rrcm.report)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from rrcm.certlog import (
    COHEN_COLUMNS,
    EXTRA_COLUMNS,
    LOG_COLUMNS,
    format_row,
    header_line,
    every_kth,
    parse_time,
    read_log,
)
from rrcm.errors import UserError
from rrcm.report import (
    average_certified_radius,
    build_report,
    certified_accuracy,
    default_radii,
    envelope,
    paired_difference,
    plot_certified_accuracy,
    radius_key,
    render_table,
    summarize,
)

from tests.conftest import SHARED  # noqa: E402  (found from mutmut's copy of the tests too)
PUBLISHED = SHARED / "oracle" / "certify-logs"
ACC_FILES = sorted(PUBLISHED.rglob("*_acc")) if PUBLISHED.is_dir() else []
PUBLISHED_LOGS = (
    sorted(p for p in PUBLISHED.rglob("noise_*") if not p.name.endswith("_acc"))
    if PUBLISHED.is_dir()
    else []
)

# Four examples with known answers: certified at 0.5 and 1.25, one abstention, one wrong class.
HANDMADE = (
    "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
    "0\t1\t1\t0.5\t1\t0:00:01.000000\n"
    "1\t2\t2\t1.25\t1\t0:00:02\n"
    "2\t3\t-1\t0.0\t0\t3.5\n"
    "3\t4\t5\t0.75\t0\t1 day, 0:00:00\n"
)


def write(tmp_path: Path, text: str, name: str = "log.tsv") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def cohen_log(tmp_path: Path, name: str, rows: list[tuple]) -> Path:
    """A Cohen-format log from (idx, label, predict, radius) tuples."""
    text = header_line(COHEN_COLUMNS)
    for idx, label, predict, radius in rows:
        values = dict(idx=idx, label=label, predict=predict, radius=radius,
                      correct=int(predict == label), time=1.0)
        text += format_row(values, COHEN_COLUMNS)
    return write(tmp_path, text, name)


# ---------------------------------------------------------------------------------------------
# Published logs: reproduce the authors' own summaries exactly
# ---------------------------------------------------------------------------------------------


def read_acc(path: Path) -> tuple[list[str], list[str]]:
    lines = path.read_text().splitlines()
    radii, accuracies = zip(*(line.split("\t") for line in lines if line))
    return list(radii), list(accuracies)


def test_published_logs_present_or_skip():
    if not PUBLISHED.is_dir():
        pytest.skip(f"{PUBLISHED} absent")
    assert len(ACC_FILES) == 6 and len(PUBLISHED_LOGS) == 10


@pytest.mark.parametrize("acc_path", ACC_FILES, ids=lambda p: str(p.relative_to(PUBLISHED)))
def test_published_acc_files_reproduced(acc_path: Path):
    log = read_log(acc_path.with_name(acc_path.name[: -len("_acc")]))
    printed_radii, printed_acc = read_acc(acc_path)
    assert len(printed_radii) == 801  # 0:0.005:4.0

    # The authors' grid is k * 0.005 in floating point (np.arange), e.g. 35 * 0.005 =
    # 0.17500000000000002 > 0.175, and their numbers are reproduced exactly only on that grid.
    authors_grid = np.arange(801) * 0.005
    assert [f"{r:.5f}" for r in authors_grid] == printed_radii
    ours = certified_accuracy(log, authors_grid)
    assert [f"{a:.5f}" for a in ours] == printed_acc
    assert np.all(np.abs(ours - np.array(printed_acc, dtype=float)) < 5e-6)

    # On the exact decimal grid (r built from the printed string) the published value is lower
    # exactly where rows certified at precisely r were dropped by the drifted grid point.
    # Compared as counts of examples, which are exact integers.
    decimal_grid = np.array([float(r) for r in printed_radii])
    exact_counts = np.rint(certified_accuracy(log, decimal_grid) * len(log)).astype(int)
    printed_counts = np.rint(np.array(printed_acc, dtype=float) * len(log)).astype(int)
    certified = log.radius[log.correct == 1]
    at_boundary = np.array([np.sum(certified == r) for r in decimal_grid])
    drifted = authors_grid > decimal_grid
    assert drifted.any() and (exact_counts != printed_counts).any()
    np.testing.assert_array_equal(exact_counts - printed_counts, np.where(drifted, at_boundary, 0))


def test_published_logs_read_cleanly():
    if not PUBLISHED_LOGS:
        pytest.skip(f"{PUBLISHED} absent")
    for path in PUBLISHED_LOGS:
        log = read_log(path)
        assert len(log) == 10_000
        assert sorted(log.idx.tolist()) == list(range(10_000))
        assert log.sigma in (0.25, 0.5, 1.0)  # from the noise_<σ> file name
        assert log.extras == {}
        # Largest radius at N = 100,000, alpha = 0.001 is 3.8115 sigma; logs print 3 digits.
        assert log.radius.max() <= float(f"{3.8115 * log.sigma:.3g}")
        assert 0 < log.seconds.mean() < 60


# ---------------------------------------------------------------------------------------------
# Numbers on a handmade log
# ---------------------------------------------------------------------------------------------


def test_handmade_summary_exact(tmp_path: Path):
    log = read_log(write(tmp_path, HANDMADE, "noise_0.50"))
    np.testing.assert_array_equal(log.seconds, [1.0, 2.0, 3.5, 86400.0])
    assert log.sigma == 0.5 and log.label == f"{tmp_path.name}/noise_0.50"

    radii = [0.0, 0.5, 0.75, 1.25, 1.5]
    assert certified_accuracy(log, radii).tolist() == [0.5, 0.5, 0.25, 0.25, 0.0]
    assert average_certified_radius(log) == (0.5 + 1.25) / 4

    summary = summarize(log, radii)
    assert summary == {
        "label": f"{tmp_path.name}/noise_0.50",
        "sigma": 0.5,
        "n_examples": 4,
        "clean_accuracy": 0.5,
        "abstain_rate": 0.25,
        "acr": 0.4375,
        "certified_accuracy": {"0.0": 0.5, "0.5": 0.5, "0.75": 0.25, "1.25": 0.25, "1.5": 0.0},
        "seconds_per_example": (1.0 + 2.0 + 3.5 + 86400.0) / 4,
    }


def test_radii_helpers(tmp_path: Path):
    assert default_radii(1.0) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert default_radii(0.9) == [0.0, 0.25, 0.5, 0.75]
    assert default_radii(0.175, 0.005)[-1] == 0.175  # the decimal value, no float drift
    assert len(default_radii(4.0, 0.005)) == 801
    assert radius_key(0.7300000000000001) == "0.73"
    assert [radius_key(r) for r in (0, 0.25, 1, 0.1 + 0.2)] == ["0.0", "0.25", "1.0", "0.3"]
    with pytest.raises(UserError):
        default_radii(1.0, step=0)
    with pytest.raises(UserError, match="radii"):
        summarize(read_log(write(tmp_path, HANDMADE)), [-0.5])


def test_empty_log_has_no_summary(tmp_path: Path):
    log = read_log(write(tmp_path, header_line()))
    assert len(log) == 0 and set(log.extras) == set(EXTRA_COLUMNS)
    with pytest.raises(UserError, match="no rows"):
        summarize(log, [0.0])


# ---------------------------------------------------------------------------------------------
# Envelope
# ---------------------------------------------------------------------------------------------


def test_envelope_picks_best_per_radius(tmp_path: Path):
    # "small" is better near 0, "large" certifies further; rows in different orders on purpose.
    small_rows = [(0, 1, 1, 0.4), (1, 1, 1, 0.3), (2, 1, 1, 0.2)]
    large_rows = [(2, 1, 1, 1.5), (1, 1, -1, 0.0), (0, 1, 2, 0.9)]
    small = read_log(cohen_log(tmp_path, "small", small_rows))
    large = read_log(cohen_log(tmp_path, "large", large_rows))
    result = envelope([small, large], [0.0, 0.25, 0.5, 1.0, 2.0])
    assert result["certified_accuracy"] == {
        "0.0": 1.0, "0.25": 2 / 3, "0.5": 1 / 3, "1.0": 1 / 3, "2.0": 0.0
    }
    assert result["best_label"] == {
        "0.0": small.label, "0.25": small.label, "0.5": large.label, "1.0": large.label,
        "2.0": small.label,  # ties go to the first log
    }
    assert result["best_index"]["0.5"] == 1 and result["n_examples"] == 3
    assert "acr" not in result


def test_envelope_rejects_different_examples(tmp_path: Path):
    first = read_log(cohen_log(tmp_path, "a", [(0, 1, 1, 0.4), (1, 1, 1, 0.3)]))
    second = read_log(cohen_log(tmp_path, "b", [(0, 1, 1, 0.4), (2, 1, 1, 0.3)]))
    with pytest.raises(UserError, match="different examples"):
        envelope([first, second], [0.0])
    with pytest.raises(UserError):
        envelope([], [0.0])


# ---------------------------------------------------------------------------------------------
# Tables and plots
# ---------------------------------------------------------------------------------------------


def test_render_table_formats(tmp_path: Path):
    log = read_log(write(tmp_path, HANDMADE, "noise_0.50"), label="handmade")
    radii = [0.0, 0.5, 1.0]
    rows = [summarize(log, radii), envelope([log], radii)]

    text = render_table(rows, radii)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["label", "sigma"] and "r=0.5" in lines[0]
    assert lines[2].split()[:6] == ["handmade", "0.5", "4", "50.0", "25.0", "0.438"]
    assert len({len(line) for line in lines[:2]}) == 1  # fixed width

    markdown = render_table(rows, radii, fmt="markdown")
    assert all(line.startswith("|") and line.endswith("|") for line in markdown.splitlines())
    assert "| handmade |" in markdown

    table = list(csv.reader(io.StringIO(render_table(rows, radii, fmt="csv"))))
    assert table[0][:2] == ["label", "sigma"] and "acc@0.5" in table[0]
    assert table[1][0] == "handmade" and float(table[1][table[0].index("acr")]) == 0.4375

    parsed = json.loads(render_table(rows, radii, fmt="json"))
    assert parsed["radii"] == ["0.0", "0.5", "1.0"]
    assert parsed["rows"][0]["certified_accuracy"] == {"0.0": 0.5, "0.5": 0.5, "1.0": 0.25}
    assert parsed["rows"][0]["acr"] == 0.4375 and parsed["rows"][1]["label"] == "envelope"

    assert render_table([], radii).splitlines()[0].startswith("label")
    with pytest.raises(UserError, match="format"):
        render_table(rows, radii, fmt="html")
    with pytest.raises(UserError, match="radius 2.0"):
        render_table(rows, [2.0])


def test_build_report_adds_envelope_row(tmp_path: Path):
    first = read_log(cohen_log(tmp_path, "a", [(0, 1, 1, 0.4), (1, 1, 1, 0.3)]))
    second = read_log(cohen_log(tmp_path, "b", [(1, 1, 1, 0.9), (0, 1, 2, 0.5)]))
    parsed = json.loads(build_report([first, second], [0.0, 0.5], fmt="json"))
    assert [row["label"] for row in parsed["rows"]] == [first.label, second.label, "envelope"]
    assert parsed["rows"][2]["certified_accuracy"] == {"0.0": 1.0, "0.5": 0.5}
    assert len(json.loads(build_report([first, second], [0.0], "json", False))["rows"]) == 2
    other = read_log(cohen_log(tmp_path, "c", [(5, 1, 1, 0.4)]))
    with pytest.raises(UserError, match="no-envelope"):
        build_report([first, other], [0.0])


def test_groups_give_one_labelled_envelope_row_each(tmp_path: Path):
    # two "methods", each certified at two σ on the same examples
    a1 = read_log(cohen_log(tmp_path, "a1", [(0, 1, 1, 0.4), (1, 1, 1, 0.3)]))
    a2 = read_log(cohen_log(tmp_path, "a2", [(1, 1, 1, 0.9), (0, 1, 2, 0.5)]))
    b1 = read_log(cohen_log(tmp_path, "b1", [(0, 1, 1, 1.4), (1, 1, -1, 0.0)]))
    b2 = read_log(cohen_log(tmp_path, "b2", [(0, 1, 1, 0.2), (1, 1, 1, 0.2)]))
    parsed = json.loads(build_report([a1], [0.0, 0.5, 1.0], fmt="json", groups=[("A", [a1, a2]), ("B", [b1, b2])]))
    rows = parsed["rows"]
    assert [row["label"] for row in rows] == [a1.label, "A", "B"]  # no overall envelope beside groups
    assert rows[1]["certified_accuracy"] == {"0.0": 1.0, "0.5": 0.5, "1.0": 0.0}
    assert rows[2]["certified_accuracy"] == {"0.0": 1.0, "0.5": 0.5, "1.0": 0.5}
    assert rows[2]["best_label"]["0.0"] == b2.label and rows[2]["best_label"]["1.0"] == b1.label
    text = build_report([], [0.0, 0.5], groups=[("A", [a1, a2])])
    # an envelope has no σ, clean accuracy, abstention, ACR or time: those columns are left out
    assert text.splitlines()[0].split() == ["label", "n", "r=0.0", "r=0.5"]
    assert text.splitlines()[2].split() == ["A", "2", "100.0", "50.0"]
    mixed = build_report([a1], [0.0], fmt="markdown", groups=[("A", [a1, a2])]).splitlines()
    assert mixed[0].split(" | ")[1:3] == ["n", "clean%"]  # a Cohen log has no σ
    assert mixed[3].split(" | ")[:3] == ["| A", "2", "-"]
    other = read_log(cohen_log(tmp_path, "c", [(5, 1, 1, 0.4), (1, 1, 1, 0.3)]))
    with pytest.raises(UserError, match="different examples"):
        build_report([], [0.0], groups=[("A", [a1, other])])
    out = plot_certified_accuracy([a1], tmp_path / "groups.png", groups=[("A", [a1, a2]), ("B", [b1, b2])])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="different examples"):
        plot_certified_accuracy([], tmp_path / "bad.png", groups=[("A", [a1, other])])


def test_every_kth_keeps_the_skip_subset(tmp_path: Path):
    rows = [(i, 1, 1 if i % 3 else -1, 0.1 * i) for i in range(45)]
    log = read_log(write(tmp_path, header_line(COHEN_COLUMNS) + "".join(
        format_row(dict(idx=i, label=l, predict=p, radius=r if p >= 0 else 0.0, correct=int(p == l), time=1.0),
                   COHEN_COLUMNS) for i, l, p, r in rows), "noise_0.50"))
    subset = every_kth(log, 20)
    assert subset.idx.tolist() == [0, 20, 40] and subset.sigma == 0.5
    assert subset.predict.tolist() == [-1, 1, 1] and subset.radius.tolist() == pytest.approx([0.0, 2.0, 4.0])
    assert len(every_kth(log, 1)) == 45
    with pytest.raises(UserError, match="--every"):
        every_kth(log, 0)


def test_plot_writes_png_atomically(tmp_path: Path):
    first = read_log(cohen_log(tmp_path / "a", "noise_0.25", [(0, 1, 1, 0.4), (1, 1, 1, 0.3)]))
    second = read_log(cohen_log(tmp_path / "b", "noise_0.50", [(1, 1, 1, 0.9), (0, 1, 2, 0.5)]))
    out_dir = tmp_path / "plots"
    out = plot_certified_accuracy([first, second], out_dir / "curve.png", title="test")
    assert out == out_dir / "curve.png"
    data = out.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out_dir.iterdir()] == ["curve.png"]  # no temp file left

    third = read_log(cohen_log(tmp_path / "c", "noise_1.00", [(7, 1, 1, 0.4)]))
    with pytest.raises(UserError, match="envelope=False"):
        plot_certified_accuracy([first, third], out_dir / "mixed.png")
    plot_certified_accuracy([first, third], out_dir / "mixed.png", envelope=False, max_radius=2)
    with pytest.raises(UserError, match=".png"):
        plot_certified_accuracy([first], out_dir / "curve.txt")
    assert sorted(p.name for p in out_dir.iterdir()) == ["curve.png", "mixed.png"]


# ---------------------------------------------------------------------------------------------
# Reading errors
# ---------------------------------------------------------------------------------------------


def test_read_missing_and_empty(tmp_path: Path):
    with pytest.raises(UserError, match="not found"):
        read_log(tmp_path / "nope.tsv")
    with pytest.raises(UserError, match="empty"):
        read_log(write(tmp_path, ""))
    with pytest.raises(UserError, match="directory"):
        read_log(tmp_path)


def test_read_bad_header(tmp_path: Path):
    path = write(tmp_path, "idx\tlabel\tpredict\tcorrect\ttime\n0\t1\t1\t1\t0:00:01\n")
    with pytest.raises(UserError, match=r"log\.tsv:1: header lacks column\(s\) radius"):
        read_log(path)
    with pytest.raises(UserError, match="header lacks"):  # space-separated is not our format
        read_log(write(tmp_path, "idx label predict radius correct time\n"))


def test_read_malformed_rows_name_the_line(tmp_path: Path):
    lines = HANDMADE.splitlines(keepends=True)
    too_few = lines[:3] + ["2\t3\t-1\t0.0\t0\n"] + lines[4:]
    with pytest.raises(UserError, match=r"log\.tsv:4: row has 5 field\(s\), the header has 6"):
        read_log(write(tmp_path, "".join(too_few)))
    not_a_number = lines[:2] + [lines[2].replace("1.25", "1.2x5")] + lines[3:]
    with pytest.raises(UserError, match=r"log\.tsv:3: column 'radius' has '1\.2x5'"):
        read_log(write(tmp_path, "".join(not_a_number)))
    bad_time = lines[:5] + ["4\t1\t1\t0.1\t1\tyesterday\n"]
    with pytest.raises(UserError, match=r"log\.tsv:6: column 'time'"):
        read_log(write(tmp_path, "".join(bad_time)))
    blank_inside = lines[:2] + ["\n"] + lines[2:]
    with pytest.raises(UserError, match=r"log\.tsv:3:"):
        read_log(write(tmp_path, "".join(blank_inside)))
    inconsistent = lines[:2] + [lines[2].replace("\t1\t0:00:02", "\t0\t0:00:02")] + lines[3:]
    with pytest.raises(UserError, match=r"log\.tsv:3: column 'correct' disagrees"):
        read_log(write(tmp_path, "".join(inconsistent)))


def test_read_duplicate_idx(tmp_path: Path):
    text = HANDMADE + "1\t2\t2\t1.25\t1\t0:00:02\n"
    with pytest.raises(UserError, match=r"log\.tsv:6: idx 1 already appears on line 3"):
        read_log(write(tmp_path, text))


def test_torn_last_line(tmp_path: Path):
    path = write(tmp_path, HANDMADE + "4\t5\t5\t0.9")
    with pytest.raises(UserError, match=r"log\.tsv:6: last row is incomplete"):
        read_log(path)
    log = read_log(path, allow_partial_last_line=True)
    assert log.idx.tolist() == [0, 1, 2, 3]
    # Interrupted before the first row finished: an empty log, not an error.
    assert len(read_log(write(tmp_path, header_line() + "0\t1"), allow_partial_last_line=True)) == 0


# ---------------------------------------------------------------------------------------------
# Writing: exact round trip
# ---------------------------------------------------------------------------------------------


def test_format_row_read_log_round_trip(tmp_path: Path):
    rows = [
        dict(idx=3, label=7, predict=7, radius=0.1 + 0.2, correct=1, time=15.051764,
             cA=7, nA=99_876, n0=100, n=100_000, sigma=0.25, alpha=0.001, seed=1234,
             pA_lower=0.9987654321098765),
        dict(idx=np.int64(0), label=2, predict=-1, radius=0.0, correct=0, time=90061.5,
             cA=np.int64(4), nA=50_010, n0=100, n=100_000, sigma=np.float32(0.25), alpha=0.001,
             seed=1234, pA_lower=0.4951234567890123),
    ]
    path = write(tmp_path, header_line() + "".join(format_row(r) for r in rows))
    assert header_line().rstrip("\n").split("\t") == list(LOG_COLUMNS)
    assert "1 day, 1:01:01.500000" in path.read_text()  # Cohen's str(timedelta)

    log = read_log(path)
    assert log.columns == LOG_COLUMNS and set(log.extras) == set(EXTRA_COLUMNS)
    assert log.radius.tolist() == [0.1 + 0.2, 0.0]
    assert log.seconds.tolist() == [15.051764, 90061.5]
    assert log.extras["pA_lower"].tolist() == [0.9987654321098765, 0.4951234567890123]
    assert log.extras["nA"].dtype == np.int64 and log.extras["cA"].tolist() == [7, 4]
    assert log.sigma == 0.25  # constant sigma column
    for column in ("alpha", "seed", "n0", "n"):
        assert log.extras[column].tolist() == [rows[0][column], rows[1][column]]


def test_format_row_rejects_bad_values():
    row = dict(idx=0, label=1, predict=1, radius=0.5, correct=1, time=1.0)
    assert format_row(row, COHEN_COLUMNS) == "0\t1\t1\t0.5\t1\t0:00:01\n"
    with pytest.raises(ValueError, match="missing"):
        format_row(row)  # the extra columns are required by default
    with pytest.raises(ValueError, match="idx"):
        format_row({**row, "idx": 1.5}, COHEN_COLUMNS)
    with pytest.raises(ValueError, match="radius"):
        format_row({**row, "radius": float("nan")}, COHEN_COLUMNS)


def test_sigma_column_varies(tmp_path: Path):
    base = dict(idx=0, label=1, predict=1, radius=0.5, correct=1, time=1.0, cA=1, nA=9, n0=10,
                n=10, sigma=0.25, alpha=0.001, seed=0, pA_lower=0.6)
    text = header_line() + format_row(base) + format_row({**base, "idx": 1, "sigma": 0.5})
    assert read_log(write(tmp_path, text, "noise_0.25")).sigma is None


def test_parse_time_forms():
    assert parse_time("0:00:15.051764") == 15.051764
    assert parse_time("2 days, 1:00:00") == 2 * 86400 + 3600
    assert parse_time("1.5") == 1.5
    with pytest.raises(ValueError):
        parse_time("-1")


# The same four examples as HANDMADE, in another order, certified differently.
HANDMADE_OTHER = (
    "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
    "3\t4\t4\t1.0\t1\t1\n"
    "2\t3\t3\t0.25\t1\t1\n"
    "1\t2\t2\t1.25\t1\t1\n"
    "0\t1\t-1\t0.0\t0\t1\n"
)


def test_paired_difference_matches_hand_computation(tmp_path):
    first = read_log(write(tmp_path, HANDMADE, "a.tsv"))
    second = read_log(write(tmp_path, HANDMADE_OTHER, "b.tsv"))
    result = paired_difference(first, second, [0, 0.5], z=2.0)
    # Per idx: radius x correct is (0.5, 1.25, 0, 0) against (0, 1.25, 0.25, 1.0), so the
    # differences are (0.5, 0, -0.25, -1): mean -0.1875, sd 0.625, half width 2 * 0.625 / 2.
    assert result["n_examples"] == 4
    assert result["acr"]["difference"] == pytest.approx(-0.1875)
    assert result["acr"]["half_width"] == pytest.approx(0.625)
    # r = 0: certified (1, 1, 0, 0) against (0, 1, 1, 1); r = 0.5: (1, 1, 0, 0) against (0, 1, 0, 1).
    assert result["certified_accuracy"]["0.0"]["difference"] == pytest.approx(-0.25)
    assert result["certified_accuracy"]["0.5"]["difference"] == pytest.approx(0.0)
    assert result["certified_accuracy"]["0.5"]["half_width"] == pytest.approx(2 * np.sqrt(2 / 3) / 2)
    # The difference is antisymmetric; a log against itself differs by exactly nothing.
    reverse = paired_difference(second, first, [0, 0.5], z=2.0)
    assert reverse["acr"]["difference"] == pytest.approx(0.1875)
    same = paired_difference(first, first, [0, 0.5])
    assert same["acr"] == {"difference": 0.0, "half_width": 0.0}


def test_paired_difference_needs_the_same_examples(tmp_path):
    first = read_log(write(tmp_path, HANDMADE, "a.tsv"))
    fewer = read_log(write(tmp_path, "\n".join(HANDMADE_OTHER.splitlines()[:3]) + "\n", "b.tsv"))
    with pytest.raises(UserError, match="different examples.*paired comparison"):
        paired_difference(first, fewer, [0])
