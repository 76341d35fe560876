"""Training objectives of the classical smoothing baselines.

The noisy ones add Gaussian noise on [0, 1] pixels (before the model's own normalisation), as certification does.
- gaussian (Cohen et al. 2019): cross-entropy on x + σε.
- clean: plain cross-entropy without noise (the off-the-shelf classifier of diffusion denoised smoothing).
- consistency (Jeong & Shin 2020): m noisy copies; mean cross-entropy + λ·mean_i KL(p̄ ‖ p_i)
  + η·H(p̄), where p̄ is the mean of the copies' softmax outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ObjectiveOutput:
    loss: torch.Tensor
    logits: torch.Tensor  # logits of the first noisy copy, for training accuracy


def add_noise(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    return x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def gaussian_objective(model, x, y, *, sigma: float, generator: torch.Generator) -> ObjectiveOutput:
    """`y`: class indices (B,) or soft targets (B, K)."""
    logits = model(add_noise(x, sigma, generator))
    return ObjectiveOutput(F.cross_entropy(logits.float(), y), logits)


def clean_objective(model, x, y) -> ObjectiveOutput:
    """`y`: class indices (B,) or soft targets (B, K)."""
    logits = model(x)
    return ObjectiveOutput(F.cross_entropy(logits.float(), y), logits)


def consistency_losses(logits_per_copy: list[torch.Tensor], y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean cross-entropy, mean KL(p̄ ‖ p_i), entropy of p̄), each averaged over the batch.

    `y`: class indices (B,) or soft targets (B, K) (mixup, cutmix, label smoothing).
    """
    logits_per_copy = [logits.float() for logits in logits_per_copy]
    xent = torch.stack([F.cross_entropy(logits, y) for logits in logits_per_copy]).mean()
    log_probs = [F.log_softmax(logits, dim=1) for logits in logits_per_copy]
    mean_probs = torch.stack([lp.exp() for lp in log_probs]).mean(0)
    # F.kl_div(log p_i, p̄) = Σ p̄ (log p̄ − log p_i); xlogy keeps 0·log 0 = 0.
    kl = torch.stack([F.kl_div(lp, mean_probs, reduction="none").sum(1) for lp in log_probs]).mean(0).mean()
    entropy = -torch.special.xlogy(mean_probs, mean_probs).sum(1).mean()
    return xent, kl, entropy


def consistency_objective(model, x, y, *, sigma: float, generator: torch.Generator, num_noise: int = 2,
                          lbd: float = 10.0, eta: float = 0.5) -> ObjectiveOutput:
    batch = x.shape[0]
    noisy = add_noise(x.repeat(num_noise, 1, 1, 1), sigma, generator)
    logits_all = model(noisy)
    logits_per_copy = list(logits_all.split(batch))
    xent, kl, entropy = consistency_losses(logits_per_copy, y)
    return ObjectiveOutput(xent + lbd * kl + eta * entropy, logits_per_copy[0])


# The registry of training methods: name -> a factory from the training config (`TrainConfig`) to the
# objective, called as objective(model, x, targets, generator). A new method is one function here.
Objective = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Generator], ObjectiveOutput]
OBJECTIVES: dict[str, Callable[..., Objective]] = {}


def register_objective(name: str):
    def add(factory):
        OBJECTIVES[name] = factory
        return factory
    return add


@register_objective("gaussian")
def _gaussian(cfg) -> Objective:
    return lambda model, x, y, generator: gaussian_objective(model, x, y, sigma=cfg.sigma, generator=generator)


@register_objective("consistency")
def _consistency(cfg) -> Objective:
    return lambda model, x, y, generator: consistency_objective(model, x, y, sigma=cfg.sigma, generator=generator,
                                                                num_noise=cfg.num_noise, lbd=cfg.lbd, eta=cfg.eta)


@register_objective("clean")
def _clean(cfg) -> Objective:
    return lambda model, x, y, generator: clean_objective(model, x, y)


METHODS = tuple(OBJECTIVES)
