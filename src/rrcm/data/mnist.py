"""MNIST from the original idx files (Y. LeCun's distribution), gzipped or not.

Files: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
`t10k-labels-idx1-ubyte`, each with or without `.gz`, looked up one by one in `root`,
`root/truncated` and `root/MNIST/raw` (torchvision's layout), first match wins.

Files are stream-decompressed, so a gzip file that was cut short still yields every complete
image before the cut: those are kept (paired with the first labels) and a warning says how many
of the header's count are used. A wrong magic number, a corrupt gzip stream or image and label
files that do not belong together raise `UserError`.
"""

from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from rrcm.data.base import DataInfo, InMemoryImageDataset, check_fixed_image_size, require_data_dir
from rrcm.errors import UserError

IMAGE_SIZE = 28
CLASSES = tuple(str(digit) for digit in range(10))
MEAN = (0.1307,)
STD = (0.3081,)
SEARCH_SUBDIRS = (".", "truncated", os.path.join("MNIST", "raw"))
FILE_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_UBYTE = 0x08  # the idx type code of unsigned bytes, the only one MNIST uses
GZIP_MAGIC = b"\x1f\x8b"
READ_CHUNK = 1 << 20


def info() -> DataInfo:
    return DataInfo(
        name="mnist", num_classes=len(CLASSES), channels=1, image_size=IMAGE_SIZE,
        classes=CLASSES, mean=MEAN, std=STD,
    )


def find_idx_file(root: Path, stem: str) -> Path:
    """The first of `<dir>/<stem>.gz`, `<dir>/<stem>` over the search folders."""
    candidates = [root / subdir / name for subdir in SEARCH_SUBDIRS for name in (stem + ".gz", stem)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise UserError(
        f"MNIST file {stem}(.gz) not found in {root}, {root}/truncated or {root}/MNIST/raw: "
        f"put the four idx files ({', '.join(s for pair in FILE_STEMS.values() for s in pair)}) in one of them"
    )


def read_file_bytes(path: Path) -> bytes:
    """The decompressed content of `path` (gzip detected by its magic bytes), as far as it goes.

    A truncated gzip stream is not an error here: the caller decides what a short payload means.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(2)
            file.seek(0)
            if head != GZIP_MAGIC:
                return file.read()
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            pieces = []
            while chunk := file.read(READ_CHUNK):
                pieces.append(decompressor.decompress(chunk))
                if decompressor.eof:  # ignore anything after the first gzip member
                    break
            pieces.append(decompressor.flush())
    except zlib.error as error:
        raise UserError(f"MNIST file {path} is not a valid gzip file ({error}): re-download it") from None
    except OSError as error:
        raise UserError(f"cannot read MNIST file {path} ({error.strerror or error}): check the path and permissions") from None
    return b"".join(pieces)


def read_idx(path: Path, ndim: int) -> tuple[np.ndarray, int]:
    """The complete records of an idx ubyte file with `ndim` dimensions, and the count its header declares.

    Returns (array of shape (n_complete, *dims[1:]), dims[0]); n_complete < dims[0] means truncated.
    """
    data = read_file_bytes(path)
    header_size = 4 + 4 * ndim
    if len(data) < header_size or data[0] != 0 or data[1] != 0 or data[2] != IDX_UBYTE or data[3] != ndim:
        found = data[:4].hex() if len(data) >= 4 else f"{len(data)} bytes"
        raise UserError(
            f"{path} is not an idx{ndim}-ubyte file (magic {found}, expected 0000080{ndim}): "
            "pass the original MNIST idx files"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    declared = dims[0]
    record_size = int(np.prod(dims[1:], dtype=np.int64))
    payload_size = len(data) - header_size
    if payload_size > declared * record_size:
        raise UserError(
            f"{path} holds {payload_size:,} bytes of data, more than its header's {dims}: "
            "the file is corrupt, re-download it"
        )
    complete = payload_size // record_size
    records = np.frombuffer(data, dtype=np.uint8, count=complete * record_size, offset=header_size)
    return records.reshape((complete,) + dims[1:]), declared


def load_mnist_split(split: str, root: str | os.PathLike | None, *, image_size: int | None = None) -> InMemoryImageDataset:
    """The MNIST train or test split from the idx files in `root` (see the module docstring)."""
    check_fixed_image_size("mnist", IMAGE_SIZE, image_size)
    root = require_data_dir("mnist", root, "the MNIST idx files (train-images-idx3-ubyte.gz, ...)")
    images_stem, labels_stem = FILE_STEMS[split]
    images_path, labels_path = find_idx_file(root, images_stem), find_idx_file(root, labels_stem)
    images, declared_images = read_idx(images_path, ndim=3)
    labels, declared_labels = read_idx(labels_path, ndim=1)

    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise UserError(
            f"{images_path} holds {images.shape[1]}x{images.shape[2]} images, MNIST's are 28x28: "
            "pass the original MNIST idx files"
        )
    if declared_images != declared_labels:
        raise UserError(
            f"{images_path} declares {declared_images:,} images but {labels_path} {declared_labels:,} labels: "
            "the files do not belong together, use the matching pair"
        )
    for path, kind, complete in ((images_path, "images", len(images)), (labels_path, "labels", len(labels))):
        if complete < declared_images:
            # Keep every complete record: a cut-short download still gives a usable (smaller) set.
            warnings.warn(
                f"MNIST {split} {kind} file is truncated: using {complete:,} of {declared_images:,} {kind} ({path})",
                stacklevel=3,
            )
    count = min(len(images), len(labels))
    if count == 0:
        raise UserError(f"{images_path} holds no complete image: the file is corrupt, re-download it")
    labels = labels[:count].astype(np.int64)
    if labels.max() >= len(CLASSES):
        raise UserError(f"{labels_path} has label {labels.max()}, MNIST's are 0..9: pass the original MNIST labels file")
    image_tensor = torch.from_numpy(images[:count].copy()).unsqueeze(1)
    return InMemoryImageDataset(image_tensor, torch.from_numpy(labels), info())
