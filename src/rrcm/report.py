"""Certification logs → numbers, tables and plots (always regenerated from the logs).

Certified accuracy at radius r follows Cohen et al.: the fraction of rows with correct = 1 and
radius >= r. Radii used as table/JSON keys are written as stable decimal strings ("0.25", "1.0").
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from rrcm.certlog import ABSTAIN, CertLog
from rrcm.errors import UserError
from rrcm.fileio import atomic_path

TABLE_FORMATS = ("text", "markdown", "csv", "json")
PLOT_FORMATS = ("png", "pdf", "svg")
_MAX_RADII = 1_000_000  # a guard against a typo such as step=1e-9


# ---------------------------------------------------------------------------------------------
# Radii
# ---------------------------------------------------------------------------------------------


def default_radii(max_radius: float, step: float = 0.25) -> list[float]:
    """0, step, 2·step, ... up to and including max_radius (when it lies on the grid).

    Each radius is the float nearest to its decimal value (0.175, not 35 × 0.005 =
    0.17500000000000002), so a row certified at exactly 0.175 counts at r = 0.175.
    """
    if not (math.isfinite(max_radius) and max_radius >= 0):
        raise UserError(f"max radius must be a finite number >= 0, got {max_radius!r}")
    if not (math.isfinite(step) and step > 0):
        raise UserError(f"radius step must be a finite number > 0, got {step!r}")
    count = math.floor(max_radius / step + 1e-9) + 1  # the tolerance keeps max_radius itself
    if count > _MAX_RADII:
        raise UserError(f"{count} radii from step {step} up to {max_radius}; use a larger step")
    return [round(k * step, 12) for k in range(count)]


def radius_key(radius: float) -> str:
    """Stable string for a radius: "0.0", "0.25", "1.0", "0.175" (rounded to 6 decimals)."""
    text = f"{round(float(radius), 6) + 0.0:.6f}".rstrip("0")  # + 0.0 turns -0.0 into 0.0
    return text + "0" if text.endswith(".") else text


def _as_radii(radii) -> np.ndarray:
    try:
        values = np.atleast_1d(np.asarray(radii, dtype=np.float64))
    except (TypeError, ValueError):
        values = None
    if values is None or values.ndim != 1 or not np.all(np.isfinite(values) & (values >= 0)):
        raise UserError(f"radii must be a list of finite numbers >= 0, got {radii!r}")
    return values


def _radius_keys(radii: np.ndarray) -> list[str]:
    keys = [radius_key(r) for r in radii]
    if len(set(keys)) != len(keys):
        raise UserError(
            f"radii {[float(r) for r in radii]} repeat (after rounding to 6 decimals); list each once"
        )
    return keys


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------


def _require_rows(log: CertLog) -> None:
    if len(log) == 0:
        raise UserError(f"{log.path}: log has no rows; certify some examples first")


def certified_accuracy(log: CertLog, radii) -> np.ndarray:
    """Fraction of rows with correct = 1 and radius >= r, for each r in radii (float64 array)."""
    _require_rows(log)
    radii = _as_radii(radii)
    certified = np.sort(log.radius[log.correct == 1])
    # Rows with radius >= r are those from the first index where r could be inserted on the left.
    at_least = certified.size - np.searchsorted(certified, radii, side="left")
    return at_least / len(log)


def average_certified_radius(log: CertLog) -> float:
    """ACR: mean over all rows of radius × correct (abstentions and errors count as 0)."""
    _require_rows(log)
    return float(np.mean(log.radius * log.correct))


def samples_per_certificate(log: CertLog) -> np.ndarray | None:
    """Noise samples (forward passes) each row's certificate cost: n0 + n_used for a sequential log,
    n0 + n for Cohen's fixed n; None for a log without those columns (e.g. a published Cohen log)."""
    extras = log.extras
    if "n0" not in extras or ("n_used" not in extras and "n" not in extras):
        return None
    return (extras["n0"] + extras["n_used" if "n_used" in extras else "n"]).astype(np.int64)


def summarize(log: CertLog, radii) -> dict:
    """The headline numbers of one log; certified accuracies keyed by `radius_key`. A sequential log's
    summary also gives the mean and median samples per certificate."""
    radii = _as_radii(radii)
    keys = _radius_keys(radii)
    accuracies = certified_accuracy(log, radii)
    samples = samples_per_certificate(log)
    sample_numbers = {} if samples is None or len(samples) == 0 or "n_used" not in log.extras else {
        "samples_mean": float(np.mean(samples)), "samples_median": float(np.median(samples))}
    return {
        "label": log.label,
        "sigma": log.sigma,
        "n_examples": len(log),
        "clean_accuracy": float(np.mean(log.correct)),  # = certified accuracy at r = 0
        "abstain_rate": float(np.mean(log.predict == ABSTAIN)),
        "acr": average_certified_radius(log),
        "certified_accuracy": {k: float(a) for k, a in zip(keys, accuracies)},
        "seconds_per_example": float(np.mean(log.seconds)),
        **sample_numbers,
    }


def _check_same_examples(logs: Sequence[CertLog], hint: str = "", needs: str = "an envelope needs the same test "
                         "set in every log") -> None:
    reference = np.sort(logs[0].idx)
    for log in logs[1:]:
        other = np.sort(log.idx)
        if other.shape != reference.shape or not np.array_equal(other, reference):
            only_first = np.setdiff1d(reference, other).size
            only_other = np.setdiff1d(other, reference).size
            raise UserError(
                f"{logs[0].path} and {log.path} certify different examples ({only_first} idx only "
                f"in the first, {only_other} only in the second); {needs}{hint}"
            )


def envelope(logs: Sequence[CertLog], radii, label: str = "envelope") -> dict:
    """Best over logs (e.g. over σ): at each radius the highest certified accuracy and its log.

    The logs must cover the same examples. Only accuracies are enveloped: the ACR of a
    best-per-radius curve does not correspond to any one smoothed classifier, so none is given.
    """
    logs = list(logs)
    if not logs:
        raise UserError("envelope needs at least one certification log")
    for log in logs:
        _require_rows(log)
    _check_same_examples(logs)
    radii = _as_radii(radii)
    keys = _radius_keys(radii)
    table = np.stack([certified_accuracy(log, radii) for log in logs])  # (logs, radii)
    best = np.argmax(table, axis=0)  # ties go to the earlier log
    return {
        "label": label,
        "members": [log.label for log in logs],
        "n_examples": len(logs[0]),
        "certified_accuracy": {k: float(table[b, j]) for j, (k, b) in enumerate(zip(keys, best))},
        "best_label": {k: logs[b].label for k, b in zip(keys, best)},
        "best_index": {k: int(b) for k, b in zip(keys, best)},
        "best_sigma": {k: logs[b].sigma for k, b in zip(keys, best)},
    }


_envelope = envelope  # for functions whose `envelope` flag shadows this function


def paired_difference(first: CertLog, second: CertLog, radii, z: float = 1.959964) -> dict:
    """`first` minus `second` on the same examples, with normal-approximation intervals.

    Both logs certify the same test images, so the comparison is paired: per example, the
    difference of certified radius × correct (for ACR) and of the indicator "correct and radius
    >= r" (for certified accuracy). Each difference's mean is reported with ± z · sd / sqrt(N)
    (z = 1.96: a 95% interval over the choice of test images; the certificates' own α is
    separate). Where the interval excludes 0 the logs differ beyond test-set sampling noise.
    """
    for log in (first, second):
        _require_rows(log)
    _check_same_examples([first, second], needs="a paired comparison needs the same examples in both")
    if np.unique(first.idx).size != len(first):
        raise UserError(f"{first.path}: idx repeats; a paired comparison needs one row per example")
    radii = _as_radii(radii)
    keys = _radius_keys(radii)
    a = np.argsort(first.idx, kind="stable")
    b = np.argsort(second.idx, kind="stable")

    def per_example(log: CertLog, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        radius, correct = log.radius[order], log.correct[order]
        certified = (correct[:, None] == 1) & (radius[:, None] >= radii[None, :])
        return radius * correct, certified.astype(np.float64)

    acr_a, cert_a = per_example(first, a)
    acr_b, cert_b = per_example(second, b)
    n = len(first)

    def mean_and_half_width(diff: np.ndarray) -> tuple[float, float]:
        sd = float(np.std(diff, axis=0, ddof=1)) if n > 1 else math.inf
        return float(np.mean(diff)), (z * sd / math.sqrt(n) if n > 1 else math.inf)

    acr = mean_and_half_width(acr_a - acr_b)
    accuracy = {}
    for j, key in enumerate(keys):
        accuracy[key] = mean_and_half_width(cert_a[:, j] - cert_b[:, j])
    return {
        "first": first.label,
        "second": second.label,
        "n_examples": n,
        "z": z,
        "acr": {"difference": acr[0], "half_width": acr[1]},
        "certified_accuracy": {k: {"difference": d, "half_width": h} for k, (d, h) in accuracy.items()},
    }


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

# (summary key, text/markdown heading, how to show it as text); certified accuracies follow.
_SCALAR_COLUMNS = (
    ("sigma", "sigma", lambda v: f"{v:g}"),
    ("n_examples", "n", lambda v: f"{v:d}"),
    ("clean_accuracy", "clean%", lambda v: f"{100 * v:.1f}"),
    ("abstain_rate", "abstain%", lambda v: f"{100 * v:.1f}"),
    ("acr", "ACR", lambda v: f"{v:.3f}"),
)
_TIME_COLUMN = ("seconds_per_example", "s/example", lambda v: f"{v:.3g}")
# only in tables with a sequential log (a fixed-n log's samples are its n0 + n, the same on every row)
_SAMPLE_COLUMNS = (("samples_mean", "samples (mean)", lambda v: f"{v:,.0f}"),
                   ("samples_median", "samples (median)", lambda v: f"{v:,.0f}"))
_MISSING = "-"


def _table_cells(summary: Mapping, keys: list[str], extra_columns=()) -> tuple[list[object], list[str]]:
    """Raw values and their text forms for one row, in column order."""
    label = summary.get("label")
    if label is None:
        raise UserError("render_table: a summary has no 'label'; build rows with summarize()")
    accuracies = summary.get("certified_accuracy", {})
    missing = [k for k in keys if k not in accuracies]
    if missing:
        raise UserError(
            f"render_table: {label!r} has no certified accuracy at radius {', '.join(missing)}; "
            f"summarize it with the same radii as the table"
        )
    raw: list[object] = [str(label)]
    text = [str(label)]
    for key, _, show in _SCALAR_COLUMNS:
        value = summary.get(key)
        raw.append(value)
        text.append(_MISSING if value is None else show(value))
    for key in keys:
        raw.append(accuracies[key])
        text.append(f"{100 * accuracies[key]:.1f}")
    for key, _, show in (_TIME_COLUMN, *extra_columns):
        value = summary.get(key)
        raw.append(value)
        text.append(_MISSING if value is None else show(value))
    return raw, text


def _json_scalar(value):
    """numpy scalars in hand-built summaries → plain Python numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {value!r}")


def render_table(summaries: Iterable[Mapping], radii, fmt: str = "text") -> str:
    """Summaries (from `summarize`, or an `envelope` row) as a table.

    text: fixed-width for terminals; markdown: for docs; csv and json: full precision, fractions
    (text and markdown show accuracies in percent).
    """
    if fmt not in TABLE_FORMATS:
        raise UserError(f"unknown table format {fmt!r}; choose one of {', '.join(TABLE_FORMATS)}")
    summaries = list(summaries)
    keys = _radius_keys(_as_radii(radii))
    extra = _SAMPLE_COLUMNS if any("samples_mean" in s for s in summaries) else ()
    rows = [_table_cells(s, keys, extra) for s in summaries]

    if fmt == "json":
        out_rows = []
        for summary in summaries:
            row = {k: v for k, v in summary.items() if k != "certified_accuracy"}
            row["certified_accuracy"] = {k: summary["certified_accuracy"][k] for k in keys}
            out_rows.append(row)
        return json.dumps({"radii": keys, "rows": out_rows}, indent=2, default=_json_scalar) + "\n"

    if fmt == "csv":
        names = ["label", *(c[0] for c in _SCALAR_COLUMNS), *(f"acc@{k}" for k in keys),
                 _TIME_COLUMN[0], *(c[0] for c in extra)]
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(names)
        for raw, _ in rows:
            writer.writerow(["" if v is None else (repr(float(v)) if isinstance(v, float) else v)
                             for v in raw])
        return buffer.getvalue()

    headings = ["label", *(c[1] for c in _SCALAR_COLUMNS), *(f"r={k}" for k in keys),
                _TIME_COLUMN[1], *(c[1] for c in extra)]
    texts = [text for _, text in rows]
    # for readers, a column that no row has (e.g. clean% in a table of envelopes) is left out;
    # csv and json above keep every column so that their schema does not depend on the rows
    shown = [i for i in range(len(headings))
             if i == 0 or not rows or any(raw[i] is not None for raw, _ in rows)]
    headings = [headings[i] for i in shown]
    texts = [[text[i] for i in shown] for text in texts]
    if fmt == "markdown":
        lines = ["| " + " | ".join(headings) + " |",
                 "|" + "|".join([":---"] + ["---:"] * (len(headings) - 1)) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in t) + " |" for t in texts]
        return "\n".join(lines) + "\n"

    widths = [max([len(h)] + [len(t[i]) for t in texts]) for i, h in enumerate(headings)]

    def line(cells: list[str]) -> str:  # label left-aligned, numbers right-aligned
        parts = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    lines = [line(headings), "  ".join("-" * w for w in widths)] + [line(t) for t in texts]
    return "\n".join(lines) + "\n"


Group = tuple[str, Sequence[CertLog]]  # (label, logs): one row or curve, the logs' best-over-σ envelope


def build_report(
    logs: Sequence[CertLog], radii, fmt: str = "text", envelope: bool = True, groups: Sequence[Group] = ()
) -> str:
    """One row per log, plus the best-over-logs envelope row when there are two or more logs.

    Each of `groups` adds one row after them: the envelope of its logs under its label (e.g. one
    method's best over σ), so that several methods' envelopes sit in one table. The overall
    envelope row is left out when there are groups (an envelope over methods is not a method).
    """
    logs, groups = list(logs), list(groups)
    if not logs and not groups:
        raise UserError("a report needs at least one certification log")
    rows = [summarize(log, radii) for log in logs]
    for label, members in groups:
        rows.append(_envelope(members, radii, label=label))
    if envelope and len(logs) > 1 and not groups:
        _check_same_examples(logs, hint=" (or leave the envelope out: --no-envelope)")
        rows.append(_envelope(logs, radii))
    return render_table(rows, radii, fmt=fmt)


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def plot_certified_accuracy(
    logs: Sequence[CertLog],
    out_png: str | Path,
    title: str | None = None,
    envelope: bool = True,
    max_radius: float | None = None,
    groups: Sequence[Group] = (),
) -> Path:
    """Certified accuracy against radius, one curve per log, the best-over-logs envelope dashed.

    Each of `groups` adds one curve, the envelope of its logs under its label (no overall envelope
    is drawn then). Written atomically; the format follows the suffix (.png, .pdf or .svg). The
    envelope is drawn only for two or more logs, which must then cover the same examples.
    """
    # Figure + Agg canvas directly: no display, no global pyplot state, safe in threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    logs, groups = list(logs), list(groups)
    out_png = Path(out_png)
    if not logs and not groups:
        raise UserError("plot needs at least one certification log")
    every_log = logs + [log for _, members in groups for log in members]
    for log in every_log:
        _require_rows(log)
    for _, members in groups:
        _check_same_examples(list(members))
    plot_format = out_png.suffix.lower().lstrip(".")
    if plot_format not in PLOT_FORMATS:
        raise UserError(f"{out_png}: plot file must end in .png, .pdf or .svg")
    draw_envelope = envelope and len(logs) > 1 and not groups
    if draw_envelope:
        _check_same_examples(logs, hint=" (or plot with envelope=False)")
    if max_radius is None:
        largest = max(float(log.radius.max()) for log in every_log)
        max_radius = 1.05 * largest if largest > 0 else 1.0
    if not (math.isfinite(max_radius) and max_radius > 0):
        raise UserError(f"max radius for the plot must be > 0, got {max_radius!r}")

    grid = np.linspace(0.0, max_radius, 2001)  # fine enough to show every step at print size
    curves = [certified_accuracy(log, grid) for log in logs]

    figure = Figure(figsize=(6.4, 4.4), dpi=150)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for log, curve in zip(logs, curves):
        # name σ unless the label already does
        name = log.label if log.sigma is None or "σ" in log.label else f"{log.label} (σ={log.sigma:g})"
        axes.plot(grid, curve, linewidth=1.4, label=name)
    for label, members in groups:
        axes.plot(grid, np.max([certified_accuracy(log, grid) for log in members], axis=0), linewidth=1.4,
                  label=label)
    if draw_envelope:
        axes.plot(grid, np.max(curves, axis=0), "k--", linewidth=1.2, label="envelope")
    axes.set_xlim(0.0, max_radius)
    axes.set_ylim(0.0, 1.0)
    axes.set_xlabel("radius (L2)")
    axes.set_ylabel("certified accuracy")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small", loc="lower left")  # curves start high at r = 0 and fall to the right
    if title:
        axes.set_title(title)
    figure.tight_layout()
    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, format=plot_format)
    return out_png
