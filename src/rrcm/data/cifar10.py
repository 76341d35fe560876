"""CIFAR-10 from the original python-pickle batches or from an ImageFolder copy (folder or archive).

`root` may hold, checked in this order (first match wins, per split):

1. the pickle batches (`data_batch_1`..`data_batch_5`, `test_batch`, optional `batches.meta`), in
   `root` itself or in `root/cifar-10-batches-py/`;
2. `root/<split>/<class>/<image>` (e.g. an extracted JPEG copy);
3. `root/<split>.tar.gz` (also `.tgz`, `.tar`) holding `<split>/<class>/<image>`.

Pickles are read with a restricted unpickler that resolves only the few numpy globals a batch is
made of; anything else (a pickle that would call `os.system`, say) is refused with `UserError`.
Folders and archives are decoded once into memory, images ordered by class then file name, and
cached (see `rrcm.data.cache`). So index i is not the same image in the pickle format (original
interleaved order) and in an ImageFolder copy (grouped by class): subsets taken by index, such as
every 20th test image, differ between the two. Classes are always the canonical CIFAR-10 order; class names from
`batches.meta` or from the class folders must match it exactly.
"""

from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rrcm.data import cache
from rrcm.data.base import DataInfo, InMemoryImageDataset, check_fixed_image_size, require_data_dir
from rrcm.data.imagefolder import (
    ARCHIVE_SUFFIXES,
    decode_image_archive,
    decode_image_tree,
    load_decoded_cached,
    stack_decoded,
    tree_signature,
)
from rrcm.errors import UserError

IMAGE_SIZE = 32
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Alphabetical order equals label order, so sorted class folders give the canonical labels.
assert tuple(sorted(CLASSES)) == CLASSES
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
BATCHES_FOLDER = "cifar-10-batches-py"
BATCH_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
META_FILE = "batches.meta"
PIXELS_PER_IMAGE = 3 * IMAGE_SIZE * IMAGE_SIZE
ORIGINAL_ARCHIVE = "cifar-10-python.tar.gz"
FIX_HINT = f"re-download {ORIGINAL_ARCHIVE} and extract it again"


def info(classes: tuple[str, ...] = CLASSES) -> DataInfo:
    return DataInfo(
        name="cifar10", num_classes=len(classes), channels=3, image_size=IMAGE_SIZE,
        classes=classes, mean=MEAN, std=STD,
    )


# ----------------------------------------------------------------------------------------------
# pickle batches


def _numpy_reconstruct() -> Any:
    try:  # numpy >= 2 moved it; importing numpy.core there only warns
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_scalar() -> Any:
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core.multiarray import scalar
    return scalar


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as Python 3 pickles bytes at protocol 2, and only for that use."""
    if encoding not in ("latin1", "latin-1"):
        raise UserError(
            f"refusing to unpickle _codecs.encode with codec {encoding!r}: a CIFAR-10 batch only uses latin1, "
            f"so this is not a genuine CIFAR-10 file; {FIX_HINT}"
        )
    return codecs.encode(text, "latin1")


# (module, name) -> the object it may resolve to; nothing else is ever imported.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, lists, dicts and strings, and nothing else."""

    def __init__(self, file: Any, source: Path):
        super().__init__(file, encoding="bytes")  # Python 2 pickles: str -> bytes, arrays stay raw
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        resolve = _ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise UserError(
                f"refusing to unpickle {module}.{name} from {self.source}: a CIFAR-10 batch holds only "
                f"numpy arrays, so this is not a genuine CIFAR-10 file; {FIX_HINT}"
            )
        return resolve()


def _text(value: Any) -> Any:
    return value.decode("latin1") if isinstance(value, bytes) else value


def unpickle_restricted(path: Path) -> dict[str, Any]:
    """The dict in a CIFAR pickle file, keys as str (Python 2 files give bytes keys)."""
    try:
        with open(path, "rb") as file:
            content = RestrictedUnpickler(file, path).load()
    except UserError:
        raise
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror or error}): check the path and permissions") from None
    except Exception as error:  # unpickling damaged bytes can fail in many ways
        raise UserError(f"CIFAR-10 file {path} is truncated or corrupt ({error}): {FIX_HINT}") from None
    if not isinstance(content, dict):
        raise UserError(f"{path} holds a {type(content).__name__}, not a CIFAR-10 batch dict: {FIX_HINT}")
    return {_text(key): value for key, value in content.items()}


def read_class_names(meta_path: Path) -> tuple[str, ...]:
    """The `label_names` of a CIFAR-10 `batches.meta` file."""
    meta = unpickle_restricted(meta_path)
    names = meta.get("label_names")
    if not isinstance(names, list) or not all(isinstance(name, (bytes, str)) for name in names):
        raise UserError(f"{meta_path} has no label_names list, so it is not a CIFAR-10 batches.meta: {FIX_HINT}")
    return tuple(_text(name) for name in names)


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of one CIFAR-10 batch file."""
    batch = unpickle_restricted(path)
    if "data" not in batch or "labels" not in batch:
        raise UserError(f"{path} has keys {sorted(map(str, batch))}, not CIFAR-10's 'data' and 'labels': pass CIFAR-10 batches")
    data, labels = batch["data"], np.asarray(batch["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS_PER_IMAGE:
        shape = getattr(data, "shape", None)
        raise UserError(f"{path} 'data' is {type(data).__name__} {shape}, not uint8 (N, 3072): {FIX_HINT}")
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu" or (labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES))):
        raise UserError(f"{path} has {labels.shape} labels for {data.shape[0]} images, or labels outside 0..9: {FIX_HINT}")
    # Rows are channel-major (R plane, G plane, B plane), each 32x32 row-major: exactly (3, 32, 32).
    images = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
    return images, labels.astype(np.int64)


def check_class_names(names: tuple[str, ...], source: Path | str) -> None:
    if names != CLASSES:
        raise UserError(
            f"class names in {source} are {list(names)}, not CIFAR-10's {list(CLASSES)}: "
            "pass CIFAR-10 data (for other class sets use the imagefolder dataset)"
        )


def load_pickle_split(batches_dir: Path, split: str) -> InMemoryImageDataset:
    """The split from the pickle batches in `batches_dir`."""
    paths = [batches_dir / name for name in BATCH_FILES[split]]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise UserError(
            f"CIFAR-10 {split} batch file(s) {', '.join(missing)} missing in {batches_dir}: expected "
            f"{', '.join(BATCH_FILES[split])} ({FIX_HINT})"
        )
    meta_path = batches_dir / META_FILE
    if meta_path.is_file():
        check_class_names(read_class_names(meta_path), meta_path)
    batches = [read_batch(path) for path in paths]
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return InMemoryImageDataset(torch.from_numpy(images), torch.from_numpy(labels), info())


# ----------------------------------------------------------------------------------------------
# ImageFolder copies


def _in_memory(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], source: Path) -> InMemoryImageDataset:
    check_class_names(classes, source)
    if images.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise UserError(f"images in {source} are {images.shape[2]}x{images.shape[3]}, CIFAR-10's are 32x32: pass CIFAR-10 data")
    return InMemoryImageDataset(torch.from_numpy(images), torch.from_numpy(labels), info())


def load_folder_split(tree: Path, split: str) -> InMemoryImageDataset:
    """The split from `tree/<class>/<image>`, decoded into memory (cached)."""
    key = {"kind": "cifar10-folder", "source": tree_signature(tree)}
    images, labels, classes = load_decoded_cached(
        f"cifar10-{split}", key, lambda: decode_image_tree(tree, None, f"decoding {tree}"), tree
    )
    return _in_memory(images, labels, classes, tree)


def load_archive_split(archive: Path, split: str, *, limit: int | None = None) -> InMemoryImageDataset:
    """The split from a `<split>.tar.gz` ImageFolder archive, decoded into memory (cached).

    `limit` decodes only the first images of the archive (for tests) and bypasses the cache.
    """

    def decode() -> list:
        return decode_image_archive(archive, None, f"decoding {archive.name}", limit=limit)

    if limit is None:
        key = {"kind": "cifar10-archive", "source": cache.source_signature(archive)}
        images, labels, classes = load_decoded_cached(f"cifar10-{split}", key, decode, archive)
        return _in_memory(images, labels, classes, archive)
    images, labels, classes = stack_decoded(decode(), archive)
    # A prefix of the archive may hold only some classes: map its labels into the canonical list.
    if not set(classes) <= set(CLASSES):
        check_class_names(classes, archive)
    labels = np.array([CLASSES.index(classes[label]) for label in labels], dtype=np.int64)
    return _in_memory(images, labels, CLASSES, archive)


# ----------------------------------------------------------------------------------------------
# the dataset


def find_cifar10_source(root: Path, split: str) -> tuple[str, Path]:
    """("pickle" | "folder" | "archive", path) for the split (order in the module docstring)."""
    for folder in (root, root / BATCHES_FOLDER):
        markers = (*BATCH_FILES["train"], *BATCH_FILES["test"], META_FILE)
        if folder.is_dir() and any((folder / marker).is_file() for marker in markers):
            return "pickle", folder
    if (root / split).is_dir():
        return "folder", root / split
    for suffix in ARCHIVE_SUFFIXES:
        if (root / (split + suffix)).is_file():
            return "archive", root / (split + suffix)
    if (root / ORIGINAL_ARCHIVE).is_file():
        raise UserError(f"found {ORIGINAL_ARCHIVE} in {root}: extract it (tar xzf {ORIGINAL_ARCHIVE}) and pass the same folder")
    raise UserError(
        f"no CIFAR-10 {split} data in {root}: expected {BATCHES_FOLDER}/ (data_batch_1..5, test_batch), "
        f"{split}/<class>/<images>, or {split}.tar.gz"
    )


def load_cifar10_split(split: str, root: str | os.PathLike | None, *, image_size: int | None = None) -> InMemoryImageDataset:
    """The CIFAR-10 train or test split from `root` (formats in the module docstring)."""
    check_fixed_image_size("cifar10", IMAGE_SIZE, image_size)
    root = require_data_dir("cifar10", root, f"{BATCHES_FOLDER}/, {split}/<class>/ or {split}.tar.gz")
    kind, source = find_cifar10_source(root, split)
    if kind == "pickle":
        return load_pickle_split(source, split)
    if kind == "folder":
        return load_folder_split(source, split)
    return load_archive_split(source, split)
