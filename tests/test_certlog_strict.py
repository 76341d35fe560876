"""rrcm.certlog, strictly: every message a broken log gets, in full, with its file and line; the edges of
the writer's formats (times, integers, floats) and what read_log keeps of a log."""

from __future__ import annotations

import datetime
import io
import math
from pathlib import Path

import numpy as np
import pytest

from rrcm.certlog import (
    COHEN_COLUMNS,
    LOG_COLUMNS,
    every_kth,
    format_row,
    format_time,
    header_line,
    parse_time,
    read_log,
)
from rrcm.errors import UserError

from tests.test_report import HANDMADE, write

COHEN_HEADER = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
ROW = dict(idx=0, label=1, predict=1, radius=0.5, correct=1, time=1.0)
FULL_ROW = dict(ROW, cA=1, nA=9, n0=10, n=10, sigma=0.25, alpha=0.001, seed=0, pA_lower=0.6)


def read_error(path: Path, **kwargs) -> str:
    with pytest.raises(UserError) as err:
        read_log(path, **kwargs)
    return str(err.value)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def test_header_line_is_tab_separated_with_a_newline():
    assert header_line() == (
        "idx\tlabel\tpredict\tradius\tcorrect\ttime\tcA\tnA\tn0\tn\tsigma\talpha\tseed\tpA_lower\n")
    assert header_line(COHEN_COLUMNS) == COHEN_HEADER


def test_format_time_is_cohens_timedelta_text():
    assert format_time(0) == "0:00:00"
    assert format_time(0.5) == "0:00:00.500000"
    assert format_time(15.051764) == "0:00:15.051764"
    assert format_time(datetime.timedelta(days=1, seconds=1.5)) == "1 day, 0:00:01.500000"
    for bad, shown in ((-1, "-1.0"), (-0.5, "-0.5"), (math.inf, "inf"), (math.nan, "nan")):
        with pytest.raises(ValueError) as err:
            format_time(bad)
        assert str(err.value) == f"time must be a finite number of seconds >= 0, got {shown}"


def test_format_row_writes_each_kind_exactly():
    assert format_row(FULL_ROW) == "0\t1\t1\t0.5\t1\t0:00:01\t1\t9\t10\t10\t0.25\t0.001\t0\t0.6\n"
    row = dict(ROW, idx=np.int64(12), radius=0.1 + 0.2, correct=True, time=datetime.timedelta(seconds=2))
    assert format_row(row, COHEN_COLUMNS) == "12\t1\t1\t0.30000000000000004\t1\t0:00:02\n"
    assert format_row({"radius": 2, "idx": 3}, ("radius", "idx")) == "2.0\t3\n"  # in the columns' order


def test_format_row_messages():
    with pytest.raises(ValueError) as err:
        format_row(ROW)
    assert str(err.value) == ("format_row: missing columns ['cA', 'nA', 'n0', 'n', 'sigma', 'alpha', 'seed', "
                              "'pA_lower'], unknown columns []")
    with pytest.raises(ValueError) as err:
        format_row(dict(ROW, note="x"), COHEN_COLUMNS)
    assert str(err.value) == "format_row: missing columns [], unknown columns ['note']"
    cases = [
        ("idx", 1.5, "format_row: bad value for 'idx': 'float' object cannot be interpreted as an integer"),
        ("radius", math.nan, "format_row: bad value for 'radius': column 'radius' must be finite, got nan"),
        ("radius", "wide", "format_row: bad value for 'radius': could not convert string to float: 'wide'"),
        ("time", -2, "format_row: bad value for 'time': time must be a finite number of seconds >= 0, got -2.0"),
    ]
    for column, value, expected in cases:
        with pytest.raises(ValueError) as err:
            format_row(dict(ROW, **{column: value}), COHEN_COLUMNS)
        assert str(err.value) == expected


# ---------------------------------------------------------------------------------------------
# parse_time
# ---------------------------------------------------------------------------------------------


def test_parse_time_every_form():
    assert parse_time("0:00:15.051764") == 15.051764
    assert parse_time("1:02:03.25") == 3723.25
    assert parse_time("1 day, 0:00:01.5") == 86401.5
    assert parse_time("2 days, 1:02:03") == 2 * 86400 + 3723
    assert parse_time(" 0:00:02 \n") == 2.0
    assert [parse_time(t) for t in ("0", "0.5", " 1.5 ", "90061.5")] == [0.0, 0.5, 1.5, 90061.5]


@pytest.mark.parametrize("text, expected", [
    ("-1", "not a time >= 0: '-1'"), ("inf", "not a time >= 0: 'inf'"), ("nan", "not a time >= 0: 'nan'"),
    ("yesterday", "not a time: 'yesterday'"), ("1:2:3", "not a time: '1:2:3'"),
])
def test_parse_time_messages(text, expected):
    with pytest.raises(ValueError) as err:
        parse_time(text)
    assert str(err.value) == expected


# ---------------------------------------------------------------------------------------------
# Reading: what is kept
# ---------------------------------------------------------------------------------------------


def test_read_log_keeps_every_column_with_its_type(tmp_path: Path):
    text = (header_line([*COHEN_COLUMNS, "note", "score"])
            + "5\t2\t2\t0.75\t1\t0:00:03\tσ=0.25 run\t1.5\n"
            + "9\t1\t-1\t0.0\t0\t4.5\tplain\t-2\n")
    path = write(tmp_path, text, "noise_0.50")
    log = read_log(path)
    assert log.path == str(path) and log.label == f"{tmp_path.name}/noise_0.50" and len(log) == 2
    assert log.columns == (*COHEN_COLUMNS, "note", "score")
    for array, values, dtype in ((log.idx, [5, 9], np.int64), (log.labels, [2, 1], np.int64),
                                 (log.predict, [2, -1], np.int64), (log.radius, [0.75, 0.0], np.float64),
                                 (log.correct, [1, 0], np.int64), (log.seconds, [3.0, 4.5], np.float64)):
        assert array.dtype == dtype and array.tolist() == values
    assert list(log.extras) == ["note", "score"]
    assert log.extras["note"].tolist() == ["σ=0.25 run", "plain"]  # text stays text
    assert log.extras["score"].dtype == np.float64 and log.extras["score"].tolist() == [1.5, -2.0]
    assert log.sigma == 0.5  # no sigma column: from the file name
    assert read_log(path, label="mine").label == "mine"


def test_read_log_of_a_header_only(tmp_path: Path):
    log = read_log(write(tmp_path, header_line() + "\n", "noise_0.50"))  # a blank line at the end is fine
    assert len(log) == 0 and log.columns == LOG_COLUMNS
    assert log.idx.dtype == np.int64 and log.extras["nA"].dtype == np.int64
    assert log.radius.dtype == np.float64 and log.seconds.dtype == np.float64
    assert log.sigma is None  # a sigma column without rows: unknown, not the file name's 0.50


def test_read_log_sigma_from_a_one_row_column(tmp_path: Path):
    log = read_log(write(tmp_path, header_line() + format_row(FULL_ROW), "noise_0.50"))
    assert log.sigma == 0.25 and log.extras["sigma"].tolist() == [0.25]


def test_read_log_labels_a_bare_file_name_by_itself(tmp_path: Path, monkeypatch):
    write(tmp_path, HANDMADE, "log.tsv")
    monkeypatch.chdir(tmp_path)
    log = read_log("log.tsv")
    assert log.label == "log.tsv" and log.path == "log.tsv"


def test_read_log_tolerates_a_bom_spaces_and_blank_lines_at_the_end(tmp_path: Path):
    text = "\ufeff" + " idx \tlabel\tpredict\tradius\tcorrect\ttime \n" + HANDMADE.split("\n", 1)[1] + "\n  \n\n"
    log = read_log(write(tmp_path, text))
    assert log.columns == COHEN_COLUMNS and log.idx.tolist() == [0, 1, 2, 3]


def test_read_log_reads_utf8_whatever_the_locale(tmp_path: Path, monkeypatch):
    # where the locale's encoding is not UTF-8 (Windows' cp1252, Latin-1), an open() without an encoding
    # would read the BOM as "ï»¿" and σ as "Ïƒ": simulated here by that default
    path = tmp_path / "log.tsv"
    path.write_bytes(("\ufeff" + header_line([*COHEN_COLUMNS, "note"]) + "0\t1\t1\t0.5\t1\t1\tσ\n").encode("utf-8"))
    monkeypatch.setattr(io, "text_encoding", lambda encoding, stacklevel=2: encoding or "latin-1")
    log = read_log(path)
    assert log.columns == (*COHEN_COLUMNS, "note") and log.extras["note"].tolist() == ["σ"]


# ---------------------------------------------------------------------------------------------
# Reading: every message, in full
# ---------------------------------------------------------------------------------------------


def test_read_log_file_messages(tmp_path: Path):
    assert read_error(tmp_path / "nope.tsv") == f"{tmp_path / 'nope.tsv'}: certification log not found; check the path"
    assert read_error(tmp_path) == f"{tmp_path}: is a directory, expected a certification log file"
    binary = tmp_path / "log.bin"
    binary.write_bytes(b"\xff\xfe\x00idx")
    assert read_error(binary) == f"{binary}: not a text file; expected a tab-separated log"
    under_a_file = write(tmp_path, HANDMADE, "file.tsv") / "log.tsv"
    assert read_error(under_a_file) == f"{under_a_file}: cannot read certification log (Not a directory)"
    for blank in ("", " \n\n\t\n"):
        path = write(tmp_path, blank, "blank.tsv")
        assert read_error(path) == f"{path}: file is empty; expected a header line and one row per example"


def test_read_log_incomplete_last_line_messages(tmp_path: Path):
    header = write(tmp_path, COHEN_HEADER.rstrip("\n"), "header.tsv")
    assert read_error(header) == f"{header}:1: header line is incomplete (no newline); regenerate the log"
    assert read_error(header, allow_partial_last_line=True) == read_error(header)
    torn = write(tmp_path, COHEN_HEADER + "0\t1", "torn.tsv")
    assert read_error(torn) == (
        f"{torn}:2: last row is incomplete (no newline at end; the writer was interrupted?); rerun/resume "
        f"certification, or end the line if it is complete")


def test_read_log_header_messages(tmp_path: Path):
    path = write(tmp_path, "idx\tlabel\tpredict\tcorrect\n0\t1\t1\t1\n")
    assert read_error(path) == (f"{path}:1: header lacks column(s) radius, time; expected a tab-separated header "
                                f"starting with: idx label predict radius correct time")
    path = write(tmp_path, header_line([*COHEN_COLUMNS, "seed", "sigma", "seed"]))
    assert read_error(path) == f"{path}:1: header has duplicate or empty column names ['seed']"
    path = write(tmp_path, COHEN_HEADER.replace("\n", "\t\n"))  # a trailing tab: an empty last name
    assert read_error(path) == f"{path}:1: header has duplicate or empty column names []"


def test_read_log_row_messages_name_the_line(tmp_path: Path):
    rows = HANDMADE.splitlines(keepends=True)  # header and four rows, on lines 1 to 5

    def error_with_line(line_no: int, text: str) -> str:
        lines = rows[:line_no - 1] + [text] + rows[line_no:]
        return read_error(write(tmp_path, "".join(lines)))

    where = tmp_path / "log.tsv"
    assert error_with_line(4, "2\t3\t-1\t0.0\t0\n") == (
        f"{where}:4: row has 5 field(s), the header has 6; fix or regenerate the log")
    assert error_with_line(2, "1.5\t1\t1\t0.5\t1\t1\n") == (
        f"{where}:2: column 'idx' has '1.5', expected an integer; fix or regenerate the log")
    assert error_with_line(5, "3\t4\t5\tnan\t0\t1\n") == (
        f"{where}:5: column 'radius' has 'nan', expected a finite number; fix or regenerate the log")
    assert error_with_line(3, "1\t2\t2\t1.25\t1\t-1\n") == (
        f"{where}:3: column 'time' has '-1', expected a time like 0:00:15.051764 or seconds; fix or "
        f"regenerate the log")
    checks = [
        ("1\t2\t2\t1.25\t2\t1\n", "column 'correct' must be 0 or 1"),
        ("1\t2\t-2\t0.0\t0\t1\n", "column 'predict' must be a class >= 0 or -1 (abstain)"),
        ("1\t2\t2\t-0.5\t1\t1\n", "column 'radius' must be >= 0"),
        ("1\t2\t-1\t0.5\t0\t1\n", "an abstention (predict -1) must have radius 0"),
        ("1\t2\t3\t0.5\t1\t1\n", "column 'correct' disagrees with predict == label"),
        ("1\t2\t2\t0.5\t0\t1\n", "column 'correct' disagrees with predict == label"),
    ]
    for text, problem in checks:
        assert error_with_line(3, text) == f"{where}:3: {problem}; fix or regenerate the log"


def test_read_log_duplicate_idx_names_the_first_repeat_and_the_original(tmp_path: Path):
    # idx 1 on lines 2 to 5: the repeat on line 3 is reported, against line 2 (not line 4 or 5)
    text = COHEN_HEADER + "".join(f"1\t1\t1\t0.5\t1\t1\n" for _ in range(4)) + "0\t1\t1\t0.5\t1\t1\n"
    path = write(tmp_path, text)
    assert read_error(path) == (
        f"{path}:3: idx 1 already appears on line 2; each example must be certified once (remove the duplicate)")
    # two repeated examples: the smaller idx is named
    text = COHEN_HEADER + "".join(f"{i}\t1\t1\t0.5\t1\t1\n" for i in (5, 1, 1, 7, 5))
    path = write(tmp_path, text)
    assert read_error(path) == (
        f"{path}:4: idx 1 already appears on line 3; each example must be certified once (remove the duplicate)")


# ---------------------------------------------------------------------------------------------
# every_kth
# ---------------------------------------------------------------------------------------------


def test_every_kth_keeps_every_field_of_the_kept_rows(tmp_path: Path):
    rows = [dict(FULL_ROW, idx=i, predict=1 if i % 2 else -1, correct=i % 2, radius=0.5 if i % 2 else 0.0,
                 time=float(i), nA=i) for i in range(7)]
    log = read_log(write(tmp_path, header_line() + "".join(format_row(r) for r in rows)), label="seven")
    subset = every_kth(log, 3)
    assert (subset.path, subset.label, subset.sigma, subset.columns) == (log.path, "seven", 0.25, LOG_COLUMNS)
    assert subset.idx.tolist() == [0, 3, 6] and subset.labels.tolist() == [1, 1, 1]
    assert subset.predict.tolist() == [-1, 1, -1] and subset.correct.tolist() == [0, 1, 0]
    assert subset.radius.tolist() == [0.0, 0.5, 0.0] and subset.seconds.tolist() == [0.0, 3.0, 6.0]
    assert list(subset.extras) == list(log.extras) and subset.extras["nA"].tolist() == [0, 3, 6]
    with pytest.raises(UserError) as err:
        every_kth(log, 0)
    assert str(err.value) == "--every must be a positive whole number, got 0"
