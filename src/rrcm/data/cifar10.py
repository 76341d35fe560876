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
`batches.meta` or from the class folders must match it exactly. Archives follow the layout and
limits of `rrcm.data.imagefolder` (streamed, every image in a class folder beside the first one's);
an image that is not 32x32 is refused from its header, before it is decoded.

`probe_cifar10_split` gives the (info, count) the loader would give without reading any pixel:
pickle batches are walked opcode by opcode (`scan_batch`), seeking over the pixel bytes; folders
and archives are counted by file name (or from the cached decode).
"""

from __future__ import annotations

import codecs
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rrcm.data import cache
from rrcm.data.base import DataInfo, InMemoryImageDataset, check_fixed_image_size, require_data_dir
from rrcm.data.imagefolder import (
    ARCHIVE_SUFFIXES,
    count_archive_images,
    decode_image_archive,
    decode_image_tree,
    load_decoded_cached,
    probe_decoded_cached,
    scan_image_tree,
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


def _check_batch(path: Path, batch: dict[str, Any]) -> tuple[Any, np.ndarray]:
    """(data, labels int array) of an unpickled batch, after the checks every reader makes."""
    if "data" not in batch or "labels" not in batch:
        raise UserError(f"{path} has keys {sorted(map(str, batch))}, not CIFAR-10's 'data' and 'labels': pass CIFAR-10 batches")
    data, labels = batch["data"], np.asarray(batch["labels"])
    if (
        not isinstance(data, (np.ndarray, _ArrayHeader)) or data.dtype != np.uint8 or data.ndim != 2
        or data.shape[1] != PIXELS_PER_IMAGE
    ):
        shape = getattr(data, "shape", None)
        kind = "ndarray" if isinstance(data, _ArrayHeader) else type(data).__name__
        raise UserError(f"{path} 'data' is {kind} {shape}, not uint8 (N, 3072): {FIX_HINT}")
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu" or (labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES))):
        raise UserError(f"{path} has {labels.shape} labels for {data.shape[0]} images, or labels outside 0..9: {FIX_HINT}")
    return data, labels


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 3, 32, 32), labels int64 (N,)) of one CIFAR-10 batch file."""
    data, labels = _check_batch(path, unpickle_restricted(path))
    # Rows are channel-major (R plane, G plane, B plane), each 32x32 row-major: exactly (3, 32, 32).
    images = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
    return images, labels.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# pickle batches without their pixels (for probe_cifar10_split)

SKIP_PAYLOAD_BYTES = 1 << 20  # strings longer than this (the pixels) are seeked over by scan_batch, never read


class _Skipped:
    """A string or bytes payload that scan_batch seeked over: only its length (if known) is kept."""

    def __init__(self, size: int | None):
        self.size = size


class _ArrayHeader:
    """What scan_batch knows of an ndarray whose bytes it skipped: shape and dtype."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype):
        self.shape, self.dtype, self.ndim = tuple(shape), dtype, len(shape)


class _Unsupported(Exception):
    """An opcode or construct scan_batch does not follow: unpickle the file instead."""


def _truncated(path: Path, what: str = "pickle data was truncated") -> UserError:
    return UserError(f"CIFAR-10 file {path} is truncated or corrupt ({what}): {FIX_HINT}")


def _has_skipped(value: Any) -> bool:
    if isinstance(value, (_Skipped, _ArrayHeader)):
        return True
    return isinstance(value, (tuple, list)) and any(_has_skipped(item) for item in value)


class _BatchScanner:
    """A stack machine over the opcodes CIFAR-10 batches use (pickle protocols 0-4, a subset).

    It resolves globals exactly as RestrictedUnpickler does (the same refusals), calls the allowed
    numpy functions on small arguments as an unpickler would, and seeks over strings longer than
    SKIP_PAYLOAD_BYTES: an ndarray built from such a string becomes an `_ArrayHeader`.
    """

    def __init__(self, file: Any, path: Path, size: int):
        self.file, self.path, self.size = file, path, size
        self.restricted = RestrictedUnpickler(file, path)

    def read(self, count: int) -> bytes:
        data = self.file.read(count)
        if len(data) < count:
            raise _truncated(self.path)
        return data

    def readline(self) -> bytes:
        line = self.file.readline()
        if not line.endswith(b"\n"):
            raise _truncated(self.path)
        return line[:-1]

    def unpack(self, fmt: str) -> int:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def payload(self, count: int, text: bool) -> Any:
        if count < 0:
            raise _truncated(self.path, "negative string length")
        if count > SKIP_PAYLOAD_BYTES:
            if self.file.tell() + count > self.size:
                raise _truncated(self.path)
            self.file.seek(count, os.SEEK_CUR)
            return _Skipped(None if text else count)  # UTF-8 bytes do not tell the latin1 length
        data = self.read(count)
        return data.decode("utf-8", "surrogatepass") if text else data

    def call(self, function: Any, args: Any) -> Any:
        if not isinstance(args, tuple):
            raise _Unsupported
        if function is _latin1_encode and args and isinstance(args[0], _Skipped):
            _latin1_encode("", *args[1:])  # the same refusal of other codecs
            return _Skipped(args[0].size)
        if _has_skipped(args):
            raise _Unsupported
        return function(*args)

    def build(self, target: Any, state: Any) -> Any:
        if isinstance(target, np.ndarray) and isinstance(state, tuple) and len(state) in (4, 5) and isinstance(state[-1], _Skipped):
            shape, dtype, raw = state[-4], state[-3], state[-1]
            if not isinstance(dtype, np.dtype) or not isinstance(shape, tuple) or not all(isinstance(side, int) for side in shape):
                raise _Unsupported
            if raw.size is not None and raw.size != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise _truncated(self.path, "the data array's bytes do not match its shape")
            return _ArrayHeader(shape, dtype)
        if _has_skipped(state) or not hasattr(target, "__setstate__"):
            raise _Unsupported
        target.__setstate__(state)
        return target

    def load(self) -> Any:
        """Follow the opcodes up to STOP and return the value they build."""
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []  # the stacks that MARKs set aside
        self.memo: dict[int, Any] = {}
        while True:
            op = self.read(1)
            if op == b".":  # STOP
                return self.stack.pop()
            if op == b"\x80":  # PROTO
                self.read(1)
            elif op == b"\x95":  # FRAME: its opcodes follow inline
                self.read(8)
            elif op in _CONTAINER_OPS:
                self._container(op)
            elif op in _VALUE_OPS:
                self.stack.append(self._value(op))
            elif op in _MEMO_OPS:
                self._memo(op)
            elif op in _OBJECT_OPS:
                self._object(op)
            else:
                raise _Unsupported

    def _pop_mark(self) -> list[Any]:
        """The items pushed since the last MARK; the stack from before it is restored."""
        items, self.stack = self.stack, self.marks.pop()
        return items

    def _container(self, op: bytes) -> None:
        """MARK and the opcodes that build or fill tuples, lists and dicts."""
        stack = self.stack
        if op == b"(":  # MARK
            self.marks.append(stack)
            self.stack = []
        elif op == b"}":
            stack.append({})
        elif op == b"]":
            stack.append([])
        elif op == b")":
            stack.append(())
        elif op == b"t":
            items = self._pop_mark()  # before `self.stack.append`, which would bind the inner list
            self.stack.append(tuple(items))
        elif op in (b"\x85", b"\x86", b"\x87"):  # TUPLE1..3
            count = op[0] - 0x84
            items = tuple(stack[-count:])
            del stack[-count:]
            if len(items) != count:
                raise IndexError("stack underflow")
            stack.append(items)
        elif op == b"l":
            items = self._pop_mark()
            self.stack.append(items)
        elif op == b"d":
            items = self._pop_mark()
            self.stack.append(dict(zip(items[::2], items[1::2])))
        elif op == b"a":
            value = stack.pop()
            stack[-1].append(value)
        elif op == b"e":
            items = self._pop_mark()
            self.stack[-1].extend(items)
        elif op == b"s":
            value, key = stack.pop(), stack.pop()
            stack[-1][key] = value
        else:  # b"u"
            items = self._pop_mark()
            self.stack[-1].update(zip(items[::2], items[1::2]))

    def _value(self, op: bytes) -> Any:
        """The constant, number or string (or `_Skipped` payload) that a value opcode pushes."""
        if op == b"N":
            return None
        if op in (b"\x88", b"\x89"):
            return op == b"\x88"
        if op == b"J":
            return self.unpack("<i")
        if op == b"K":
            return self.read(1)[0]
        if op == b"M":
            return self.unpack("<H")
        if op == b"\x8a":  # LONG1
            return int.from_bytes(self.read(self.read(1)[0]), "little", signed=True)
        if op == b"G":
            return self.unpack(">d")
        if op == b"T":  # BINSTRING: bytes, as RestrictedUnpickler reads Python 2 str
            return self.payload(self.unpack("<i"), text=False)
        if op in (b"U", b"C"):  # SHORT_BINSTRING, SHORT_BINBYTES
            return self.payload(self.read(1)[0], text=False)
        if op == b"B":
            return self.payload(self.unpack("<I"), text=False)
        if op == b"\x8e":
            return self.payload(self.unpack("<Q"), text=False)
        if op == b"X":
            return self.payload(self.unpack("<I"), text=True)
        if op == b"\x8c":
            return self.payload(self.read(1)[0], text=True)
        return self.payload(self.unpack("<Q"), text=True)  # b"\x8d"

    def _memo(self, op: bytes) -> None:
        """Store the top of the stack in the memo, or push a memoised value."""
        if op == b"q":
            self.memo[self.read(1)[0]] = self.stack[-1]
        elif op == b"r":
            self.memo[self.unpack("<I")] = self.stack[-1]
        elif op == b"\x94":  # MEMOIZE
            self.memo[len(self.memo)] = self.stack[-1]
        elif op == b"h":
            self.stack.append(self.memo[self.read(1)[0]])
        else:  # b"j"
            self.stack.append(self.memo[self.unpack("<I")])

    def _object(self, op: bytes) -> None:
        """Globals (resolved as RestrictedUnpickler does), calls and BUILD."""
        stack = self.stack
        if op == b"c":  # GLOBAL
            module = self.readline().decode("utf-8")
            name = self.readline().decode("utf-8")
            stack.append(self.restricted.find_class(module, name))
        elif op == b"\x93":  # STACK_GLOBAL
            name, module = stack.pop(), stack.pop()
            if not isinstance(module, str) or not isinstance(name, str):
                raise _Unsupported
            stack.append(self.restricted.find_class(module, name))
        elif op == b"R":  # REDUCE
            args, function = stack.pop(), stack.pop()
            stack.append(self.call(function, args))
        else:  # b"b", BUILD
            state = stack.pop()
            stack[-1] = self.build(stack[-1], state)


# the opcodes each step of _BatchScanner.load follows (PROTO, FRAME and STOP it handles itself)
_CONTAINER_OPS = frozenset((b"(", b"}", b"]", b")", b"t", b"\x85", b"\x86", b"\x87", b"l", b"d", b"a", b"e",
                            b"s", b"u"))
_VALUE_OPS = frozenset((b"N", b"\x88", b"\x89", b"J", b"K", b"M", b"\x8a", b"G", b"T", b"U", b"C", b"B", b"\x8e",
                        b"X", b"\x8c", b"\x8d"))
_MEMO_OPS = frozenset((b"q", b"r", b"\x94", b"h", b"j"))
_OBJECT_OPS = frozenset((b"c", b"\x93", b"R", b"b"))


def scan_batch(path: Path) -> int | None:
    """The number of images of one CIFAR-10 batch file, reading its structure but not its pixels.

    Raises the UserErrors `read_batch` raises for the same file (missing keys, wrong shape, bad
    labels, refused globals, truncation); None if the file uses pickle opcodes this scanner does
    not follow, in which case the caller unpickles it.
    """
    try:
        with open(path, "rb") as file:
            content = _BatchScanner(file, path, os.fstat(file.fileno()).st_size).load()
    except (UserError, _Unsupported) as error:
        if isinstance(error, _Unsupported):
            return None
        raise
    except OSError as error:
        raise UserError(f"cannot read {path} ({error.strerror or error}): check the path and permissions") from None
    except Exception as error:  # damaged opcodes: underflow, bad memo index, numpy refusing its arguments
        raise _truncated(path, str(error) or type(error).__name__) from None
    if not isinstance(content, dict):
        raise UserError(f"{path} holds a {type(content).__name__}, not a CIFAR-10 batch dict: {FIX_HINT}")
    batch = {_text(key): value for key, value in content.items()}
    if _has_skipped(batch.get("labels")):  # labels too large to read cheaply: unpickle instead
        return None
    data, _ = _check_batch(path, batch)
    return int(data.shape[0])


def check_class_names(names: tuple[str, ...], source: Path | str) -> None:
    if names != CLASSES:
        raise UserError(
            f"class names in {source} are {list(names)}, not CIFAR-10's {list(CLASSES)}: "
            "pass CIFAR-10 data (for other class sets use the imagefolder dataset)"
        )


def _batch_paths(batches_dir: Path, split: str) -> list[Path]:
    """The split's batch files, after checking they exist and `batches.meta` (if any) names CIFAR-10's classes."""
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
    return paths


def load_pickle_split(batches_dir: Path, split: str) -> InMemoryImageDataset:
    """The split from the pickle batches in `batches_dir`."""
    batches = [read_batch(path) for path in _batch_paths(batches_dir, split)]
    images = np.concatenate([images for images, _ in batches])
    labels = np.concatenate([labels for _, labels in batches])
    return InMemoryImageDataset(torch.from_numpy(images), torch.from_numpy(labels), info())


def probe_pickle_split(batches_dir: Path, split: str) -> int:
    """The number of images `load_pickle_split` gives, from `scan_batch` (no pixel is read)."""
    total = 0
    for path in _batch_paths(batches_dir, split):
        count = scan_batch(path)
        total += read_batch(path)[1].shape[0] if count is None else count
    return total


# ----------------------------------------------------------------------------------------------
# ImageFolder copies


def check_image_size(size: tuple[int, int], name: str) -> None:
    """UserError unless an image is 32x32 (from its header, before decoding)."""
    if tuple(size) != (IMAGE_SIZE, IMAGE_SIZE):
        raise UserError(
            f"image {name}: its sides are {size[0]}x{size[1]}, CIFAR-10's are 32x32: pass CIFAR-10 data "
            "(for other images use the imagefolder dataset)"
        )


def _check_shape(shape: tuple[int, ...], source: Path) -> None:
    if tuple(shape) != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise UserError(f"images in {source} are {shape[1]}x{shape[2]}, CIFAR-10's are 32x32: pass CIFAR-10 data")


def _in_memory(images: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], source: Path) -> InMemoryImageDataset:
    check_class_names(classes, source)
    _check_shape(images.shape[1:], source)
    return InMemoryImageDataset(torch.from_numpy(images), torch.from_numpy(labels), info())


def _folder_cache_key(tree: Path, split: str) -> tuple[str, dict[str, Any]]:
    return f"cifar10-{split}", {"kind": "cifar10-folder", "source": tree_signature(tree)}


def _archive_cache_key(archive: Path, split: str) -> tuple[str, dict[str, Any]]:
    return f"cifar10-{split}", {"kind": "cifar10-archive", "source": cache.source_signature(archive)}


def load_folder_split(tree: Path, split: str) -> InMemoryImageDataset:
    """The split from `tree/<class>/<image>`, decoded into memory (cached)."""
    stem, key = _folder_cache_key(tree, split)
    images, labels, classes = load_decoded_cached(
        stem, key, lambda: decode_image_tree(tree, None, f"decoding {tree}", check_size=check_image_size), tree
    )
    return _in_memory(images, labels, classes, tree)


def load_archive_split(archive: Path, split: str, *, limit: int | None = None) -> InMemoryImageDataset:
    """The split from a `<split>.tar.gz` ImageFolder archive, decoded into memory (cached).

    `limit` decodes only the first images of the archive (for tests) and bypasses the cache.
    """

    def decode() -> list:
        return decode_image_archive(archive, None, f"decoding {archive.name}", limit=limit, check_size=check_image_size)

    if limit is None:
        stem, key = _archive_cache_key(archive, split)
        images, labels, classes = load_decoded_cached(stem, key, decode, archive)
        return _in_memory(images, labels, classes, archive)
    images, labels, classes = stack_decoded(decode(), archive)
    # A prefix of the archive may hold only some classes: map its labels into the canonical list.
    if not set(classes) <= set(CLASSES):
        check_class_names(classes, archive)
    labels = np.array([CLASSES.index(classes[label]) for label in labels], dtype=np.int64)
    return _in_memory(images, labels, CLASSES, archive)


def _count_tree(tree: Path) -> tuple[tuple[str, ...], int]:
    classes, paths, _ = scan_image_tree(tree)
    return classes, len(paths)


def probe_folder_or_archive(kind: str, source: Path, split: str) -> int:
    """The number of images `load_folder_split` / `load_archive_split` give, decoding no image.

    From the cached decode if there is one, else by file names (the images' sizes are then
    checked only when they are decoded).
    """
    if kind == "folder":
        stem, key = _folder_cache_key(source, split)
        classes, number, shape = probe_decoded_cached(stem, key, lambda: _count_tree(source))
    else:
        stem, key = _archive_cache_key(source, split)
        classes, number, shape = probe_decoded_cached(stem, key, lambda: count_archive_images(source))
    check_class_names(classes, source)
    if shape is not None:
        _check_shape(shape, source)
    return number


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


def _resolve(split: str, root: str | os.PathLike | None, image_size: int | None) -> tuple[str, Path]:
    check_fixed_image_size("cifar10", IMAGE_SIZE, image_size)
    root = require_data_dir("cifar10", root, f"{BATCHES_FOLDER}/, {split}/<class>/ or {split}.tar.gz")
    return find_cifar10_source(root, split)


def load_cifar10_split(split: str, root: str | os.PathLike | None, *, image_size: int | None = None) -> InMemoryImageDataset:
    """The CIFAR-10 train or test split from `root` (formats in the module docstring)."""
    kind, source = _resolve(split, root, image_size)
    if kind == "pickle":
        return load_pickle_split(source, split)
    if kind == "folder":
        return load_folder_split(source, split)
    return load_archive_split(source, split)


def probe_cifar10_split(split: str, root: str | os.PathLike | None, *, image_size: int | None = None) -> tuple[DataInfo, int]:
    """(info, number of images) that `load_cifar10_split` gives, reading no pixel (see the module docstring)."""
    kind, source = _resolve(split, root, image_size)
    if kind == "pickle":
        return info(), probe_pickle_split(source, split)
    return info(), probe_folder_or_archive(kind, source, split)
