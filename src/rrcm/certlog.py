"""The certification log: one tab-separated row per example.

Cohen et al.'s six columns come first, so their analysis scripts (and every published log) stay
compatible; our extra columns follow, so the statistics can be recomputed offline:

    idx label predict radius correct time  cA nA n0 n sigma alpha seed pA_lower

- `predict` = -1 means abstain (radius 0); `correct` is 0/1 and equals `predict == label`.
- `time` is Cohen's `str(datetime.timedelta)` (e.g. `0:00:15.051764`, `1 day, 0:00:01.500000`);
  plain float seconds are accepted when reading.
- `cA` is the class selected with the n0 selection samples (kept when predict = -1), `nA` the count
  of cA among the n estimation samples, `pA_lower` its one-sided Clopper-Pearson lower bound.

A sequential certification (`rrcm certify --procedure sequential`) writes three more columns, after all
of these: `n_used`, the estimation samples it actually drew (`n` is then its budget and `nA` counts cA
among the `n_used`), `n0A`, the count of cA among the n0 selection samples (its confidence sequence may
depend on it), and `pA_upper`, the sequence's upper bound at stopping (it only decided when to stop).
`pA_lower` is then the sequence's lower bound, recomputable from (n0A, nA, n_used) and the settings
in `<log>.json`.

The writer lives in the runner; it builds rows with `header_line` and `format_row` from here.
"""

from __future__ import annotations

import datetime
import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from rrcm.errors import UserError

COHEN_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
EXTRA_COLUMNS = ("cA", "nA", "n0", "n", "sigma", "alpha", "seed", "pA_lower")
LOG_COLUMNS = COHEN_COLUMNS + EXTRA_COLUMNS
SEQUENTIAL_COLUMNS = LOG_COLUMNS + ("n_used", "n0A", "pA_upper")

INT_COLUMNS = frozenset({"idx", "label", "predict", "correct", "cA", "nA", "n0", "n", "seed", "n_used", "n0A"})
FLOAT_COLUMNS = frozenset({"radius", "sigma", "alpha", "pA_lower", "pA_upper"})
TIME_COLUMN = "time"

ABSTAIN = -1

# str(timedelta): "[D day[s], ]H:MM:SS[.ffffff]".
_TIMEDELTA_RE = re.compile(r"^(?:(\d+) days?, )?(\d+):(\d\d):(\d\d(?:\.\d+)?)$")
# Fallback for sigma: "noise_0.50", "noise_0.25_3870", "noise_1.00_0" (Cohen's / Jeong's naming).
_NOISE_NAME_RE = re.compile(r"(?:^|[^A-Za-z0-9])noise_(\d+(?:\.\d+)?)(?![\d.])")


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def header_line(columns: Sequence[str] = LOG_COLUMNS) -> str:
    """The header line (with "\\n") for a log with these columns (default: all of LOG_COLUMNS)."""
    return "\t".join(columns) + "\n"


def format_time(seconds: float | datetime.timedelta) -> str:
    """Cohen's time format, `str(timedelta)`, e.g. `0:00:15.051764` (microsecond resolution)."""
    if isinstance(seconds, datetime.timedelta):
        seconds = seconds.total_seconds()
    seconds = float(seconds)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"time must be a finite number of seconds >= 0, got {seconds!r}")
    return str(datetime.timedelta(seconds=seconds))


def _format_value(column: str, value) -> str:
    if column == TIME_COLUMN:
        return format_time(value)
    if column in INT_COLUMNS:
        # operator.index refuses floats, so 3.7 can never be silently written as an idx or count.
        return str(operator.index(value))
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"column {column!r} must be finite, got {value!r}")
    # repr is the shortest string that reads back to the same float64: round-trips exactly.
    return repr(number)


def format_row(values: Mapping[str, object], columns: Sequence[str] = LOG_COLUMNS) -> str:
    """One TSV line (with "\\n") holding `values[c]` for each column c, in `columns` order.

    Integers are written as integers, floats with repr (exact round trip), `time` (seconds or a
    timedelta) as `str(timedelta)`. Missing or unknown keys raise ValueError (a programming error).
    """
    missing = [c for c in columns if c not in values]
    unknown = [k for k in values if k not in columns]
    if missing or unknown:
        raise ValueError(f"format_row: missing columns {missing}, unknown columns {unknown}")
    fields = []
    for column in columns:
        try:
            fields.append(_format_value(column, values[column]))
        except (TypeError, ValueError) as error:
            raise ValueError(f"format_row: bad value for {column!r}: {error}") from error
    return "\t".join(fields) + "\n"


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class CertLog:
    """A certification log in memory: one numpy array per column, rows in file order."""

    path: str
    label: str  # name for tables and plots
    idx: np.ndarray  # int64
    labels: np.ndarray  # int64, true class
    predict: np.ndarray  # int64, -1 = abstain
    radius: np.ndarray  # float64, 0 when abstaining
    correct: np.ndarray  # int64, 0/1
    seconds: np.ndarray  # float64, the `time` column in seconds
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # any further columns
    sigma: float | None = None
    columns: tuple[str, ...] = COHEN_COLUMNS  # header order as read

    def __len__(self) -> int:
        return int(self.idx.shape[0])

    @property
    def n_examples(self) -> int:
        return len(self)


def parse_time(text: str) -> float:
    """Seconds from `str(timedelta)` (`0:00:15.051764`, `1 day, 0:00:01.5`) or plain seconds."""
    text = text.strip()
    match = _TIMEDELTA_RE.match(text)
    if match:
        days, hours, minutes, secs = match.groups()
        delta = datetime.timedelta(
            days=int(days or 0), hours=int(hours), minutes=int(minutes), seconds=float(secs)
        )
        return delta.total_seconds()
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r}") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"not a time >= 0: {text!r}")
    return seconds


def _parse_int(text: str) -> int:
    return int(text)


def _parse_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"not finite: {text!r}")
    return number


def _parse_column(tokens: list[str], parse, where, column: str, line_numbers: list[int]):
    """Parse one column; on failure name the exact file line."""
    try:
        return [parse(t) for t in tokens]
    except ValueError:
        pass
    for token, line_no in zip(tokens, line_numbers):
        try:
            parse(token)
        except ValueError:
            raise UserError(
                f"{where}:{line_no}: column {column!r} has {token!r}, expected "
                f"{_KIND_NAMES.get(parse, 'a number')}; fix or regenerate the log"
            ) from None
    raise AssertionError("unreachable")


_KIND_NAMES = {
    _parse_int: "an integer",
    _parse_float: "a finite number",
    parse_time: "a time like 0:00:15.051764 or seconds",
}


def _parse_unknown_column(tokens: list[str]) -> np.ndarray:
    """Columns we do not know: numbers when every value is a number, else kept as text."""
    try:
        return np.array([float(t) for t in tokens], dtype=np.float64)
    except ValueError:
        return np.array(tokens, dtype=str)


def default_label(path: str | Path) -> str:
    """`parent/name` of the log file: short, and distinguishes runs laid out one per folder."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def sigma_from_name(path: str | Path) -> float | None:
    """σ from a Cohen-style file name such as `noise_0.50` or `noise_0.25_3870`, else None."""
    match = _NOISE_NAME_RE.search(Path(path).name)
    return float(match.group(1)) if match else None


def read_log(
    path: str | Path, label: str | None = None, allow_partial_last_line: bool = False
) -> CertLog:
    """Read a certification log strictly; every problem is a UserError naming file and line.

    `allow_partial_last_line=True` drops a last row that lacks its newline (a writer that was
    interrupted mid-row), for resuming; finished logs should be read strictly.

    `sigma` comes from the `sigma` column when present and constant (None if it varies); logs
    without that column (e.g. published Cohen-format logs) fall back to a `noise_<σ>` file name.
    A header-only log gives a CertLog with zero rows.
    """
    path = Path(path)
    where = str(path)
    lines = _log_lines(_read_log_text(path, where), where, allow_partial_last_line)
    columns = _parse_header(lines[0], where)
    rows, line_numbers = _split_rows(lines, len(columns), where)
    parsed = _parse_columns(columns, rows, where, line_numbers)
    _check_rows(parsed, where, line_numbers)
    return CertLog(
        path=where,
        label=label if label is not None else default_label(path),
        idx=parsed["idx"],
        labels=parsed["label"],
        predict=parsed["predict"],
        radius=parsed["radius"],
        correct=parsed["correct"],
        seconds=parsed["time"],
        extras={c: parsed[c] for c in columns if c not in COHEN_COLUMNS},
        sigma=_log_sigma(parsed, path),
        columns=columns,
    )


def _read_log_text(path: Path, where: str) -> str:
    """The log's text (a leading BOM dropped); a UserError if it cannot be read or is blank."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{where}: certification log not found; check the path") from None
    except IsADirectoryError:
        raise UserError(f"{where}: is a directory, expected a certification log file") from None
    except UnicodeDecodeError:
        raise UserError(f"{where}: not a text file; expected a tab-separated log") from None
    except OSError as error:
        raise UserError(f"{where}: cannot read certification log ({error.strerror})") from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise UserError(f"{where}: file is empty; expected a header line and one row per example")
    return text


def _log_lines(text: str, where: str, allow_partial_last_line: bool) -> list[str]:
    """The header line, then the row lines: without the final newline, a torn last row (if allowed)
    or blank lines at the very end."""
    lines = text.split("\n")  # read_text already turned \r\n into \n
    if lines[-1] == "":
        lines.pop()  # the final newline
    else:
        # The last line has no newline: a writer was interrupted mid-row (or an editor dropped it).
        if len(lines) == 1:
            raise UserError(
                f"{where}:1: header line is incomplete (no newline); regenerate the log"
            )
        if not allow_partial_last_line:
            raise UserError(
                f"{where}:{len(lines)}: last row is incomplete (no newline at end; the writer was "
                f"interrupted?); rerun/resume certification, or end the line if it is complete"
            )
        lines.pop()
    while len(lines) > 1 and not lines[-1].strip():
        lines.pop()  # tolerate blank lines at the very end
    return lines


def _parse_header(line: str, where: str) -> tuple[str, ...]:
    """The column names of the header line: Cohen's columns present, none duplicated or empty."""
    header = line.split("\t")
    columns = tuple(h.strip() for h in header)
    missing = [c for c in COHEN_COLUMNS if c not in columns]
    if missing:
        raise UserError(
            f"{where}:1: header lacks column(s) {', '.join(missing)}; expected a tab-separated "
            f"header starting with: {' '.join(COHEN_COLUMNS)}"
        )
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated or "" in columns:
        raise UserError(f"{where}:1: header has duplicate or empty column names {duplicated}")
    return columns


def _split_rows(lines: list[str], width: int, where: str) -> tuple[list[list[str]], list[int]]:
    """The fields of every row after the header (each as wide as the header), and its line number."""
    rows: list[list[str]] = []
    line_numbers: list[int] = []
    for line_no, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != width:
            raise UserError(
                f"{where}:{line_no}: row has {len(fields)} field(s), the header has {width}; "
                f"fix or regenerate the log"
            )
        rows.append(fields)
        line_numbers.append(line_no)
    return rows, line_numbers


def _parse_columns(
    columns: tuple[str, ...], rows: list[list[str]], where: str, line_numbers: list[int]
) -> dict[str, np.ndarray]:
    """Each column's values as an array: integers, floats and times parsed strictly, others kept."""
    token_columns = list(zip(*rows)) if rows else [()] * len(columns)
    parsed: dict[str, np.ndarray] = {}
    for column, tokens in zip(columns, token_columns):
        tokens = [t.strip() for t in tokens]
        if column in INT_COLUMNS:
            values = _parse_column(tokens, _parse_int, where, column, line_numbers)
            parsed[column] = np.array(values, dtype=np.int64)
        elif column in FLOAT_COLUMNS:
            values = _parse_column(tokens, _parse_float, where, column, line_numbers)
            parsed[column] = np.array(values, dtype=np.float64)
        elif column == TIME_COLUMN:
            values = _parse_column(tokens, parse_time, where, column, line_numbers)
            parsed[column] = np.array(values, dtype=np.float64)
        else:
            parsed[column] = _parse_unknown_column(tokens)
    return parsed


def _log_sigma(parsed: dict[str, np.ndarray], path: Path) -> float | None:
    """σ of the log: its `sigma` column if constant (None if it varies or there are no rows), else
    the `noise_<σ>` of the file name."""
    if "sigma" in parsed and len(parsed["sigma"]):
        sigmas = parsed["sigma"]
        return float(sigmas[0]) if np.all(sigmas == sigmas[0]) else None
    if "sigma" not in parsed:
        return sigma_from_name(path)
    return None


def _check_rows(parsed: dict[str, np.ndarray], where: str, line_numbers: list[int]) -> None:
    """Consistency checks that catch corrupt or hand-edited logs, naming the first bad line."""

    def fail_at(bad: np.ndarray, problem: str) -> None:
        if bad.any():
            line_no = line_numbers[int(np.argmax(bad))]
            raise UserError(f"{where}:{line_no}: {problem}; fix or regenerate the log")

    idx, label, predict = parsed["idx"], parsed["label"], parsed["predict"]
    radius, correct = parsed["radius"], parsed["correct"]
    fail_at((correct != 0) & (correct != 1), "column 'correct' must be 0 or 1")
    fail_at(predict < ABSTAIN, "column 'predict' must be a class >= 0 or -1 (abstain)")
    fail_at(radius < 0, "column 'radius' must be >= 0")
    fail_at((predict == ABSTAIN) & (radius != 0), "an abstention (predict -1) must have radius 0")
    fail_at(correct != (predict == label), "column 'correct' disagrees with predict == label")
    if {"nA", "n_used", "n"} <= parsed.keys():  # a sequential log: counts within the samples drawn
        fail_at((parsed["nA"] < 0) | (parsed["nA"] > parsed["n_used"]), "column 'nA' must be within 0..n_used")
        fail_at((parsed["n_used"] < 1) | (parsed["n_used"] > parsed["n"]), "column 'n_used' must be within 1..n")

    # Duplicate idx: report the second occurrence and where the first one was.
    order = np.argsort(idx, kind="stable")
    repeated = np.flatnonzero(idx[order][1:] == idx[order][:-1])
    if repeated.size:
        first, second = sorted((int(order[repeated[0]]), int(order[repeated[0] + 1])))
        raise UserError(
            f"{where}:{line_numbers[second]}: idx {int(idx[second])} already appears on line "
            f"{line_numbers[first]}; each example must be certified once (remove the duplicate)"
        )


def every_kth(log: CertLog, k: int) -> CertLog:
    """The rows of `log` whose idx is a multiple of k: a whole-test-set log (e.g. a published one) on
    the subset that `rrcm certify --skip k` certifies, so that the two can be compared example for example."""
    if k < 1:
        raise UserError(f"--every must be a positive whole number, got {k}")
    keep = log.idx % k == 0
    return CertLog(path=log.path, label=log.label, idx=log.idx[keep], labels=log.labels[keep],
                   predict=log.predict[keep], radius=log.radius[keep], correct=log.correct[keep],
                   seconds=log.seconds[keep], extras={c: v[keep] for c, v in log.extras.items()},
                   sigma=log.sigma, columns=log.columns)
