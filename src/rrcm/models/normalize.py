"""Per-channel normalisation, applied inside every model.

Smoothing noise is added to pixels in [0, 1]; the model normalises afterwards. Keeping the
normalisation inside the model (rather than in the data pipeline) is what makes σ mean the same
thing for every model, so certified radii are comparable and sound.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """`(x - mean) / std` per channel, for inputs shaped (B, C, H, W).

    mean/std are non-persistent buffers: the model config is their single source of truth, so a
    checkpoint's state dict never disagrees with the config it was saved with.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t = torch.tensor([float(m) for m in mean], dtype=torch.float32)
        std_t = torch.tensor([float(s) for s in std], dtype=torch.float32)
        if mean_t.numel() != std_t.numel() or mean_t.numel() == 0:
            raise ValueError(f"mean and std need one value per channel, got {len(mean_t)} and {len(std_t)}")
        if not bool((std_t > 0).all()):
            raise ValueError(f"std must be positive, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    @property
    def num_channels(self) -> int:
        return self.mean.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A 1-channel mean would silently broadcast over a 3-channel input: check instead.
        if x.dim() != 4 or x.shape[1] != self.num_channels:
            raise ValueError(f"expected input of shape (B, {self.num_channels}, H, W), got {tuple(x.shape)}")
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
