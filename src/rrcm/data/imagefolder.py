"""ImageFolder trees and archives (ImageNet and friends), read with Pillow and plain torch.

Where the images of a split are looked for, first match wins (`root` is the folder the user gives):

1. `root/<split>/<class>/.../<image>`, the split folder being `train` for "train" and `test`,
   then `val`, for "test" (ImageNet calls its evaluation split `val`);
2. `root/<split>.tar.gz` (also `.tgz`, `.tar`; for "test" also `val.tar.gz`; gzip, bzip2 or xz
   compression is recognised by its content) holding `<class>/<image>`, usually under leading
   folders shared by every image (`<split>/<class>/<image>`, `imagenette2/val/<class>/<image>`);
3. if `root` holds no split folder or archive at all, `root` itself is the class tree
   `root/<class>/.../<image>` and serves whichever split is asked (point `root` at e.g.
   `imagenet/val` to certify on it). If `root` holds a split folder or archive for another split,
   the missing one is an error rather than a silent fallback.

Classes are the sorted class-folder names (label = position). When both `train/` and the test
folder exist, their class names must agree, or the labels of one split would shift. Images are any
file with an extension in IMAGE_EXTENSIONS (case-insensitive, hidden files skipped), in order of
their path inside the class folder.

Folders are read lazily (ImageNet-sized: each image is decoded in `__getitem__`). Archives are
streamed once, one member at a time, decoded into memory and cached (see `rrcm.data.cache`); use
them for small sets only. An archive's layout is set by its first image: every image must sit in
a class folder beside the first image's (same leading folders, one class folder, the file), so an
image outside the class folders, a member with an absolute or `..` path, or a link named like an
image is a `UserError` naming the member. Hidden members and non-image files are skipped.

Limits (module constants, checked before anything is decoded): an archive member read into
memory is at most MAX_MEMBER_BYTES (64 MiB), an image at most MAX_IMAGE_PIXELS (64 Mpx, from its
header, below Pillow's own decompression-bomb threshold) and the tar metadata before a member at
most MAX_HEADER_BYTES. Pillow's DecompressionBombError/Warning and every other decode failure
become a `UserError` naming the file (and the archive). `probe_imagefolder_split` counts a split
without decoding any image (for `--dry-run`).
Every image goes through the standard ImageNet evaluation transform: convert to RGB, resize the
shorter side to round(image_size / 0.875) (bilinear, antialiased), center-crop image_size
(default 224). The training augmentation is separate (`rrcm.data.augment`).
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import logging
import lzma
import os
import tarfile
import warnings
import zlib
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from rrcm.data import cache
from rrcm.data.base import DataInfo, ImageDataset, InMemoryImageDataset, require_data_dir
from rrcm.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLIT_FOLDER_NAMES = {"train": ("train",), "test": ("test", "val")}
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
DEFAULT_IMAGE_SIZE = 224
CROP_FRACTION = 0.875  # resize to image_size / 0.875, then crop image_size (224 <- 256)
MEAN = (0.485, 0.456, 0.406)  # ImageNet
STD = (0.229, 0.224, 0.225)
MAX_MEMBER_BYTES = 64 * 1024 * 1024  # one archive member read into memory
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # width x height, from the header; Pillow warns at 89,478,485
MAX_HEADER_BYTES = 1024 * 1024  # tar metadata (pax, GNU long names) before one member; real ones are < 10 KB

# (class name, path of the image inside its class folder, pixels uint8 (C, H, W))
DecodedImage = tuple[str, str, np.ndarray]


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def resize_center_crop(image: Image.Image, image_size: int) -> Image.Image:
    """The ImageNet eval transform (torchvision's Resize(round(s/0.875)) + CenterCrop(s)), in PIL."""
    resize_to = round(image_size / CROP_FRACTION)
    width, height = image.size
    # As torchvision: the shorter side becomes resize_to, the longer one is scaled and truncated.
    if width <= height:
        new_size = (resize_to, int(resize_to * height / width))
    else:
        new_size = (int(resize_to * width / height), resize_to)
    if new_size != image.size:
        image = image.resize(new_size, Image.BILINEAR)
    left = int(round((new_size[0] - image_size) / 2.0))
    top = int(round((new_size[1] - image_size) / 2.0))
    return image.crop((left, top, left + image_size, top + image_size))


def check_pixel_count(size: tuple[int, int], name: str) -> None:
    """UserError if an image of `size` (width, height) has more than MAX_IMAGE_PIXELS pixels."""
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise UserError(
            f"image {name} is {width}x{height} = {width * height:,} pixels, more than the {MAX_IMAGE_PIXELS:,} "
            "rrcm decodes (rrcm.data.imagefolder.MAX_IMAGE_PIXELS): downscale it or remove it"
        )


def decode_image(
    source: str | os.PathLike | BinaryIO,
    name: str,
    *,
    check_size: Callable[[tuple[int, int], str], None] | None = None,
) -> Image.Image:
    """An RGB PIL image from a path or file object; UserError naming `name` if it cannot be decoded.

    The pixel count (and `check_size(size, name)`, if given) is checked from the header, before
    any pixel is decoded.
    """
    try:
        with warnings.catch_warnings():
            # Pillow only warns below twice its limit; MAX_IMAGE_PIXELS is lower, so refuse either way.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                check_pixel_count(image.size, name)
                if check_size is not None:
                    check_size(image.size, name)
                return image.convert("RGB")
    except UserError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UserError(
            f"image {name} is too large to decode safely ({error}): downscale it below "
            f"{MAX_IMAGE_PIXELS:,} pixels or remove it"
        ) from None
    except Exception as error:  # Pillow fails on damaged files in many ways (OSError, ValueError, struct.error, ...)
        raise UserError(f"cannot decode image {name} ({error or type(error).__name__}): remove or replace the file") from None


def image_to_chw(image: Image.Image) -> np.ndarray:
    """uint8 (C, H, W) pixels of an RGB PIL image."""
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


def imagefolder_info(classes: tuple[str, ...], image_size: int) -> DataInfo:
    return DataInfo(
        name="imagefolder", num_classes=len(classes), channels=3, image_size=image_size,
        classes=classes, mean=MEAN, std=STD,
    )


# ----------------------------------------------------------------------------------------------
# folders


def class_folder_names(tree: Path) -> tuple[str, ...]:
    """Sorted names of the (non-hidden) subfolders of `tree`."""
    return tuple(sorted(entry.name for entry in os.scandir(tree) if entry.is_dir() and not entry.name.startswith(".")))


def scan_image_tree(tree: Path) -> tuple[tuple[str, ...], list[str], list[int]]:
    """(classes, image paths, labels) of an ImageFolder tree `tree/<class>/.../<image>`."""
    classes = class_folder_names(tree)
    if not classes:
        raise UserError(f"no class folders in {tree}: an ImageFolder needs {tree}/<class>/<image files>")
    paths: list[str] = []
    labels: list[int] = []
    empty_classes = []
    for label, class_name in enumerate(classes):
        class_dir = tree / class_name
        found = sorted(
            os.path.relpath(os.path.join(folder, name), class_dir)
            for folder, subfolders, names in os.walk(class_dir, followlinks=True)
            for name in names
            if is_image_name(name)
        )
        if not found:
            empty_classes.append(class_name)
        paths.extend(str(class_dir / relative) for relative in found)
        labels.extend([label] * len(found))
    if empty_classes:
        shown = ", ".join(empty_classes[:5]) + (", ..." if len(empty_classes) > 5 else "")
        raise UserError(
            f"{len(empty_classes)} class folder(s) in {tree} hold no image ({shown}): add images "
            f"({', '.join(IMAGE_EXTENSIONS)}) or remove the empty folders"
        )
    return classes, paths, labels


class ImageFolderDataset(ImageDataset):
    """A lazily decoded ImageFolder split: each image is read and transformed in `__getitem__`."""

    def __init__(self, paths: list[str], labels: list[int] | torch.Tensor, info: DataInfo):
        self.paths = list(paths)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.info = info

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.paths[index]
        image = resize_center_crop(decode_image(path, path), self.info.image_size)
        pixels = torch.from_numpy(image_to_chw(image))
        return pixels.float().div_(255.0), int(self.labels[index])


def decode_image_tree(
    tree: Path,
    transform: Callable[[Image.Image], Image.Image] | None,
    desc: str,
    *,
    check_size: Callable[[tuple[int, int], str], None] | None = None,
) -> list[DecodedImage]:
    """Every image of `tree/<class>/...` decoded into memory (for small sets kept in memory)."""
    classes, paths, labels = scan_image_tree(tree)
    decoded = []
    for path, label in zip(tqdm(paths, desc=desc, unit="img", leave=False), labels):
        image = decode_image(path, path, check_size=check_size)
        if transform is not None:
            image = transform(image)
        decoded.append((classes[label], os.path.relpath(path, tree / classes[label]), image_to_chw(image)))
    return decoded


def tree_signature(tree: Path) -> dict[str, Any]:
    """What identifies a tree's content cheaply: its path and every file's relative path, size and mtime."""
    entries = []
    for folder, _, names in os.walk(tree, followlinks=True):
        for name in names:
            path = os.path.join(folder, name)
            stat = os.stat(path)
            entries.append(f"{os.path.relpath(path, tree)}\0{stat.st_size}\0{stat.st_mtime_ns}")
    listing = hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()
    return {"path": str(tree.resolve()), "listing": listing}


# ----------------------------------------------------------------------------------------------
# archives


class _ProgressReader:
    """A read-only file wrapper that advances a progress bar by the compressed bytes read."""

    def __init__(self, file: BinaryIO, bar: tqdm):
        self.file, self.bar = file, bar

    def read(self, size: int = -1) -> bytes:
        data = self.file.read(size)
        self.bar.update(len(data))
        return data


class _BoundedReader:
    """The decompressed tar stream, refusing to read more than a budget before the next `allow`.

    tarfile reads a pax or GNU long-name record whole into memory, however large its header says
    it is; the budget (the current member's data plus MAX_HEADER_BYTES) bounds that.
    """

    def __init__(self, file: BinaryIO, archive: Path):
        self.file, self.archive = file, archive
        self.allow(0)

    def allow(self, member_size: int) -> None:
        # + two tar records: tarfile reads ahead one record (20 blocks) at a time.
        self.left = member_size + MAX_HEADER_BYTES + 2 * tarfile.RECORDSIZE

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            raise UserError(
                f"archive {self.archive} holds tar metadata of more than {MAX_HEADER_BYTES:,} bytes before a member "
                "(rrcm.data.imagefolder.MAX_HEADER_BYTES): it is corrupt or malicious, re-create it"
            )
        data = self.file.read(size if size is not None and 0 <= size <= self.left else self.left)
        self.left -= len(data)
        return data


def _decompressed(raw: BinaryIO, head: bytes) -> BinaryIO:
    """`raw` decompressed as its first bytes say (gzip, bzip2, xz or none), streaming."""
    if head.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if head.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return raw


def archive_stem(archive: Path) -> str:
    """`test` for `test.tar.gz`: the split folder an archive is expected to hold."""
    name = archive.name
    for suffix in (*ARCHIVE_SUFFIXES, ".tar.bz2", ".tar.xz"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return archive.stem


class ArchiveLayout:
    """Checks each member of an ImageFolder archive against the layout its first image sets.

    The first image `<folders>/<class>/<file>` fixes the leading folders; every later image must be
    `<the same folders>/<class>/<file>`. `place(member)` gives (class, file name) for an image
    member, None for a member that is skipped (folders, hidden members, non-image files), and
    raises UserError for anything else.
    """

    def __init__(self, archive: Path):
        self.archive = archive
        self.first: str | None = None
        self.prefix: tuple[str, ...] = ()

    def expected(self) -> str:
        if self.first is None:
            return f"{archive_stem(self.archive)}/<class>/<image> (or <class>/<image>)"
        return "".join(part + "/" for part in self.prefix) + f"<class>/<image>, as its first image {self.first}"

    def place(self, member: tarfile.TarInfo) -> tuple[str, str] | None:
        name = member.name
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts:
            raise UserError(
                f"archive {self.archive} has a member with an absolute or '..' path, {name!r}: expected every image "
                f"at {self.expected()}; re-create the archive with relative paths"
            )
        parts = path.parts
        if not parts or member.isdir() or any(part.startswith(".") for part in parts) or not is_image_name(parts[-1]):
            return None
        if not member.isfile():
            raise UserError(
                f"{name} in archive {self.archive} is a link or special file, not an image: re-create the archive "
                "with regular files (tar --dereference)"
            )
        if len(parts) < 2:
            raise UserError(
                f"image {name} in archive {self.archive} is outside any class folder: expected every image at "
                f"{self.expected()}; move it into its class folder or remove it"
            )
        if self.first is None:
            self.first, self.prefix = name, parts[:-2]
        elif len(parts) != len(self.prefix) + 2 or parts[:-2] != self.prefix:
            raise UserError(
                f"image {name} in archive {self.archive} is not in a class folder beside the others: expected every "
                f"image at {self.expected()}; put all class folders in one folder"
            )
        if member.size > MAX_MEMBER_BYTES:
            raise UserError(
                f"image {name} in archive {self.archive} is {member.size:,} bytes, more than the {MAX_MEMBER_BYTES:,} "
                "rrcm reads (rrcm.data.imagefolder.MAX_MEMBER_BYTES): shrink it or remove it"
            )
        return parts[-2], parts[-1]


def iter_archive_images(
    archive: Path, *, read: bool, desc: str | None = None
) -> Iterator[tuple[str, str, str, bytes | None]]:
    """(member name, class, file name, file bytes or None) for each image of an ImageFolder archive.

    Streams the archive once, one member at a time (never the member list of the whole archive),
    checking the layout (`ArchiveLayout`) and the limits; with `read=False` no image byte is kept.
    `desc` shows a progress bar over the compressed bytes.
    """
    try:
        raw = open(archive, "rb")
    except OSError as error:
        raise UserError(f"cannot read archive {archive} ({error.strerror or error}): check the path and permissions") from None
    layout = ArchiveLayout(archive)
    with raw, tqdm(
        total=archive.stat().st_size, desc=desc, unit="B", unit_scale=True, leave=False, disable=desc is None
    ) as bar:
        try:
            head = raw.read(6)
            raw.seek(0)
            bounded = _BoundedReader(_decompressed(_ProgressReader(raw, bar), head), archive)
            with tarfile.open(fileobj=bounded, mode="r|") as stream:
                while (member := stream.next()) is not None:
                    # Stream mode still appends every TarInfo to `members`; keep one at a time.
                    stream.members.clear()
                    bounded.allow(member.size)
                    place = layout.place(member)
                    if place is None:
                        continue
                    data = stream.extractfile(member).read() if read else None
                    yield member.name, place[0], place[1], data
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as error:
            raise UserError(f"archive {archive} is truncated or corrupt ({error}): re-download or re-create it") from None


def decode_image_archive(
    archive: Path,
    transform: Callable[[Image.Image], Image.Image] | None,
    desc: str,
    *,
    limit: int | None = None,
    check_size: Callable[[tuple[int, int], str], None] | None = None,
) -> list[DecodedImage]:
    """Decode the images of a tar(.gz) ImageFolder archive, streaming it once.

    Layout and limits as `iter_archive_images`; `check_size` as `decode_image`. `limit` stops
    after that many images (for tests).
    """
    decoded: list[DecodedImage] = []
    for member_name, class_name, file_name, data in iter_archive_images(archive, read=True, desc=desc):
        image = decode_image(io.BytesIO(data), f"{member_name} in {archive}", check_size=check_size)
        if transform is not None:
            image = transform(image)
        decoded.append((class_name, file_name, image_to_chw(image)))
        if limit is not None and len(decoded) >= limit:
            break
    return decoded


def count_archive_images(archive: Path) -> tuple[tuple[str, ...], int]:
    """(sorted class names, number of images) of an ImageFolder archive, decoding no image."""
    per_class = Counter(class_name for _, class_name, _, _ in iter_archive_images(archive, read=False))
    if not per_class:
        raise no_images_error(archive)
    return tuple(sorted(per_class)), sum(per_class.values())


# ----------------------------------------------------------------------------------------------
# in-memory sets from decoded images, with the cache


def no_images_error(source: Path) -> UserError:
    return UserError(f"no images found in {source}: an ImageFolder needs <class>/<image files> ({', '.join(IMAGE_EXTENSIONS)})")


def stack_decoded(decoded: list[DecodedImage], source: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(images uint8 (N, C, H, W), labels, sorted classes), images ordered by class then path."""
    if not decoded:
        raise no_images_error(source)
    decoded.sort(key=lambda item: (item[0], item[1]))
    classes = tuple(sorted({class_name for class_name, _, _ in decoded}))
    shapes = {pixels.shape for _, _, pixels in decoded}
    if len(shapes) > 1:
        raise UserError(f"images in {source} have different sizes {sorted(shapes)[:3]}: resize them to one size first")
    label_of = {class_name: label for label, class_name in enumerate(classes)}
    images = np.stack([pixels for _, _, pixels in decoded])
    labels = np.array([label_of[class_name] for class_name, _, _ in decoded], dtype=np.int64)
    return images, labels, classes


def load_decoded_cached(
    cache_stem: str, key: dict[str, Any], decode: Callable[[], list[DecodedImage]], source: Path
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(images, labels, classes) from the cache entry for `key`, decoding (and caching) on a miss."""
    entry = cache.cache_path(cache_stem, key)
    cached = cache.load_cached(entry)
    if cached is not None:
        logger.debug("loaded %s from the cache %s", source, entry)
        return cached
    images, labels, classes = stack_decoded(decode(), source)
    cache.save_cached(entry, images, labels, classes)
    return images, labels, classes


# ----------------------------------------------------------------------------------------------
# the dataset


def find_split_source(root: Path, split: str) -> tuple[str, Path]:
    """("folder" | "archive", path) of the split's images under `root` (rules in the module docstring)."""
    names = SPLIT_FOLDER_NAMES[split]
    for name in names:
        if (root / name).is_dir():
            return "folder", root / name
    for name in names:
        for suffix in ARCHIVE_SUFFIXES:
            if (root / (name + suffix)).is_file():
                return "archive", root / (name + suffix)
    split_entries = {
        name + suffix for names_ in SPLIT_FOLDER_NAMES.values() for name in names_ for suffix in ("", *ARCHIVE_SUFFIXES)
    }
    other_splits = sorted(entry.name for entry in root.iterdir() if entry.name in split_entries)
    expected = " or ".join(f"{root}/{name}/<class>/" for name in names) + f" or {names[0]}.tar.gz"
    if other_splits:
        raise UserError(f"no {split} split in {root} (found {', '.join(other_splits)}): expected {expected}")
    if not class_folder_names(root):
        raise UserError(f"no ImageFolder data in {root}: expected {expected}, or {root}/<class>/<image files>")
    logger.info("%s has no split folder: using its class folders for the %s split", root, split)
    return "folder", root


def check_split_classes_agree(root: Path, tree: Path, classes: tuple[str, ...]) -> None:
    """If both split folders exist, their class names must be the same (else labels would differ)."""
    if tree == root:
        return
    for names in SPLIT_FOLDER_NAMES.values():
        for name in names:
            other = root / name
            if other != tree and other.is_dir():
                other_classes = class_folder_names(other)
                if other_classes != classes:
                    only_here = sorted(set(classes) - set(other_classes))[:5]
                    only_there = sorted(set(other_classes) - set(classes))[:5]
                    raise UserError(
                        f"class folders of {tree} and {other} differ (only in {tree.name}: {only_here}, "
                        f"only in {other.name}: {only_there}): give both splits the same class folders"
                    )
                return


def _resolve(split: str, root: str | os.PathLike | None, image_size: int | None) -> tuple[int, Path, str, Path]:
    """(image_size, root, "folder" | "archive", source): what the loader and the probe both check first."""
    if image_size is None:
        image_size = DEFAULT_IMAGE_SIZE
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"image_size must be a positive integer, got {image_size!r}")
    root = require_data_dir("imagefolder", root, f"{split}/<class>/<image files> (or {split}.tar.gz)")
    kind, source = find_split_source(root, split)
    return image_size, root, kind, source


def _archive_cache_key(split: str, source: Path, image_size: int) -> tuple[str, dict[str, Any]]:
    return f"imagefolder-{split}", {"kind": "imagefolder-archive", "source": cache.source_signature(source), "image_size": image_size}


def load_imagefolder_split(split: str, root: str | os.PathLike | None, *, image_size: int | None = None) -> ImageDataset:
    """An ImageFolder split: lazy for folders, in memory (cached) for archives."""
    image_size, root, kind, source = _resolve(split, root, image_size)
    if kind == "folder":
        classes, paths, labels = scan_image_tree(source)
        check_split_classes_agree(root, source, classes)
        return ImageFolderDataset(paths, labels, imagefolder_info(classes, image_size))

    def transform(image: Image.Image) -> Image.Image:
        return resize_center_crop(image, image_size)

    stem, key = _archive_cache_key(split, source, image_size)
    images, labels, classes = load_decoded_cached(
        stem, key,
        lambda: decode_image_archive(source, transform, f"decoding {source.name}"),
        source,
    )
    return InMemoryImageDataset(torch.from_numpy(images), torch.from_numpy(labels), imagefolder_info(classes, image_size))


def probe_decoded_cached(
    cache_stem: str, key: dict[str, Any], count: Callable[[], tuple[tuple[str, ...], int]]
) -> tuple[tuple[str, ...], int, tuple[int, ...] | None]:
    """(classes, number of images, image shape (C, H, W) or None) as `load_decoded_cached` would give.

    From the cache entry's labels and array header if there is one, else from `count()` (which
    must decode nothing); no image is read either way.
    """
    summary = cache.read_summary(cache.cache_path(cache_stem, key))
    if summary is not None:
        number, classes, shape = summary
        return classes, number, shape
    classes, number = count()
    return classes, number, None


def probe_imagefolder_split(split: str, root: str | os.PathLike | None, *, image_size: int | None = None) -> tuple[DataInfo, int]:
    """(info, number of images) that `load_imagefolder_split` gives, decoding no image.

    Folders: the same scan as the loader. Archives: the cached decode's count if there is one,
    else the archive's member names, streamed (layout and size limits checked, nothing decoded).
    """
    image_size, root, kind, source = _resolve(split, root, image_size)
    if kind == "folder":
        classes, paths, _ = scan_image_tree(source)
        check_split_classes_agree(root, source, classes)
        return imagefolder_info(classes, image_size), len(paths)
    stem, key = _archive_cache_key(split, source, image_size)
    classes, number, _ = probe_decoded_cached(stem, key, lambda: count_archive_images(source))
    return imagefolder_info(classes, image_size), number
