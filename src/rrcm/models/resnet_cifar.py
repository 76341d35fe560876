"""The CIFAR ResNets used as base classifiers by Cohen et al. (2019) and later smoothing baselines.

Architecture as in their `archs/cifar_resnet.py` (from the "bearpaw" pytorch-classification repo):
a 3×3 conv stem with 16 channels, three stages of `n` residual blocks with 16/32/64 planes and
strides 1/2/2, global average pooling and a linear classifier. Shortcuts that change shape are a
1×1 conv + BN ("option B"). Cohen's `cifar_resnet20` and `cifar_resnet110` use basic blocks with
depth = 6n + 2; bottleneck blocks (expansion 4, depth = 9n + 2) are available via `block`.

Global average pooling is adaptive, so the same network also runs on 8×8 or 28×28 images (on
32×32 it equals the original 8×8 average pool).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .normalize import Normalize

STAGE_PLANES = (16, 32, 64)
STAGE_STRIDES = (1, 2, 2)
BLOCK_TYPES = ("basic", "bottleneck")


class BasicBlock(nn.Module):
    """Two 3×3 convs with BN; the residual is added before the last ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = projection_shortcut(in_planes, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4, with BN; residual added before the last ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = projection_shortcut(in_planes, out_planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + self.shortcut(x))


def projection_shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module:
    """Identity when shapes match, else a strided 1×1 conv + BN."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_planes))


def blocks_per_stage(depth: int, block: str) -> int:
    """n for depth = 6n + 2 (basic) or 9n + 2 (bottleneck); ValueError otherwise."""
    if block not in BLOCK_TYPES:
        raise ValueError(f"cifar_resnet: 'block' must be one of {BLOCK_TYPES}, got {block!r}")
    layers_per_block = 2 if block == "basic" else 3
    step = 3 * layers_per_block
    if depth < step + 2 or (depth - 2) % step != 0:
        examples = "20, 32, 44, 56, 110" if block == "basic" else "20, 29, 47, 56, 110"
        raise ValueError(f"cifar_resnet: 'depth' must be {step}n+2 for {block} blocks "
                         f"(e.g. {examples}), got {depth}")
    return (depth - 2) // step


class CifarResNet(nn.Module):
    """ResNet-(6n+2) / (9n+2) for small images; normalises its [0, 1] input first."""

    def __init__(self, *, num_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float],
                 depth: int, block: str = "basic"):
        super().__init__()
        n = blocks_per_stage(depth, block)
        block_cls = BasicBlock if block == "basic" else Bottleneck
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, STAGE_PLANES[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(STAGE_PLANES[0]),
            nn.ReLU(),
        )
        stages = []
        in_planes = STAGE_PLANES[0]
        for planes, stride in zip(STAGE_PLANES, STAGE_STRIDES):
            blocks = []
            for i in range(n):
                blocks.append(block_cls(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes * block_cls.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_planes, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # As in the reference: He-normal (fan-out) convs, BN at identity; the linear layer keeps
        # PyTorch's default init.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(self.normalize(x)))
        return self.fc(self.pool(x))
