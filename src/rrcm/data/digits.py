"""scikit-learn's bundled `load_digits`: the embedded default dataset (no files, no download).

1,797 grey 8x8 images with pixel values 0..16 (returned as value / 16, so in [0, 1]), 10 classes.

The train/test split is FIXED and must never change (certificates and checkpoints refer to it):

    rng = numpy.random.default_rng(0)
    for class c in 0, 1, ..., 9 (ascending):
        idx_c = indices of class c in load_digits() order (ascending)
        perm_c = rng.permutation(idx_c)        # one generator, drawn class after class
        test += perm_c[:50]
    test = sorted(test); train = every other index, sorted

so the test set has exactly 50 images per class (500 in all) and the train set the other 1,297,
both in the original order. tests/test_data.py pins the sizes and the first test indices.

mean/std: the pixel mean and standard deviation of the train split on [0, 1] pixels
(computed once with `_train_mean_std()` and hard-coded, so they never depend on a load).
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch

from rrcm.data.base import DataInfo, InMemoryImageDataset, check_fixed_image_size

IMAGE_SIZE = 8
PIXEL_MAX = 16.0
TEST_PER_CLASS = 50
SPLIT_SEED = 0
CLASSES = tuple(str(digit) for digit in range(10))
MEAN = (0.3056,)  # train split, see _train_mean_std()
STD = (0.3763,)


@functools.lru_cache(maxsize=1)
def _load_all() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 images as uint8 (N, 1, 8, 8) with values 0..16, and int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images).astype(np.uint8)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed (train, test) index arrays described in the module docstring."""
    rng = np.random.default_rng(SPLIT_SEED)
    test_parts = []
    for label in range(len(CLASSES)):
        class_indices = np.flatnonzero(labels == label)
        test_parts.append(rng.permutation(class_indices)[:TEST_PER_CLASS])
    test = np.sort(np.concatenate(test_parts))
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), test


def info() -> DataInfo:
    return DataInfo(
        name="digits", num_classes=len(CLASSES), channels=1, image_size=IMAGE_SIZE,
        classes=CLASSES, mean=MEAN, std=STD,
    )


def load_digits_split(split: str, root: str | os.PathLike | None = None, *,
                      image_size: int | None = None) -> InMemoryImageDataset:
    """The fixed train or test split of scikit-learn's digits (`root` is ignored: the set is bundled)."""
    check_fixed_image_size("digits", IMAGE_SIZE, image_size)
    images, labels = _load_all()
    train, test = split_indices(labels)
    chosen = train if split == "train" else test
    return InMemoryImageDataset(
        torch.from_numpy(images[chosen]), torch.from_numpy(labels[chosen]), info(), pixel_max=PIXEL_MAX
    )


def probe_digits_split(split: str, root: str | os.PathLike | None = None, *,
                       image_size: int | None = None) -> tuple[DataInfo, int]:
    """(info, number of images) of the split, as `load_digits_split` gives (the bundled set is cheap)."""
    check_fixed_image_size("digits", IMAGE_SIZE, image_size)
    _, labels = _load_all()
    train, test = split_indices(labels)
    return info(), len(train if split == "train" else test)


def _train_mean_std() -> tuple[float, float]:
    """How MEAN and STD were computed (kept for reference and checked by a test)."""
    images, labels = _load_all()
    train, _ = split_indices(labels)
    pixels = images[train].astype(np.float64) / PIXEL_MAX
    return float(pixels.mean()), float(pixels.std())
