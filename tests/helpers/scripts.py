"""Importing the scripts beside the package (experiments/, benchmarks/), which are not installed modules."""

import contextlib
import importlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def scripts_from(folder: str):
    """`import_module` for the scripts in REPO/<folder> (and their imports of each other) while inside."""
    path = str(REPO / folder)
    sys.path.insert(0, path)
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(path)
