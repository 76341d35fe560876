"""Mixup and CutMix on clean images (before the smoothing noise), with soft targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_targets(y: torch.Tensor, num_classes: int, label_smoothing: float = 0.0) -> torch.Tensor:
    """One-hot targets, optionally smoothed: (1 − ε)·onehot + ε/K."""
    onehot = F.one_hot(y, num_classes).float()
    return onehot * (1.0 - label_smoothing) + label_smoothing / num_classes


def mix_batch(x: torch.Tensor, y: torch.Tensor, num_classes: int, generator: torch.Generator, *,
              mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0,
              label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each image with a partner from a permutation of the batch; return (images, soft targets).

    With both enabled, each batch uses one of the two with equal probability (as in DeiT).
    """
    targets = soft_targets(y, num_classes, label_smoothing)
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return x, targets
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or bool(torch.rand((), generator=generator) < 0.5))
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = _beta(alpha, generator)
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    if use_cutmix:
        h, w = x.shape[-2:]
        cut_h, cut_w = int(round(h * (1 - lam) ** 0.5)), int(round(w * (1 - lam) ** 0.5))
        cy = int(torch.randint(h, (), generator=generator))
        cx = int(torch.randint(w, (), generator=generator))
        top, bottom = max(cy - cut_h // 2, 0), min(cy + (cut_h + 1) // 2, h)
        left, right = max(cx - cut_w // 2, 0), min(cx + (cut_w + 1) // 2, w)
        x = x.clone()
        x[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (h * w)  # the area actually pasted
    else:
        x = lam * x + (1.0 - lam) * x[perm]
    return x, lam * targets + (1.0 - lam) * targets[perm.to(targets.device)]


def _beta(alpha: float, generator: torch.Generator) -> float:
    # Beta(α, α) from two Gamma draws, using our generator (torch.distributions has no generator argument).
    a = torch._standard_gamma(torch.full((2,), float(alpha)), generator=generator)
    return float(a[0] / a.sum())
