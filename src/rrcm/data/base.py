"""What every dataset is: a `DataInfo` description and an `ImageDataset` of [0, 1] float images.

In-memory sets keep uint8 tensors (N, C, H, W) and convert to float per item or per batch, so a
50,000-image CIFAR-10 train set costs 150 MB instead of 600 MB. Nothing is normalised here: every
model receives pixels in [0, 1] and normalises inside itself (`rrcm.models.normalize`), after the
smoothing noise is added.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from rrcm.errors import UserError

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DataInfo:
    """Static description of a dataset: what a model and a checkpoint need to know about it."""

    name: str  # "digits" | "mnist" | "cifar10" | "imagefolder"
    num_classes: int
    channels: int
    image_size: int  # square side of the tensors the dataset returns
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per-channel mean on [0, 1] pixels, for the model's own normalisation
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        """A JSON-able dict (tuples become lists)."""
        return {key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()}


class ImageDataset(torch.utils.data.Dataset):
    """Images as float32 (C, H, W) tensors in [0, 1] with int64 labels.

    Subclasses set `info` and `labels` and implement `__getitem__`; `batch` stacks items unless a
    subclass has something faster.
    """

    info: DataInfo
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        raise NotImplementedError

    def batch(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images float32 (B, C, H, W) in [0, 1] and int64 labels (B,) for `indices`."""
        indices = _as_index_tensor(indices)
        if indices.numel() == 0:
            info = self.info
            empty = torch.empty(0, info.channels, info.image_size, info.image_size)
            return empty, torch.empty(0, dtype=torch.int64)
        images = torch.stack([self[int(i)][0] for i in indices])
        return images, self.labels[indices]

    def __repr__(self) -> str:
        info = self.info
        return (
            f"{type(self).__name__}({info.name}, n={len(self)}, classes={info.num_classes}, "
            f"shape=({info.channels}, {info.image_size}, {info.image_size}))"
        )


class InMemoryImageDataset(ImageDataset):
    """A dataset held as one uint8 tensor (N, C, H, W); pixels are divided by `pixel_max` on access.

    `pixel_max` is 255 for 8-bit images and 16 for scikit-learn's digits (values 0..16).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, info: DataInfo, *, pixel_max: float = 255.0):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        expected_shape = (info.channels, info.image_size, info.image_size)
        if tuple(images.shape[1:]) != expected_shape:
            raise ValueError(f"images have shape {tuple(images.shape[1:])}, info says {expected_shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"{images.shape[0]} images but labels have shape {tuple(labels.shape)}")
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64).contiguous()
        self.info = info
        self.pixel_max = float(pixel_max)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index].float().div_(self.pixel_max), int(self.labels[index])

    def batch(self, indices: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        indices = _as_index_tensor(indices)
        return self.images[indices].float().div_(self.pixel_max), self.labels[indices]


def _as_index_tensor(indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
    if isinstance(indices, torch.Tensor):
        return indices.reshape(-1).to(torch.int64)
    if isinstance(indices, np.ndarray):
        return torch.from_numpy(indices.astype(np.int64, copy=False)).reshape(-1)
    return torch.as_tensor(list(indices), dtype=torch.int64).reshape(-1)


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use 'train' or 'test'")
    return split


def check_fixed_image_size(name: str, native_size: int, image_size: int | None) -> None:
    """Fixed-size sets are never resized: `image_size` may only repeat their native size."""
    if image_size is not None and image_size != native_size:
        raise UserError(
            f"{name} images are {native_size}x{native_size}; image_size={image_size} is not supported "
            f"(omit image_size or set it to {native_size})"
        )


def require_data_dir(name: str, root: str | os.PathLike | None, what: str) -> Path:
    """`root` as a Path, or a UserError saying which folder the dataset needs."""
    if root is None:
        raise UserError(f"dataset {name} needs a data folder: pass the folder that holds {what}")
    path = Path(root).expanduser()
    if not path.exists():
        raise UserError(f"data folder {path} does not exist: pass the folder that holds {what}")
    if not path.is_dir():
        raise UserError(f"data folder {path} is not a folder: pass the folder that holds {what}")
    return path
