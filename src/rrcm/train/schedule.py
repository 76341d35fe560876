"""The learning-rate schedules of the training engine: per step (rrcm's) or per epoch (the rRCM authors')."""

from __future__ import annotations

import math


def warmup_cosine(peak: float, step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up to `peak` over `warmup_steps`, then cosine decay to zero at `total_steps`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def epoch_warmup_cosine(peak: float, epoch: int, total_epochs: float, warmup_epochs: float) -> float:
    """The rRCM authors' fine-tuning schedule, stepped once per epoch (jiachenlei/rRCM,
    `customized_lr_scheduler` "warmup-cosine"): the factor is epoch / W up to W warm-up epochs (so the
    first epoch runs at lr 0), then cosine decay 0.5·(1 + cos(π·(epoch − W)/(E − W))). With W = 0 the
    cosine starts at epoch 0 (theirs would hold the peak for the whole run)."""
    if warmup_epochs > 0 and epoch <= warmup_epochs:
        return peak * min(epoch / warmup_epochs, 1.0)
    progress = (epoch - warmup_epochs) / max(1e-12, total_epochs - warmup_epochs)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
