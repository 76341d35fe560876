"""Contrastive pieces of rRCM pre-training: global-batch InfoNCE, a batch norm over the global batch,
and the EMA target network (MoCo v3 style).

Negatives are the rest of the *global* batch: keys are gathered from every process. Keys carry no
gradient (stop-gradient or EMA target), so a plain gather suffices for them; the projector's batch norm
is the one place where gradients must cross processes, hence `GlobalBatchNorm1d`.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def gather_keys(keys: torch.Tensor) -> torch.Tensor:
    """Concatenate `keys` from all processes in rank order (no gradient)."""
    if not _distributed():
        return keys
    parts = [torch.empty_like(keys) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, keys.contiguous())
    return torch.cat(parts)


_STATISTICS_GROUP = None


def _statistics_group():
    """A process group of its own for batch-norm statistics: DDP reduces gradients on the default group
    from another thread during backward, and two streams of collectives on one gloo group interleave."""
    global _STATISTICS_GROUP
    if _STATISTICS_GROUP is None:
        _STATISTICS_GROUP = dist.new_group(backend=dist.get_backend())
    return _STATISTICS_GROUP


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward also sums: every process's loss sees the global statistics."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor, group=_statistics_group())
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=_statistics_group())
        return grad


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    return _AllReduceSum.apply(tensor) if _distributed() else tensor


class GlobalBatchNorm1d(torch.nn.BatchNorm1d):
    """BatchNorm1d whose batch statistics (and their gradients) span the global batch.

    torch's SyncBatchNorm runs on GPUs only; this one works under gloo on CPUs as well, so the
    distributed path is testable here, and equals BatchNorm1d on the whole batch in one process.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _distributed()):
            return super().forward(x)
        x32 = x.float()
        count = all_reduce_sum(torch.tensor([float(x.shape[0])], device=x.device))
        # two passes (mean, then squared deviations), as BatchNorm does, for the same rounding
        mean = all_reduce_sum(x32.sum(0)) / count
        var = all_reduce_sum(((x32 - mean) ** 2).sum(0)) / count
        with torch.no_grad():
            n = float(count)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(var.detach() * n / max(n - 1.0, 1.0), self.momentum)
            self.num_batches_tracked += 1
        out = (x32 - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        return out.to(x.dtype)


def convert_to_global_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every BatchNorm1d (in place, keeping its state) by a GlobalBatchNorm1d."""
    for name, child in module.named_children():
        if type(child) is torch.nn.BatchNorm1d:
            replacement = GlobalBatchNorm1d(child.num_features, child.eps, child.momentum, child.affine,
                                            child.track_running_stats)
            replacement.load_state_dict(child.state_dict())
            setattr(module, name, replacement.to(next(child.buffers()).device))
        else:
            convert_to_global_batchnorm(child)
    return module


def average_gradients(model: torch.nn.Module) -> None:
    """Average every parameter's gradient over processes, in one flat all-reduce after backward.

    Pre-training does this instead of wrapping the model in DistributedDataParallel: DDP's bucketed
    reduction runs concurrently with the batch-norm collectives of the backward pass, and under gloo
    the two produced wrong gradients here; it also needs every parameter used in every step, which
    the term ablations break. Parameters without a gradient count as zero.
    """
    if not _distributed():
        return
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def info_nce(query: torch.Tensor, key: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of local queries against the global batch of keys; positives are each query's own key.

    Returns the mean over local queries, so the gradient averaged over processes (what DDP does)
    equals the gradient of the mean over the global batch in one process.
    """
    query = F.normalize(query.float(), dim=1)
    key = F.normalize(key.float(), dim=1)
    keys = gather_keys(key)
    offset = dist.get_rank() * query.shape[0] if _distributed() else 0
    logits = query @ keys.t() / temperature
    labels = torch.arange(query.shape[0], device=query.device) + offset
    return F.cross_entropy(logits, labels)


EMA_SCHEDULES = ("rrcm", "sigmoid", "fixed")


def ema_momentum(step: int, total_steps: int, schedule: str = "fixed", base: float = 0.99,
                 final: float = 0.9999, sharpness: float = 15.0) -> float:
    """The target's EMA rate at `step` of `total_steps`, rising from `base` (μ₀) to `final` (μ₁).

    rrcm     the rRCM authors' schedule: e = √(k/K·(μ₁² − μ₀²) + μ₀²) (μ₁ from k = K on),
             c = 2 / (1 + exp(−A·(e − μ₀)/(μ₁ − μ₀))) − 1, μ = c·μ₁ + (1 − c)·μ₀ with A = `sharpness`
             (15 for CIFAR-10, 10 for ImageNet in their configs): μ rises fast early and saturates.
    sigmoid  rrcm's earlier schedule: a logistic ramp centred at half of training (much slower early:
             at k/K = 0.2 its target moves ~9× faster than the authors').
    fixed    `base` throughout.
    """
    if schedule == "fixed":
        return base
    if schedule == "rrcm":
        e = math.sqrt(step / total_steps * (final ** 2 - base ** 2) + base ** 2) if step < total_steps else final
        c = 2.0 / (1.0 + math.exp(-sharpness * (e - base) / (final - base))) - 1.0
        return c * final + (1.0 - c) * base
    if schedule != "sigmoid":
        raise ValueError(f"unknown EMA schedule {schedule!r}; choose one of {', '.join(EMA_SCHEDULES)}")
    progress = min(max(step / max(1, total_steps), 0.0), 1.0)
    low, high = 1 / (1 + math.exp(5.0)), 1 / (1 + math.exp(-5.0))
    ramp = (1 / (1 + math.exp(-10.0 * (progress - 0.5))) - low) / (high - low)  # 0 at start, 1 at end
    return base + (final - base) * ramp


class EMATarget(torch.nn.Module):
    """A frozen copy of a network that follows it as target ← m·target + (1 − m)·online."""

    def __init__(self, online: torch.nn.Module):
        super().__init__()
        self.network = copy.deepcopy(online)
        for p in self.network.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, online: torch.nn.Module, momentum: float) -> None:
        for target, source in zip(self.network.parameters(), online.parameters()):
            target.lerp_(source.detach(), 1.0 - momentum)
        for target, source in zip(self.network.buffers(), online.buffers()):
            target.copy_(source)
