"""LeNet-style CNNs for small grey images (MNIST, 8×8 digits).

Two conv(5×5)-ReLU-maxpool(2) stages, then fully connected layers with ReLU between them.
Two widths are registered:

- `lenet`: the MNIST LeNet of the randomized-smoothing literature (Jeong & Shin 2020, also used by
  later baselines): conv 20, conv 50, FC 500.
- `lenet5`: the classic LeNet-5 widths: conv 6, conv 16, FC 120, FC 84.

On 28×28 inputs both use unpadded convs, as the originals do. Smaller images (e.g. 8×8 digits)
need `padding=2` on both convs so the spatial size survives; the flattened size is computed from
the image size either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .normalize import Normalize

KERNEL_SIZE = 5


def lenet_feature_size(image_size: int, padding: int) -> int:
    """Side length after the two conv+pool stages (0 means the image is too small)."""
    side = image_size
    for _ in range(2):
        side = side + 2 * padding - (KERNEL_SIZE - 1)
        if side < 1:
            return 0
        side //= 2
    return side


def default_lenet_padding(image_size: int) -> int:
    """0 (the original, unpadded LeNet) when the image is large enough, else 2 ('same' convs)."""
    return 0 if lenet_feature_size(image_size, 0) >= 1 else 2


class LeNet(nn.Module):
    """conv-ReLU-pool ×2, then an MLP; normalises its [0, 1] input first."""

    def __init__(self, *, num_classes: int, in_channels: int, image_size: int, mean: Sequence[float],
                 std: Sequence[float], conv_channels: Sequence[int], hidden: Sequence[int], padding: int):
        super().__init__()
        side = lenet_feature_size(image_size, padding)
        if side < 1:
            raise ValueError(f"lenet: image_size={image_size} is too small for padding={padding} "
                             f"(two 5x5 conv + 2x2 pool stages); use a larger 'padding'")
        c1, c2 = conv_channels
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, KERNEL_SIZE, padding=padding), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, KERNEL_SIZE, padding=padding), nn.ReLU(), nn.MaxPool2d(2),
        )
        layers: list[nn.Module] = [nn.Flatten()]
        width = c2 * side * side
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(self.normalize(x)))
