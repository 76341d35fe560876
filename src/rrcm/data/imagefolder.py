"""ImageFolder trees and archives (ImageNet and friends), read with Pillow and plain torch.

Where the images of a split are looked for, first match wins (`root` is the folder the user gives):

1. `root/<split>/<class>/.../<image>`, the split folder being `train` for "train" and `test`,
   then `val`, for "test" (ImageNet calls its evaluation split `val`);
2. `root/<split>.tar.gz` (also `.tgz`, `.tar`; for "test" also `val.tar.gz`) holding
   `<class>/.../<image>`, possibly under leading folders shared by every image (`<split>/`);
3. if `root` holds no split folder or archive at all, `root` itself is the class tree
   `root/<class>/.../<image>` and serves whichever split is asked (point `root` at e.g.
   `imagenet/val` to certify on it). If `root` holds a split folder or archive for another split,
   the missing one is an error rather than a silent fallback.

Classes are the sorted class-folder names (label = position). When both `train/` and the test
folder exist, their class names must agree, or the labels of one split would shift. Images are any
file with an extension in IMAGE_EXTENSIONS (case-insensitive, hidden files skipped), in order of
their path inside the class folder.

Folders are read lazily (ImageNet-sized: each image is decoded in `__getitem__`). Archives are
decoded once into memory and cached (see `rrcm.data.cache`); use them for small sets only.
Every image goes through the standard ImageNet evaluation transform: convert to RGB, resize the
shorter side to round(image_size / 0.875) (bilinear, antialiased), center-crop image_size
(default 224). The training augmentation is separate (`rrcm.data.augment`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
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


def decode_image(source: str | os.PathLike | BinaryIO, name: str) -> Image.Image:
    """An RGB PIL image from a path or file object; UserError naming `name` if it cannot be decoded."""
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise UserError(f"cannot decode image {name} ({error}): remove or replace the file") from None


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


def decode_image_tree(tree: Path, transform: Callable[[Image.Image], Image.Image] | None, desc: str) -> list[DecodedImage]:
    """Every image of `tree/<class>/...` decoded into memory (for small sets kept in memory)."""
    classes, paths, labels = scan_image_tree(tree)
    decoded = []
    for path, label in zip(tqdm(paths, desc=desc, unit="img", leave=False), labels):
        image = decode_image(path, path)
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


def decode_image_archive(
    archive: Path,
    transform: Callable[[Image.Image], Image.Image] | None,
    desc: str,
    *,
    limit: int | None = None,
) -> list[DecodedImage]:
    """Decode the images of a tar(.gz) ImageFolder archive, streaming it once.

    Leading folders that every image shares are dropped (`test/`, `imagenette2/val/`, ...) as long
    as each image stays inside a folder; the next folder is its class. Images outside any folder
    are skipped. `limit` stops after that many images (for tests).
    """
    members: list[tuple[tuple[str, ...], np.ndarray]] = []
    try:
        with open(archive, "rb") as raw, tqdm(
            total=archive.stat().st_size, desc=desc, unit="B", unit_scale=True, leave=False
        ) as bar, tarfile.open(fileobj=_ProgressReader(raw, bar), mode="r|*") as stream:
            for member in stream:
                parts = PurePosixPath(member.name).parts
                if not member.isfile() or len(parts) < 2 or any(part.startswith(".") for part in parts):
                    continue
                if not is_image_name(parts[-1]):
                    continue
                image = decode_image(io.BytesIO(stream.extractfile(member).read()), f"{member.name} in {archive}")
                if transform is not None:
                    image = transform(image)
                members.append((parts, image_to_chw(image)))
                if limit is not None and len(members) >= limit:
                    break
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise UserError(f"archive {archive} is truncated or corrupt ({error}): re-download or re-create it") from None
    depth = 0
    while (
        members
        and all(len(parts) >= depth + 3 for parts, _ in members)
        and len({parts[depth] for parts, _ in members}) == 1
    ):
        depth += 1
    return [(parts[depth], "/".join(parts[depth + 1 :]), pixels) for parts, pixels in members]


# ----------------------------------------------------------------------------------------------
# in-memory sets from decoded images, with the cache


def stack_decoded(decoded: list[DecodedImage], source: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(images uint8 (N, C, H, W), labels, sorted classes), images ordered by class then path."""
    if not decoded:
        raise UserError(f"no images found in {source}: an ImageFolder needs <class>/<image files> ({', '.join(IMAGE_EXTENSIONS)})")
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


def load_imagefolder_split(split: str, root: str | os.PathLike | None, *, image_size: int | None = None) -> ImageDataset:
    """An ImageFolder split: lazy for folders, in memory (cached) for archives."""
    if image_size is None:
        image_size = DEFAULT_IMAGE_SIZE
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise UserError(f"image_size must be a positive integer, got {image_size!r}")
    root = require_data_dir("imagefolder", root, f"{split}/<class>/<image files> (or {split}.tar.gz)")
    kind, source = find_split_source(root, split)
    if kind == "folder":
        classes, paths, labels = scan_image_tree(source)
        check_split_classes_agree(root, source, classes)
        return ImageFolderDataset(paths, labels, imagefolder_info(classes, image_size))

    def transform(image: Image.Image) -> Image.Image:
        return resize_center_crop(image, image_size)

    key = {"kind": "imagefolder-archive", "source": cache.source_signature(source), "image_size": image_size}
    images, labels, classes = load_decoded_cached(
        f"imagefolder-{split}", key,
        lambda: decode_image_archive(source, transform, f"decoding {source.name}"),
        source,
    )
    return InMemoryImageDataset(torch.from_numpy(images), torch.from_numpy(labels), imagefolder_info(classes, image_size))
