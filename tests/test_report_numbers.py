"""rrcm.report's numbers, tables and plots to the exact value: radii grids, paired differences, the
rendered tables' full text, the error messages users read, and what a plot draws and writes."""

from __future__ import annotations

import json
import math
import struct
import warnings
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from rrcm.certlog import COHEN_COLUMNS, CertLog, header_line, read_log
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

from tests.test_report import HANDMADE, HANDMADE_OTHER, cohen_log, write


def message(error_info) -> str:
    return str(error_info.value)


def make_log(path: str, idx, radius, correct=None, label: str | None = None, sigma=None) -> CertLog:
    """A CertLog built directly (e.g. with repeated idx, which read_log refuses); predict = label = 1 where
    correct, else 0 against label 1 (radius 0 rows stay correct or not as given)."""
    idx = np.asarray(idx, dtype=np.int64)
    radius = np.asarray(radius, dtype=np.float64)
    correct = np.ones_like(idx) if correct is None else np.asarray(correct, dtype=np.int64)
    return CertLog(path=path, label=label or path, idx=idx, labels=np.ones_like(idx),
                   predict=np.where(correct == 1, 1, 0), radius=radius, correct=correct,
                   seconds=np.ones(idx.shape, dtype=np.float64), sigma=sigma)


# ---------------------------------------------------------------------------------------------
# default_radii
# ---------------------------------------------------------------------------------------------


def test_default_radii_start_at_zero_and_take_zero_as_a_maximum():
    assert default_radii(0.0) == [0.0]
    assert default_radii(0.0, 0.005) == [0.0]
    assert default_radii(0.5, 0.5) == [0.0, 0.5]


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan, -0.25])
def test_default_radii_refuses_a_bad_maximum(bad):
    with pytest.raises(UserError) as err:
        default_radii(bad)
    assert message(err) == f"max radius must be a finite number >= 0, got {bad!r}"


@pytest.mark.parametrize("bad", [0.0, -0.25, math.inf, math.nan])
def test_default_radii_refuses_a_bad_step(bad):
    with pytest.raises(UserError) as err:
        default_radii(1.0, step=bad)
    assert message(err) == f"radius step must be a finite number > 0, got {bad!r}"


def test_default_radii_allow_exactly_a_million_radii():
    radii = default_radii(999_999.0, 1.0)
    assert len(radii) == 1_000_000 and radii[-1] == 999_999.0
    with pytest.raises(UserError) as err:
        default_radii(1_000_000.0, 1.0)
    assert message(err) == "1000001 radii from step 1.0 up to 1000000.0; use a larger step"


def test_default_radii_are_the_floats_nearest_their_decimal_values():
    # 645 x 0.7 is 451.49999999999994 in floating point; the grid holds 451.5, the value a row
    # certified at exactly 451.5 must count at, and every other k x 0.7 as its decimal value too.
    radii = default_radii(451.5, 0.7)
    assert radii == [float(Decimal(k) * Decimal("0.7")) for k in range(646)]
    assert radii[-1] == 451.5


# ---------------------------------------------------------------------------------------------
# paired_difference
# ---------------------------------------------------------------------------------------------


def test_paired_difference_whole_result_with_the_default_z(tmp_path: Path):
    first = read_log(write(tmp_path, HANDMADE, "a.tsv"), label="first")
    second = read_log(write(tmp_path, HANDMADE_OTHER, "b.tsv"), label="second")
    result = paired_difference(first, second, [0, 0.5])
    assert set(result) == {"first", "second", "n_examples", "z", "acr", "certified_accuracy"}
    assert (result["first"], result["second"], result["n_examples"], result["z"]) == ("first", "second", 4, 1.959964)
    z = 1.959964
    # differences per idx (see test_paired_difference_matches_hand_computation): ACR (0.5, 0, -0.25, -1),
    # certified at r = 0 (1, 0, -1, -1), at r = 0.5 (1, 0, 0, -1); sample sd 0.625, sqrt(11/12), sqrt(2/3)
    assert result["acr"] == {"difference": -0.1875, "half_width": pytest.approx(z * 0.625 / 2, rel=1e-12)}
    assert list(result["certified_accuracy"]) == ["0.0", "0.5"]
    assert result["certified_accuracy"]["0.0"] == {
        "difference": -0.25, "half_width": pytest.approx(z * math.sqrt(11 / 12) / 2, rel=1e-12)}
    assert result["certified_accuracy"]["0.5"] == {
        "difference": 0.0, "half_width": pytest.approx(z * math.sqrt(2 / 3) / 2, rel=1e-12)}


def test_paired_difference_of_two_examples_has_a_finite_interval():
    # ACR differences (1 - 0.5, 0 - 0.5) = (0.5, -0.5): mean 0, sample sd sqrt(0.5), half width z sd / sqrt(2)
    first = make_log("a.tsv", [0, 1], [1.0, 0.0], correct=[1, 0])
    second = make_log("b.tsv", [1, 0], [0.5, 0.5])
    result = paired_difference(first, second, [0.75], z=2.0)
    assert result["acr"] == {"difference": 0.0, "half_width": pytest.approx(1.0, rel=1e-12)}
    # certified at 0.75: (1, 0) against (0, 0)
    assert result["certified_accuracy"]["0.75"] == {"difference": 0.5, "half_width": pytest.approx(1.0, rel=1e-12)}


@pytest.mark.parametrize("z", [1.959964, 0.0])
def test_paired_difference_of_one_example_has_no_interval(z):
    # one example: no spread can be estimated, so the interval is unbounded whatever z, and numpy is
    # never asked for a standard deviation of one value (which warns "Degrees of freedom <= 0")
    first = make_log("a.tsv", [7], [0.5])
    second = make_log("b.tsv", [7], [0.25])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = paired_difference(first, second, [0.0, 0.5], z=z)
    assert result["n_examples"] == 1
    assert result["acr"] == {"difference": 0.25, "half_width": math.inf}
    assert result["certified_accuracy"] == {"0.0": {"difference": 0.0, "half_width": math.inf},
                                            "0.5": {"difference": 1.0, "half_width": math.inf}}


def test_paired_difference_messages():
    first = make_log("a.tsv", [0, 1, 2], [0.5, 0.5, 0.5])
    fewer = make_log("b.tsv", [0, 1], [0.5, 0.5])
    with pytest.raises(UserError) as err:
        paired_difference(first, fewer, [0.0])
    assert message(err) == (
        "a.tsv and b.tsv certify different examples (1 idx only in the first, 0 only in the second); a "
        "paired comparison needs the same examples in both")
    repeated = make_log("c.tsv", [0, 0, 1], [0.5, 0.5, 0.5])
    with pytest.raises(UserError) as err:
        paired_difference(repeated, make_log("d.tsv", [1, 0, 0], [0.5, 0.5, 0.5]), [0.0])
    assert message(err) == "c.tsv: idx repeats; a paired comparison needs one row per example"


# ---------------------------------------------------------------------------------------------
# Radii as keys and inputs
# ---------------------------------------------------------------------------------------------


def test_radius_key_rounds_once_to_six_decimals():
    assert radius_key(-0.0) == "0.0"  # no "-0.0" key for a radius of zero
    assert radius_key(0.2500004999) == "0.25"  # not 0.2500005 first and then 0.250001
    assert radius_key(0.0000004) == "0.0" and radius_key(1e-6) == "0.000001"
    assert [radius_key(r) for r in (2, 12.5, 0.175)] == ["2.0", "12.5", "0.175"]


@pytest.mark.parametrize("bad", [[None], "abc", [[0.5, 1.0]], [-0.5], [math.inf], [0.5, math.nan]])
def test_radii_must_be_finite_numbers_at_least_zero(tmp_path: Path, bad):
    log = read_log(write(tmp_path, HANDMADE))
    with pytest.raises(UserError) as err:
        summarize(log, bad)
    assert message(err) == f"radii must be a list of finite numbers >= 0, got {bad!r}"


def test_radii_one_number_and_repeats(tmp_path: Path):
    log = read_log(write(tmp_path, HANDMADE))
    assert summarize(log, 0.5)["certified_accuracy"] == {"0.5": 0.5}
    assert summarize(log, [-0.0])["certified_accuracy"] == {"0.0": 0.5}
    with pytest.raises(UserError) as err:
        summarize(log, [0.1, 0.1000000001])
    assert message(err) == "radii [0.1, 0.1000000001] repeat (after rounding to 6 decimals); list each once"


def test_logs_without_rows_are_refused_by_name(tmp_path: Path):
    empty = read_log(write(tmp_path, header_line(COHEN_COLUMNS), "empty.tsv"))
    expected = f"{tmp_path / 'empty.tsv'}: log has no rows; certify some examples first"
    for call in (lambda: summarize(empty, [0.0]), lambda: certified_accuracy(empty, [0.0]),
                 lambda: average_certified_radius(empty), lambda: envelope([empty], [0.0]),
                 lambda: paired_difference(empty, empty, [0.0])):
        with pytest.raises(UserError) as err:
            call()
        assert message(err) == expected
    one = make_log("one.tsv", [3], [0.5])
    assert certified_accuracy(one, [0.5, 0.6]).tolist() == [1.0, 0.0]


# ---------------------------------------------------------------------------------------------
# Envelope and the same-examples check
# ---------------------------------------------------------------------------------------------


def test_envelope_whole_result(tmp_path: Path):
    small = read_log(cohen_log(tmp_path / "s", "noise_0.25", [(0, 1, 1, 0.4), (1, 1, 1, 0.3), (2, 1, 1, 0.2)]))
    large = read_log(cohen_log(tmp_path / "l", "noise_1.00", [(2, 1, 1, 1.5), (1, 1, -1, 0.0), (0, 1, 2, 0.9)]))
    assert envelope([small, large], [0.0, 0.5], label="best of two") == {
        "label": "best of two",
        "members": ["s/noise_0.25", "l/noise_1.00"],
        "n_examples": 3,
        "certified_accuracy": {"0.0": 1.0, "0.5": 1 / 3},
        "best_label": {"0.0": "s/noise_0.25", "0.5": "l/noise_1.00"},
        "best_index": {"0.0": 0, "0.5": 1},
        "best_sigma": {"0.0": 0.25, "0.5": 1.0},
    }
    assert envelope([small], [0.0])["label"] == "envelope"
    with pytest.raises(UserError) as err:
        envelope([], [0.0])
    assert message(err) == "envelope needs at least one certification log"


def test_envelope_names_the_logs_and_counts_that_differ():
    first = make_log("a.tsv", [0, 1, 2], [0.5, 0.5, 0.5])
    same = make_log("b.tsv", [2, 1, 0], [0.5, 0.5, 0.5])
    other = make_log("c.tsv", [1, 2, 3, 4], [0.5, 0.5, 0.5, 0.5])
    with pytest.raises(UserError) as err:
        envelope([first, same, other], [0.0])  # the third log is compared too
    assert message(err) == (
        "a.tsv and c.tsv certify different examples (1 idx only in the first, 2 only in the second); an "
        "envelope needs the same test set in every log")


# ---------------------------------------------------------------------------------------------
# Tables: the whole text
# ---------------------------------------------------------------------------------------------


def handmade_rows(tmp_path: Path, radii) -> list[dict]:
    log = read_log(write(tmp_path, HANDMADE, "noise_0.50"), label="handmade")
    return [summarize(log, radii), envelope([log], radii)]


def test_render_table_text_whole(tmp_path: Path):
    radii = [0.0, 0.5, 1.0]
    text = render_table(handmade_rows(tmp_path, radii), radii)
    assert text == (
        "label     sigma  n  clean%  abstain%    ACR  r=0.0  r=0.5  r=1.0  s/example\n"
        "--------  -----  -  ------  --------  -----  -----  -----  -----  ---------\n"
        "handmade    0.5  4    50.0      25.0  0.438   50.0   50.0   25.0   2.16e+04\n"
        "envelope      -  4       -         -      -   50.0   50.0   25.0          -\n"
    )
    assert render_table(handmade_rows(tmp_path, radii), radii, fmt="text") == text
    # no rows: every heading, so that an empty report still shows what it would hold
    assert render_table([], [0.0, 0.5]) == (
        "label  sigma  n  clean%  abstain%  ACR  r=0.0  r=0.5  s/example\n"
        "-----  -----  -  ------  --------  ---  -----  -----  ---------\n"
    )


def test_render_table_text_leaves_out_columns_no_row_has():
    rows = [{"label": "A", "n_examples": 12, "certified_accuracy": {"0.25": 0.75}},
            {"label": "a longer one", "n_examples": 3, "certified_accuracy": {"0.25": 1 / 3}}]
    assert render_table(rows, [0.25]) == (
        "label          n  r=0.25\n"
        "------------  --  ------\n"
        "A             12    75.0\n"
        "a longer one   3    33.3\n"
    )
    # a value shown in one row only: the column stays, "-" where a row lacks it
    rows[1]["seconds_per_example"] = 0.0123456
    assert render_table(rows, [0.25]).splitlines()[2:] == ["A             12    75.0          -",
                                                            "a longer one   3    33.3     0.0123"]


def test_render_table_text_keeps_columns_aligned_under_an_empty_label():
    rows = [{"label": "", "n_examples": 3, "certified_accuracy": {"0.5": 0.5}},
            {"label": "abc", "n_examples": 12, "certified_accuracy": {"0.5": 1.0}}]
    assert render_table(rows, [0.5]) == (
        "label   n  r=0.5\n"
        "-----  --  -----\n"
        "        3   50.0\n"
        "abc    12  100.0\n"
    )


def test_render_table_markdown_whole(tmp_path: Path):
    radii = [0.0, 0.5, 1.0]
    assert render_table(handmade_rows(tmp_path, radii), radii, fmt="markdown") == (
        "| label | sigma | n | clean% | abstain% | ACR | r=0.0 | r=0.5 | r=1.0 | s/example |\n"
        "|:---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        "| handmade | 0.5 | 4 | 50.0 | 25.0 | 0.438 | 50.0 | 50.0 | 25.0 | 2.16e+04 |\n"
        "| envelope | - | 4 | - | - | - | 50.0 | 50.0 | 25.0 | - |\n"
    )
    piped = [{"label": "a|b", "n_examples": 2, "certified_accuracy": {"0.5": 0.5}}]
    assert render_table(piped, [0.5], fmt="markdown") == (
        "| label | n | r=0.5 |\n"
        "|:---|---:|---:|\n"
        "| a\\|b | 2 | 50.0 |\n"
    )


def test_render_table_csv_whole(tmp_path: Path):
    radii = [0.0, 0.5, 1.0]
    assert render_table(handmade_rows(tmp_path, radii), radii, fmt="csv") == (
        "label,sigma,n_examples,clean_accuracy,abstain_rate,acr,acc@0.0,acc@0.5,acc@1.0,seconds_per_example\n"
        "handmade,0.5,4,0.5,0.25,0.4375,0.5,0.5,0.25,21601.625\n"
        "envelope,,4,,,,0.5,0.5,0.25,\n"
    )
    # full precision (repr) for floats, plain text for the rest, quoted where csv needs it
    rows = [{"label": "a, b", "n_examples": np.int64(3), "acr": 0.1 + 0.2, "certified_accuracy": {"0.5": 1 / 3}},
            {"label": "numpy", "acr": np.float64(0.5), "certified_accuracy": {"0.5": np.float64(0.25)}}]
    assert render_table(rows, [0.5], fmt="csv") == (
        "label,sigma,n_examples,clean_accuracy,abstain_rate,acr,acc@0.5,seconds_per_example\n"
        '"a, b",,3,,,0.30000000000000004,0.3333333333333333,\n'
        "numpy,,,,,0.5,0.25,\n"  # numpy floats as numbers, not as np.float64(0.5)
    )


def test_render_table_json_whole(tmp_path: Path):
    radii = [0.0, 1.0]
    expected = {
        "radii": ["0.0", "1.0"],
        "rows": [
            {"label": "handmade", "sigma": 0.5, "n_examples": 4, "clean_accuracy": 0.5, "abstain_rate": 0.25,
             "acr": 0.4375, "seconds_per_example": 21601.625, "certified_accuracy": {"0.0": 0.5, "1.0": 0.25}},
            {"label": "envelope", "members": ["handmade"], "n_examples": 4,
             "best_label": {"0.0": "handmade", "1.0": "handmade"}, "best_index": {"0.0": 0, "1.0": 0},
             "best_sigma": {"0.0": 0.5, "1.0": 0.5}, "certified_accuracy": {"0.0": 0.5, "1.0": 0.25}},
        ],
    }
    assert render_table(handmade_rows(tmp_path, radii), radii, fmt="json") == json.dumps(expected, indent=2) + "\n"
    # only the table's radii, in its order; numpy scalars of hand-built rows as plain numbers
    rows = [{"label": "np", "n_examples": np.int64(4), "sigma": np.float32(0.25),
             "certified_accuracy": {"1.0": np.float32(0.5), "0.0": 1.0, "2.0": 0.0}}]
    assert json.loads(render_table(rows, [0.0, 1.0], fmt="json")) == {
        "radii": ["0.0", "1.0"],
        "rows": [{"label": "np", "n_examples": 4, "sigma": 0.25, "certified_accuracy": {"0.0": 1.0, "1.0": 0.5}}]}
    with pytest.raises(TypeError) as err:
        render_table([{"label": "x", "tags": {1}, "certified_accuracy": {"0.0": 1.0}}], [0.0], fmt="json")
    assert message(err) == "not JSON serializable: {1}"


def test_render_table_messages(tmp_path: Path):
    rows = handmade_rows(tmp_path, [0.0, 0.5])
    with pytest.raises(UserError) as err:
        render_table(rows, [0.0], fmt="html")
    assert message(err) == "unknown table format 'html'; choose one of text, markdown, csv, json"
    with pytest.raises(UserError) as err:
        render_table(rows, [0.0, 2.0, 3.0])
    assert message(err) == ("render_table: 'handmade' has no certified accuracy at radius 2.0, 3.0; summarize it "
                            "with the same radii as the table")
    with pytest.raises(UserError) as err:
        render_table([{"label": "bare", "n_examples": 1}], [0.0], fmt="csv")
    assert message(err) == ("render_table: 'bare' has no certified accuracy at radius 0.0; summarize it with the "
                            "same radii as the table")
    with pytest.raises(UserError) as err:
        render_table([{"n_examples": 1, "certified_accuracy": {"0.0": 1.0}}], [0.0])
    assert message(err) == "render_table: a summary has no 'label'; build rows with summarize()"


def test_build_report_rows_and_messages(tmp_path: Path):
    a = read_log(cohen_log(tmp_path, "a", [(0, 1, 1, 0.4), (1, 1, 1, 0.3)]), label="a")
    b = read_log(cohen_log(tmp_path, "b", [(1, 1, 1, 0.9), (0, 1, 2, 0.5)]), label="b")
    # one log: no envelope row (it would repeat the log); text by default
    assert build_report([a], [0.0, 0.5]) == (
        "label  n  clean%  abstain%    ACR  r=0.0  r=0.5  s/example\n"
        "-----  -  ------  --------  -----  -----  -----  ---------\n"
        "a      2   100.0       0.0  0.350  100.0    0.0          1\n"
    )
    assert build_report([a, b], [0.0, 0.5], fmt="csv").splitlines()[1:] == [
        "a,,2,1.0,0.0,0.35,1.0,0.0,1.0", "b,,2,0.5,0.0,0.45,0.5,0.5,1.0", "envelope,,2,,,,1.0,0.5,"]
    c = read_log(cohen_log(tmp_path, "c", [(5, 1, 1, 0.4), (6, 1, 1, 0.3), (1, 1, 1, 0.3)]), label="c")
    with pytest.raises(UserError) as err:
        build_report([a, c], [0.0])
    assert message(err) == (
        f"{a.path} and {c.path} certify different examples (1 idx only in the first, 2 only in the second); an "
        f"envelope needs the same test set in every log (or leave the envelope out: --no-envelope)")
    # beside groups there is no overall envelope, so logs of different examples are fine
    assert len(json.loads(build_report([a, c], [0.0], fmt="json", groups=[("B", [b])]))["rows"]) == 3
    with pytest.raises(UserError) as err:
        build_report([], [0.0])
    assert message(err) == "a report needs at least one certification log"


# ---------------------------------------------------------------------------------------------
# Plots: what is drawn (read from the figure as it is saved) and what is written
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def saved_figures(monkeypatch):
    """Every matplotlib Figure saved during the test, with savefig's arguments, saved as usual."""
    from matplotlib.figure import Figure

    saved = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append((self, args, kwargs))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def drawn(axes) -> list[tuple]:
    return [(line.get_label(), line.get_linewidth(), line.get_linestyle()) for line in axes.get_lines()]


def two_logs(tmp_path: Path) -> tuple[CertLog, CertLog]:
    first = read_log(cohen_log(tmp_path / "a", "noise_0.25", [(0, 1, 1, 0.4), (1, 1, 1, 0.3)]))
    second = read_log(cohen_log(tmp_path / "b", "noise_0.50", [(1, 1, 1, 0.9), (0, 1, 2, 0.5)]))
    return first, second


def test_plot_draws_each_curve_and_the_envelope(tmp_path: Path, saved_figures):
    from matplotlib.colors import to_rgba
    from matplotlib.font_manager import FontProperties

    first, second = two_logs(tmp_path)
    out = tmp_path / "plots" / "curve.png"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plot_certified_accuracy([first, second], out, title="two σ") == out
    (figure, args, kwargs), = saved_figures
    assert args[0].parent == out.parent and args[0].name.startswith(".curve.png.") and kwargs == {"format": "png"}
    assert [p.name for p in out.parent.iterdir()] == ["curve.png"]
    assert png_size(out) == (960, 660)  # 6.4 x 4.4 inches at 150 dpi

    axes, = figure.axes
    max_radius = 1.05 * 0.9  # 5% beyond the largest radius of the logs
    grid = np.linspace(0.0, max_radius, 2001)
    assert drawn(axes) == [("a/noise_0.25 (σ=0.25)", 1.4, "-"), ("b/noise_0.50 (σ=0.5)", 1.4, "-"),
                           ("envelope", 1.2, "--")]
    curves = [certified_accuracy(log, grid) for log in (first, second)]
    for line, expected in zip(axes.get_lines(), [*curves, np.maximum(*curves)]):
        np.testing.assert_array_equal(line.get_xdata(), grid)
        np.testing.assert_array_equal(line.get_ydata(), expected)
    assert to_rgba(axes.get_lines()[2].get_color()) == (0.0, 0.0, 0.0, 1.0)  # the envelope in black
    assert axes.get_xlim() == (0.0, max_radius) and axes.get_ylim() == (0.0, 1.0)
    assert (axes.get_xlabel(), axes.get_ylabel(), axes.get_title()) == ("radius (L2)", "certified accuracy", "two σ")
    for gridline in axes.xaxis.get_gridlines() + axes.yaxis.get_gridlines():
        assert gridline.get_visible() and gridline.get_alpha() == 0.3
    legend = axes.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["a/noise_0.25 (σ=0.25)", "b/noise_0.50 (σ=0.5)", "envelope"]
    assert legend._loc == 3  # "lower left": the curves start high at r = 0 and fall to the right
    small = FontProperties(size="small").get_size_in_points()
    assert all(t.get_fontsize() == small for t in legend.get_texts())


def test_plot_names_sigma_once_and_only_when_known(tmp_path: Path, saved_figures):
    first, second = two_logs(tmp_path)
    named = read_log(cohen_log(tmp_path / "c", "noise_1.00", [(0, 1, 1, 0.2), (1, 1, 1, 0.1)]), label="σ = 1 run")
    cohen = read_log(cohen_log(tmp_path / "d", "plain", [(0, 1, 1, 0.2), (1, 1, 1, 0.1)]))
    assert named.sigma == 1.0 and cohen.sigma is None
    plot_certified_accuracy([first, named, cohen], tmp_path / "names.png", envelope=False)
    (figure, _, _), = saved_figures
    assert drawn(figure.axes[0]) == [("a/noise_0.25 (σ=0.25)", 1.4, "-"), ("σ = 1 run", 1.4, "-"),
                                     ("d/plain", 1.4, "-")]
    assert figure.axes[0].get_title() == ""  # no title asked for


def test_plot_of_one_log_has_no_envelope_and_groups_replace_it(tmp_path: Path, saved_figures):
    first, second = two_logs(tmp_path)
    plot_certified_accuracy([first], tmp_path / "one.png")
    grid = np.linspace(0.0, 1.05 * 0.4, 2001)
    plot_certified_accuracy([first], tmp_path / "groups.png", groups=[("best", [first, second]), ("only b", [second])])
    (one, _, _), (groups, _, _) = saved_figures
    assert drawn(one.axes[0]) == [("a/noise_0.25 (σ=0.25)", 1.4, "-")]
    np.testing.assert_array_equal(one.axes[0].get_lines()[0].get_xdata(), grid)

    axes = groups.axes[0]
    assert drawn(axes) == [("a/noise_0.25 (σ=0.25)", 1.4, "-"), ("best", 1.4, "-"), ("only b", 1.4, "-")]
    grid = np.linspace(0.0, 1.05 * 0.9, 2001)  # the groups' logs count for the default range
    lines = axes.get_lines()
    for line in lines:
        np.testing.assert_array_equal(line.get_xdata(), grid)
    np.testing.assert_array_equal(lines[1].get_ydata(), np.maximum(certified_accuracy(first, grid),
                                                                   certified_accuracy(second, grid)))
    np.testing.assert_array_equal(lines[2].get_ydata(), certified_accuracy(second, grid))
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["a/noise_0.25 (σ=0.25)", "best", "only b"]


def test_plot_radius_range(tmp_path: Path, saved_figures):
    first, second = two_logs(tmp_path)
    abstains = read_log(cohen_log(tmp_path / "z", "noise_0.25", [(0, 1, -1, 0.0), (1, 1, -1, 0.0)]))
    plot_certified_accuracy([abstains], tmp_path / "zero.png")  # nothing certified: radii 0 to 1
    plot_certified_accuracy([first], tmp_path / "given.png", max_radius=0.5)
    limits = [figure.axes[0].get_xlim() for figure, _, _ in saved_figures]
    assert limits == [(0.0, 1.0), (0.0, 0.5)]
    np.testing.assert_array_equal(saved_figures[1][0].axes[0].get_lines()[0].get_xdata(), np.linspace(0, 0.5, 2001))
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(UserError) as err:
            plot_certified_accuracy([first], tmp_path / "bad.png", max_radius=bad)
        assert message(err) == f"max radius for the plot must be > 0, got {bad!r}"
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.parametrize("name, magic", [("c.svg", b"<?xml"), ("c.pdf", b"%PDF-"), ("C.PNG", b"\x89PNG")])
def test_plot_format_follows_the_suffix(tmp_path: Path, saved_figures, name, magic):
    first, _ = two_logs(tmp_path)
    out = plot_certified_accuracy([first], str(tmp_path / name))
    assert out == tmp_path / name and out.read_bytes().startswith(magic)
    assert saved_figures[0][2] == {"format": name.rsplit(".", 1)[1].lower()}


def test_plot_messages(tmp_path: Path):
    first, second = two_logs(tmp_path)
    other = read_log(cohen_log(tmp_path / "c", "noise_1.00", [(7, 1, 1, 0.4)]))
    empty = read_log(write(tmp_path, header_line(COHEN_COLUMNS), "empty.tsv"))
    cases = [
        (([], tmp_path / "p.png"), {}, "plot needs at least one certification log"),
        (([first, empty], tmp_path / "p.png"), {}, f"{empty.path}: log has no rows; certify some examples first"),
        (([first], tmp_path / "p.png"), {"groups": [("g", [empty])]},
         f"{empty.path}: log has no rows; certify some examples first"),
        (([first], tmp_path / "p.jpg"), {}, f"{tmp_path / 'p.jpg'}: plot file must end in .png, .pdf or .svg"),
        (([first, other], tmp_path / "p.png"), {},
         f"{first.path} and {other.path} certify different examples (2 idx only in the first, 1 only in the "
         f"second); an envelope needs the same test set in every log (or plot with envelope=False)"),
        (([], tmp_path / "p.png"), {"groups": [("g", [first, other])]},
         f"{first.path} and {other.path} certify different examples (2 idx only in the first, 1 only in the "
         f"second); an envelope needs the same test set in every log"),
    ]
    for args, kwargs, expected in cases:
        with pytest.raises(UserError) as err:
            plot_certified_accuracy(*args, **kwargs)
        assert message(err) == expected
    assert list(tmp_path.glob("p.*")) == []
