"""Training augmentations on batches (B, C, H, W), in plain torch.

Every random draw comes from an explicit `torch.Generator`, so an augmented batch is reproducible
from the generator's seed. Draws are made on the generator's device and moved to the batch's, so a
CPU generator gives the same augmentation for a batch on any device.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from rrcm.errors import UserError

Augmentation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _check_batch(x: torch.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(x.shape)}")


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad each side by `padding`, then crop each image back to (H, W) at its own random offset."""
    _check_batch(x)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0:
        return x
    batch, _, height, width = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator, device=generator.device).to(x.device)
    rows = offsets[0, :, None] + torch.arange(height, device=x.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(width, device=x.device)  # (B, W)
    images = torch.arange(batch, device=x.device)[:, None, None]
    # Advanced indices around the channel slice put their dims first: (B, H, W, C).
    cropped = padded[images, :, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2).contiguous()


def random_hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each image left-right with probability `p`."""
    _check_batch(x)
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device).to(x.device) < p
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def identity(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """No augmentation (digits and MNIST: flips and shifts change what a digit is)."""
    return x


def crop_and_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The standard CIFAR-10 augmentation: random crop with 4 pixels of zero padding, random flip."""
    return random_hflip(random_crop(x, 4, generator), generator)


def resized_crop_and_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The rRCM authors' CIFAR-10 fine-tuning ("strong"): RandomResizedCrop(scale 0.4-1) + random flip."""
    from .contrastive import random_resized_crop

    return random_hflip(random_resized_crop(x, generator, scale=(0.4, 1.0)), generator)


def randaugment_crop_and_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The rRCM authors' ImageNet fine-tuning (timm's training transform with rand-m9-mstd0.5-inc1):
    RandomResizedCrop(scale 0.08-1) + random flip + RandAugment."""
    from .contrastive import random_resized_crop
    from .randaugment import rand_augment

    return rand_augment(random_hflip(random_resized_crop(x, generator), generator), generator)


AUGMENTATIONS: dict[str, Augmentation] = {"identity": identity, "crop_and_flip": crop_and_flip}
# what `TrainConfig.augmentation` names: "standard" is the data set's own (its entry in data.READERS)
TRAIN_AUGMENTATIONS: dict[str, Augmentation | None] = {
    "standard": None, "resized-crop-flip": resized_crop_and_flip, "randaugment": randaugment_crop_and_flip}


def train_augment(name: str, augmentation: str = "standard") -> Augmentation:
    """The training augmentation `f(x, generator)` for dataset `name`: its standard one (its entry in
    data.READERS), or the named `augmentation` of TRAIN_AUGMENTATIONS."""
    from . import READERS

    if name not in READERS:
        raise UserError(f"no training augmentation for dataset {name!r}: choose one of {', '.join(READERS)}")
    if augmentation not in TRAIN_AUGMENTATIONS:
        raise UserError(f"unknown augmentation {augmentation!r}; choose one of {', '.join(TRAIN_AUGMENTATIONS)}")
    return TRAIN_AUGMENTATIONS[augmentation] or AUGMENTATIONS[READERS[name].augment]
