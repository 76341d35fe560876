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


AUGMENTATIONS: dict[str, Augmentation] = {"identity": identity, "crop_and_flip": crop_and_flip}


def train_augment(name: str) -> Augmentation:
    """The standard training augmentation `f(x, generator)` for dataset `name` (its entry in data.READERS)."""
    from . import READERS

    if name not in READERS:
        raise UserError(f"no training augmentation for dataset {name!r}: choose one of {', '.join(READERS)}")
    return AUGMENTATIONS[READERS[name].augment]
