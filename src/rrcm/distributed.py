"""torch.distributed set-up from the environment `torchrun` provides (NCCL on GPUs, gloo on CPUs)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserError


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def choose_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto` takes the local GPU when there is one, else the CPU; anything else must exist here."""
    if requested == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"unknown device {requested!r}; choose {DEVICE_CHOICES}") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UserError(f"device {requested!r} is not supported by rrcm; choose {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise UserError(f"--device {requested}: this torch ({torch.__version__}) sees no CUDA GPU; "
                        "use --device cpu (or auto), or install a CUDA build of torch on a GPU machine")
    if device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    if device.index >= torch.cuda.device_count():
        raise UserError(f"--device {device} does not exist: this machine has {torch.cuda.device_count()} GPU(s); "
                        "use cuda:0 .. cuda:N-1, or auto")
    return device


def init_distributed(requested_device: str = "auto") -> DistContext:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); otherwise a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(requested_device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world_size, local_rank, device)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def shutdown(ctx: DistContext, *, failed: bool = False) -> None:
    """Leave the process group together: a process that exits while a peer still talks to it aborts.

    After a failure there is no barrier (the peers may never reach it); torchrun stops them.
    """
    if ctx.enabled and dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()


@contextmanager
def distributed(requested_device: str = "auto") -> Iterator[DistContext]:
    """`with distributed(device) as ctx:` joins the process group (if torchrun started this process) and
    leaves it on the way out: together after success, at once after an exception, which then propagates
    unchanged, so a failing process's own message reaches the user (not a peer's abort)."""
    ctx = init_distributed(requested_device)
    try:
        yield ctx
    except BaseException:
        shutdown(ctx, failed=True)
        raise
    shutdown(ctx)
