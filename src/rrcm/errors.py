"""User-facing errors.

A `UserError` carries one line that names the problem and the fix. The CLI prints it as
`rrcm: error: <message>` and exits with status 2, never with a traceback. `short_message` turns the
exception that caused it into text short enough to quote inside that one line.
"""


class UserError(Exception):
    """A mistake the user can fix (bad path, bad option, corrupt file, mismatched data...)."""

    exit_code = 2


def short_message(e: BaseException, limit: int = 160) -> str:
    """`str(e)` on one line: runs of whitespace (newlines included) collapsed to one space, and cut to
    at most `limit` characters, the last three of them "..." when it had to be cut."""
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
