"""MNIST from the original idx files (Y. LeCun's distribution), gzipped or not.

Files: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte`,
`t10k-labels-idx1-ubyte`, each with or without `.gz`, looked up one by one in `root`,
`root/truncated` and `root/MNIST/raw` (torchvision's layout), first match wins.

Files are stream-decompressed, so a gzip file that was cut short still yields every complete
image before the cut: those are kept (paired with the first labels) and a warning says how many
of the header's count are used. A wrong magic number, a corrupt gzip stream or image and label
files that do not belong together raise `UserError`.

`probe_mnist_split` gives the (info, count) the loader would give, with the same checks and
warnings, from the headers and the decompressed length of the image file (streamed and thrown
away, never held); only the small labels file is read.
"""

from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path
from typing import Iterator

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


def iter_file_bytes(path: Path) -> Iterator[bytes]:
    """The decompressed content of `path` (gzip detected by its magic bytes) in chunks of at most
    READ_CHUNK bytes, as far as it goes.

    A truncated gzip stream is not an error here: the caller decides what a short payload means.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(2)
            file.seek(0)
            if head != GZIP_MAGIC:
                while chunk := file.read(READ_CHUNK):
                    yield chunk
                return
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            while not decompressor.eof:  # ignore anything after the first gzip member
                compressed = decompressor.unconsumed_tail or file.read(READ_CHUNK)
                if not compressed:
                    break
                if piece := decompressor.decompress(compressed, READ_CHUNK):
                    yield piece
            if tail := decompressor.flush():
                yield tail
    except zlib.error as error:
        raise UserError(f"MNIST file {path} is not a valid gzip file ({error}): re-download it") from None
    except OSError as error:
        raise UserError(f"cannot read MNIST file {path} ({error.strerror or error}): check the path and permissions") from None


def read_file_bytes(path: Path) -> bytes:
    """The decompressed content of `path`, whole (see `iter_file_bytes`)."""
    return b"".join(iter_file_bytes(path))


def _idx_header(path: Path, head: bytes, ndim: int) -> tuple[int, ...]:
    """The dimensions in the header of an idx ubyte file with `ndim` dimensions (`head`: its first bytes)."""
    header_size = 4 + 4 * ndim
    if len(head) < header_size or head[0] != 0 or head[1] != 0 or head[2] != IDX_UBYTE or head[3] != ndim:
        found = head[:4].hex() if len(head) >= 4 else f"{len(head)} bytes"
        raise UserError(
            f"{path} is not an idx{ndim}-ubyte file (magic {found}, expected 0000080{ndim}): "
            "pass the original MNIST idx files"
        )
    return tuple(int(d) for d in np.frombuffer(head, dtype=">u4", count=ndim, offset=4))


def _complete_records(path: Path, dims: tuple[int, ...], payload_size: int) -> int:
    """How many whole records a payload of `payload_size` bytes holds; UserError if more than declared."""
    record_size = int(np.prod(dims[1:], dtype=np.int64))
    if payload_size > dims[0] * record_size:
        raise UserError(
            f"{path} holds {payload_size:,} bytes of data, more than its header's {dims}: "
            "the file is corrupt, re-download it"
        )
    return payload_size // record_size


def read_idx(path: Path, ndim: int) -> tuple[np.ndarray, int]:
    """The complete records of an idx ubyte file with `ndim` dimensions, and the count its header declares.

    Returns (array of shape (n_complete, *dims[1:]), dims[0]); n_complete < dims[0] means truncated.
    """
    data = read_file_bytes(path)
    dims = _idx_header(path, data, ndim)
    header_size = 4 + 4 * ndim
    complete = _complete_records(path, dims, len(data) - header_size)
    record_size = int(np.prod(dims[1:], dtype=np.int64))
    records = np.frombuffer(data, dtype=np.uint8, count=complete * record_size, offset=header_size)
    return records.reshape((complete,) + dims[1:]), dims[0]


def probe_idx(path: Path, ndim: int) -> tuple[tuple[int, ...], int]:
    """(header dimensions, number of complete records) of an idx file, keeping none of its data."""
    header_size = 4 + 4 * ndim
    head = b""
    length = 0
    for chunk in iter_file_bytes(path):
        if len(head) < header_size:
            head += chunk[: header_size - len(head)]
        length += len(chunk)
    dims = _idx_header(path, head, ndim)
    return dims, _complete_records(path, dims, length - header_size)


def _find_split_files(split: str, root: str | os.PathLike | None, image_size: int | None) -> tuple[Path, Path]:
    check_fixed_image_size("mnist", IMAGE_SIZE, image_size)
    root = require_data_dir("mnist", root, "the MNIST idx files (train-images-idx3-ubyte.gz, ...)")
    images_stem, labels_stem = FILE_STEMS[split]
    return find_idx_file(root, images_stem), find_idx_file(root, labels_stem)


def _check_split(
    split: str, images_path: Path, image_dims: tuple[int, ...], complete_images: int,
    labels_path: Path, labels: np.ndarray, declared_labels: int,
) -> int:
    """The number of examples the split gives, after the checks (and truncation warnings) of the loader."""
    declared_images = image_dims[0]
    if tuple(image_dims[1:]) != (IMAGE_SIZE, IMAGE_SIZE):
        raise UserError(
            f"{images_path} holds {image_dims[1]}x{image_dims[2]} images, MNIST's are 28x28: "
            "pass the original MNIST idx files"
        )
    if declared_images != declared_labels:
        raise UserError(
            f"{images_path} declares {declared_images:,} images but {labels_path} {declared_labels:,} labels: "
            "the files do not belong together, use the matching pair"
        )
    for path, kind, complete in ((images_path, "images", complete_images), (labels_path, "labels", len(labels))):
        if complete < declared_images:
            # Keep every complete record: a cut-short download still gives a usable (smaller) set.
            warnings.warn(
                f"MNIST {split} {kind} file is truncated: using {complete:,} of {declared_images:,} {kind} ({path})",
                stacklevel=4,
            )
    count = min(complete_images, len(labels))
    if count == 0:
        raise UserError(f"{images_path} holds no complete image: the file is corrupt, re-download it")
    if labels[:count].max() >= len(CLASSES):
        raise UserError(f"{labels_path} has label {labels[:count].max()}, MNIST's are 0..9: pass the original MNIST labels file")
    return count


def load_mnist_split(split: str, root: str | os.PathLike | None, *, image_size: int | None = None) -> InMemoryImageDataset:
    """The MNIST train or test split from the idx files in `root` (see the module docstring)."""
    images_path, labels_path = _find_split_files(split, root, image_size)
    images, declared_images = read_idx(images_path, ndim=3)
    labels, declared_labels = read_idx(labels_path, ndim=1)
    image_dims = (declared_images, *images.shape[1:])
    count = _check_split(split, images_path, image_dims, len(images), labels_path, labels, declared_labels)
    image_tensor = torch.from_numpy(images[:count].copy()).unsqueeze(1)
    return InMemoryImageDataset(image_tensor, torch.from_numpy(labels[:count].astype(np.int64)), info())


def probe_mnist_split(split: str, root: str | os.PathLike | None, *, image_size: int | None = None) -> tuple[DataInfo, int]:
    """(info, number of examples) that `load_mnist_split` gives, holding no image (module docstring)."""
    images_path, labels_path = _find_split_files(split, root, image_size)
    image_dims, complete_images = probe_idx(images_path, ndim=3)
    labels, declared_labels = read_idx(labels_path, ndim=1)
    return info(), _check_split(split, images_path, image_dims, complete_images, labels_path, labels, declared_labels)
