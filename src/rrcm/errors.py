"""User-facing errors.

A `UserError` carries one line that names the problem and the fix. The CLI prints it as
`rrcm: error: <message>` and exits with status 2, never with a traceback.
"""


class UserError(Exception):
    """A mistake the user can fix (bad path, bad option, corrupt file, mismatched data...)."""

    exit_code = 2


def require(condition: bool, message: str) -> None:
    """Raise `UserError(message)` unless `condition` holds."""
    if not condition:
        raise UserError(message)
