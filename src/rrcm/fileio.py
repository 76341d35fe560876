"""Atomic file output: a file is either absent or complete, never half-written.

Every file rrcm writes whole (checkpoints, training states, logs, JSON, plots) goes through `atomic_path`,
which gives it the permissions an ordinary `open()` would (0o666 & ~umask), and turns an operating-system
failure into an `OutputError`: one line naming what failed ("cannot write", "cannot create folder") and
the path the user gave, never a temporary name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError


class OutputError(UserError, OSError):
    """A file or folder rrcm writes could not be written. A `UserError` (one line: the operation, the path,
    the reason and the fix) and still an `OSError`, for callers that only warn on an unwritable file."""


def _hint(error: OSError, *, writing: bool = True) -> str:
    elsewhere = " or write elsewhere" if writing else ""  # not for an error that may come from a read
    if error.errno == errno.ENOSPC or error.errno == getattr(errno, "EDQUOT", None):
        return f"free some disk space{elsewhere}"
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"check its permissions{elsewhere}"
    if error.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return "a file stands where a folder is needed, or a folder where a file is; " + \
            ("choose another path" if writing else "check the path")
    return "check the path, its permissions and the free disk space"


def describe_os_error(error: OSError) -> str:
    """One line for an OSError rrcm did not anticipate: the reason, the path(s) if the system gave one.
    rrcm's own writes raise `OutputError` instead ("cannot write <path>: ..."); this one may come from a read
    or a write, so its hint suggests neither."""
    reason = error.strerror or str(error) or type(error).__name__
    hint = _hint(error, writing=False)
    if error.filename is not None and error.filename2 is not None:
        return f"{reason}: {error.filename} -> {error.filename2}; {hint}"
    if error.filename is not None:
        return f"{reason}: {error.filename}; {hint}"
    return f"{reason} (the operating system named no file); {hint}"


def output_error(operation: str, path: str | os.PathLike, error: OSError) -> OutputError:
    """`OutputError` saying "cannot <operation> <path>: <reason>; <fix>"."""
    reason = error.strerror or str(error) or type(error).__name__
    # One argument only: OSError's str() would otherwise be "[Errno n] ..." instead of the message.
    return OutputError(f"cannot {operation} {path}: {reason}; {_hint(error)}")


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error("create folder", folder, e) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, else delete it.

    The finished file gets 0o666 & ~umask. An OSError of the folder, the temporary file or the rename
    (and one raised in the body about the temporary file, or about no file, as a full disk does) becomes
    an `OutputError` naming `path`; other exceptions pass through unchanged.
    """
    path = Path(path)
    _make_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise output_error("write", path, e) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except OSError as e:
            if isinstance(e, OutputError) or e.filename not in (None, tmp, str(tmp_path)):
                raise
            raise output_error("write", path, e) from None
        try:
            # After the body: a writer may have replaced the temporary file with one of its own (safetensors
            # does, and creates it 0600). mkstemp's file is 0600 too.
            os.chmod(tmp_path, _file_mode())
            os.replace(tmp_path, path)
        except OSError as e:
            raise output_error("write", path, e) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def check_output_folder(folder: str | os.PathLike) -> None:
    """Refuse now, before any work, an output folder that cannot be created or written to. Creates nothing
    that stays: a folder that does not exist yet is tried in its nearest existing parent and removed."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"output folder {folder} is a file; give a folder (a new one, or one of an earlier run)")
    parent = folder
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot create folder {folder}: {parent} is a file, not a folder; choose another path")
    try:
        if parent == folder:
            fd, probe = tempfile.mkstemp(prefix=".rrcm-probe.", dir=folder)
            os.close(fd)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".rrcm-probe.", dir=parent))
    except OSError as e:
        raise output_error("write in" if parent == folder else "create folder", folder, e) from None


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
