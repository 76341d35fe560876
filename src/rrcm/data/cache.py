"""A user-level cache of decoded images, so a JPEG archive is decoded once, not on every run.

Entries live in `$RRCM_CACHE/data/` (default `~/.cache/rrcm/data/`), never next to the source.
Each is an uncompressed `.npz` (loaded without pickle) of `images` uint8 (N, C, H, W), `labels`
int64 (N,) and `classes`, named by a hash of what it was decoded from (absolute path, size,
modification time, decoding options), so a changed source gets a new entry. A cache that cannot
be written only costs speed (a warning says so); an unreadable entry is decoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from rrcm.fileio import atomic_path

# Bump when the decoding changes, so old entries are not reused. 2: archive layouts and image sizes
# that were silently accepted before (an image outside the class folders, a giant image) are errors.
CACHE_FORMAT = 2


def cache_dir() -> Path:
    """`$RRCM_CACHE/data` if the variable is set, else `~/.cache/rrcm/data`."""
    base = os.environ.get("RRCM_CACHE") or os.path.join("~", ".cache", "rrcm")
    return Path(base).expanduser() / "data"


def source_signature(path: Path) -> dict[str, Any]:
    """What identifies a file's content cheaply: absolute path, size and mtime."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def cache_path(stem: str, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **key}, sort_keys=True).encode()).hexdigest()
    return cache_dir() / f"{stem}-{digest[:20]}.npz"


def load_cached(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]] | None:
    """(images, labels, classes) from a cache entry, or None if it is absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as entry:
            images, labels, classes = entry["images"], entry["labels"], tuple(str(c) for c in entry["classes"])
    except Exception:  # a damaged entry is just a cache miss
        return None
    if images.dtype != np.uint8 or images.ndim != 4 or labels.shape != (images.shape[0],):
        return None
    return images, labels.astype(np.int64, copy=False), classes


def read_summary(path: Path) -> tuple[int, tuple[str, ...], tuple[int, ...]] | None:
    """(number of images, classes, image shape (C, H, W)) of a cache entry, reading no pixel.

    None where `load_cached` would return None (absent, unreadable or malformed entry).
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as entry:
            labels, classes = entry["labels"], tuple(str(c) for c in entry["classes"])
            with entry.zip.open("images.npy") as member:  # the array's header only, not its data
                version = np.lib.format.read_magic(member)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read_header(member)
    except Exception:  # a damaged entry is just a cache miss
        return None
    if dtype != np.uint8 or len(shape) != 4 or labels.shape != (shape[0],):
        return None
    return int(shape[0]), classes, tuple(int(side) for side in shape[1:])


def save_cached(path: Path, images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> None:
    """Write a cache entry atomically; warn (never fail) if the cache folder is not writable."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as file:
            # A file object, because np.savez appends ".npz" to a path that lacks it.
            np.savez(file, images=images, labels=labels, classes=np.array(classes, dtype=np.str_))
    except OSError as error:
        warnings.warn(f"could not write the data cache {path} ({error}); set RRCM_CACHE to a writable folder", stacklevel=3)
