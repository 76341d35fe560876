"""Mutants of rrcm.certlog, rrcm.checkpoint and rrcm.report that the suite missed: a torn log whose only
complete line is blank, and plots that must not depend on the user's matplotlib settings."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest

from rrcm.certlog import read_log
from rrcm.errors import UserError
from rrcm.report import plot_certified_accuracy

from tests.test_report import HANDMADE, write


def test_read_log_torn_line_after_a_blank_header_is_a_header_error(tmp_path: Path):
    # allow_partial_last_line drops the torn row; the blank first line is then all that is left, and it is
    # the header (not a blank line at the end to drop): a UserError about it, never an IndexError
    path = write(tmp_path, "\n0\t1\t1\t0.5", "torn.tsv")
    with pytest.raises(UserError) as err:
        read_log(path, allow_partial_last_line=True)
    assert str(err.value) == (f"{path}:1: header lacks column(s) idx, label, predict, radius, correct, time; "
                              f"expected a tab-separated header starting with: idx label predict radius correct "
                              f"time")


def test_plot_does_not_depend_on_the_users_savefig_format(tmp_path: Path):
    # the figure has an Agg canvas of its own: tight_layout measures text with it, whatever default format
    # a matplotlibrc names (a figure without it measures with that format's renderer, a different layout)
    log = read_log(write(tmp_path, HANDMADE, "noise_0.50"))
    default = plot_certified_accuracy([log], tmp_path / "default.png", title="certified accuracy")
    for fmt in ("pdf", "svg"):
        with matplotlib.rc_context({"savefig.format": fmt}):
            other = plot_certified_accuracy([log], tmp_path / f"with_{fmt}_default.png", title="certified accuracy")
        assert other.read_bytes() == default.read_bytes(), fmt
