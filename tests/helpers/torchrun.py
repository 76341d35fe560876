"""Launching processes under torchrun for the multi-process tests, so that a failing rank explains itself.

Every child runs the code this test session imported (PYTHONPATH starts with the folder holding the
`rrcm` package), one thread each, with Python's fault handler on (a SIGABRT or SIGSEGV prints every
thread's Python stack) and C++ stack traces in torch's error messages. torchrun writes each rank's
stdout and stderr to its own file (`--log-dir`, `--redirects 3`, and `--tee 3` to keep them on the
console as well); when the launch fails or times out, the assertion message carries those files, so
a rank that died with no message on the console still shows what it printed and where it stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import rrcm

REPO = Path(__file__).resolve().parents[2]
SOURCE_ROOT = Path(rrcm.__file__).resolve().parents[1]
TAIL = 6000  # characters of each log file shown on failure


def child_env(base: Mapping[str, str] | None = None, *, extra_path: Iterable[str | os.PathLike] = ()) -> dict:
    """`base` (default: this process's environment) set up for a child that must report how it failed."""
    env = dict(os.environ if base is None else base)
    path = [str(SOURCE_ROOT), *map(str, extra_path)]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env.update(PYTHONPATH=os.pathsep.join(path), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PYTHONFAULTHANDLER="1", TORCH_SHOW_CPP_STACKTRACES="1")
    return env


def torchrun(args: Sequence[str | os.PathLike], log_dir: str | os.PathLike, *, nproc: int = 2,
             env: Mapping[str, str] | None = None, extra_path: Iterable[str | os.PathLike] = (),
             cwd: str | os.PathLike | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `torchrun --standalone --nproc-per-node nproc ARGS` (ARGS: `-m rrcm ...` or a script and its
    arguments) and return the finished process; any non-zero exit or a timeout fails the calling test
    with every rank's own output."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "--log-dir", str(log_dir), "--redirects", "3", "--tee", "3", *map(str, args)]
    # its own session, so that on a timeout the launcher and its workers are stopped together
    proc = subprocess.Popen(cmd, env=child_env(env, extra_path=extra_path), cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = _stop(proc)
        raise AssertionError(f"torchrun did not finish within {timeout:g} s\n"
                             + failure_report(cmd, proc.returncode, stdout, stderr, log_dir)) from None
    if proc.returncode != 0:
        raise AssertionError(failure_report(cmd, proc.returncode, stdout, stderr, log_dir))
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _stop(proc: subprocess.Popen) -> tuple[str, str]:
    """Stop a launch that hangs, showing where: SIGABRT to each worker (torchrun starts them in their own
    sessions; the fault handler writes every thread's stack to that rank's stderr log), then SIGTERM and
    SIGKILL to the launcher's process group."""
    for pid in _children(proc.pid):
        try:
            os.kill(pid, signal.SIGABRT)
        except ProcessLookupError:
            pass
    for sig, grace in ((None, 10), (signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        if sig is not None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            return proc.communicate(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return "", ""


def _children(pid: int) -> list[int]:
    """The direct children of `pid` (Linux /proc; none elsewhere)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(c) for c in task.read_text().split()]
        except OSError:
            pass
    return found


def exit_description(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"{code} ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return str(code)


def failure_report(cmd: Sequence[str], code: int | None, stdout: str, stderr: str, log_dir: Path) -> str:
    """The command, its exit status, the tail of torchrun's own output and every rank's log files."""
    parts = [f"command: {' '.join(cmd)}", f"torchrun exit status: {exit_description(code)}",
             f"--- torchrun stdout (tail) ---\n{(stdout or '')[-TAIL:]}",
             f"--- torchrun stderr (tail) ---\n{(stderr or '')[-TAIL:]}"]
    logs = sorted(p for p in log_dir.rglob("*") if p.is_file())
    if not logs:
        parts.append(f"(no per-rank logs under {log_dir})")
    for path in logs:  # <run id>/attempt_<k>/<local rank>/{stdout,stderr}.log, and error.json with @record
        text = path.read_text(errors="replace")
        parts.append(f"--- {path.relative_to(log_dir)} ({len(text)} characters, tail) ---\n{text[-TAIL:]}")
    return "\n".join(parts)
