"""Datasets for training and certification: images as float32 tensors in [0, 1], never normalised.

    ds = load_dataset("digits", "test")                      # embedded, no files needed
    ds = load_dataset("mnist", "train", "/data/mnist")        # original idx(.gz) files
    ds = load_dataset("cifar10", "test", "/data/cifar10")     # pickle batches, class folders or test.tar.gz
    ds = load_dataset("imagefolder", "test", "/data/imagenet", image_size=224)
    x, y = ds[0]; xb, yb = ds.batch(range(64)); ds.info.to_dict()
    info, n = probe_dataset("cifar10", "test", "/data/cifar10")  # for --dry-run: decodes no image

One module per format (`digits`, `mnist`, `cifar10`, `imagefolder`; each docstring says what it
reads and how); `augment` and `contrastive` hold the training augmentations. Each model normalises
inside itself, after the smoothing noise is added on [0, 1] pixels, with `info.mean` / `info.std`
(the rRCM classifier with its fixed 0.5 instead: it works in the diffusion's [-1, 1] space).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass

from rrcm.data.base import SPLITS, DataInfo, ImageDataset, InMemoryImageDataset, check_split
from rrcm.errors import UserError

@dataclass(frozen=True)
class DatasetReader:
    """Where a data set is read: `module` (of rrcm.data, imported on first use: each format pulls in its own
    decoders) and its two functions, each called as f(split, root, image_size=...)."""

    module: str
    load: str  # -> ImageDataset
    probe: str  # -> (DataInfo, number of examples), reading no image
    augment: str  # the standard training augmentation: a name in rrcm.data.augment.AUGMENTATIONS


# A new data set is one line here and its reader module.
READERS: dict[str, DatasetReader] = {
    "digits": DatasetReader("digits", "load_digits_split", "probe_digits_split", augment="identity"),
    "mnist": DatasetReader("mnist", "load_mnist_split", "probe_mnist_split", augment="identity"),
    "cifar10": DatasetReader("cifar10", "load_cifar10_split", "probe_cifar10_split", augment="crop_and_flip"),
    "imagefolder": DatasetReader("imagefolder", "load_imagefolder_split", "probe_imagefolder_split",
                                 augment="crop_and_flip"),
}
DATASETS = tuple(READERS)

__all__ = ["DATASETS", "READERS", "SPLITS", "DataInfo", "ImageDataset", "InMemoryImageDataset", "load_dataset",
           "probe_dataset"]


def _check_name(name: str, split: str) -> None:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")
    check_split(split)


def _split_readers(name: str, split: str) -> tuple[Callable[..., ImageDataset], Callable[..., tuple[DataInfo, int]]]:
    """(load, probe) of the module that reads dataset `name`."""
    _check_name(name, split)
    reader = READERS[name]
    module = importlib.import_module(f"rrcm.data.{reader.module}")
    return getattr(module, reader.load), getattr(module, reader.probe)


def load_dataset(
    name: str, split: str, root: str | os.PathLike | None = None, *, image_size: int | None = None
) -> ImageDataset:
    """The `split` ("train" or "test") of dataset `name`, read from `root`.

    `root` is the data folder (ignored by the embedded "digits"). `image_size` is the side of the
    square images returned: only "imagefolder" resizes (default 224); for the fixed-size sets it
    may be omitted or must equal their native size (digits 8, mnist 28, cifar10 32).
    """
    load, _ = _split_readers(name, split)
    return load(split, root, image_size=image_size)


def probe_dataset(
    name: str, split: str, root: str | os.PathLike | None = None, *, image_size: int | None = None
) -> tuple[DataInfo, int]:
    """(info, number of examples) that `load_dataset` with the same arguments gives, reading no image.

    For `--dry-run`: it checks the same paths, file headers and sizes and raises the same
    UserErrors for them, but decodes no image and reads no pixel (digits, bundled and tiny, is
    loaded). What only decoding can find (a damaged image, a CIFAR-10 folder image that is not
    32x32) is found by the real load. MNIST: idx headers, and the image file's decompressed length
    counted as it streams (a truncated file gives its complete images, with the loader's warning).
    CIFAR-10 pickles: each batch's opcodes are walked and its pixel bytes seeked over. Folders:
    image files counted per class folder. Archives: the cached decode's count if there is one,
    else the member names, streamed.
    """
    _, probe = _split_readers(name, split)
    return probe(split, root, image_size=image_size)
