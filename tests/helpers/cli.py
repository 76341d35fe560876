"""Running `rrcm` in-process and checking its one-line errors (shared by the CLI-facing tests)."""

import re

from rrcm.cli import main


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, pattern):
    """Exit status 2, one line `rrcm: error: ...` matching `pattern`, no traceback."""
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rrcm: error: ")
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), lines[0]
