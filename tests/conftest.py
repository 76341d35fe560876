"""Shared fixtures: small data and a tiny trained checkpoint, built once per test session."""

import os
import tempfile
import threading
from pathlib import Path

import pytest
import tqdm

# tqdm guards its output with a multiprocessing lock, a semaphore shared by every process forked after it
# exists. mutmut forks each mutant's test process from one parent; a child killed at its time limit while
# a progress bar held that lock left it held for every later child, which then waited forever (seen: every
# certify_dataset mutant a timeout after the first). A lock of this process's own cannot outlive it.
tqdm.tqdm.set_lock(threading.RLock())

# `--precision auto` caches its timing decisions under $XDG_CACHE_HOME/rrcm: tests get a cache of their
# own (children inherit it), never the user's, and never one another session wrote.
if not os.environ.get("RRCM_CACHE"):
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="rrcm-test-cache-")


def _find_shared() -> Path:
    """`../shared` beside the repository; also found from a copy of the tests one level deeper (mutmut's
    `mutants/tests/`), so the tests on the real data run there too."""
    here = Path(__file__).resolve()
    for folder in here.parents[1:4]:
        if (folder / "shared").is_dir():
            return folder / "shared"
    return here.parents[2] / "shared"


SHARED = _find_shared()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared is not present beside the repository")
    return SHARED


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A LeNet-5 trained for two epochs on digits with Gaussian noise σ = 0.5 (seconds on a CPU)."""
    from tests.helpers.fixture_cache import fixture_path

    return fixture_path("tiny_checkpoint", tmp_path_factory.mktemp("tiny_ckpt"))


@pytest.fixture
def cli_env() -> dict:
    """Environment for running `python -m rrcm` in a subprocess: one thread each, no re-exec."""
    env = dict(os.environ, OMP_NUM_THREADS="1", RRCM_NO_REEXEC="1", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def one_thread():
    """torch on one thread for the test (and back afterwards): float32 results that depend on how a
    kernel splits its work are then the same from run to run on one machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
