"""The learning-rate schedule every training loop here uses."""

from __future__ import annotations

import math


def warmup_cosine(peak: float, step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up to `peak` over `warmup_steps`, then cosine decay to zero at `total_steps`."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
