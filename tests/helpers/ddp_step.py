"""Run by tests/test_contrastive.py under torchrun (2 processes, gloo): one pre-training step on this
process's half of a fixed global batch; writes the averaged loss and the process-averaged gradients
(as the pre-training loop computes them)."""

import sys

import torch
import torch.distributed as dist

from tests.helpers.contrastive_case import build_case, loss_and_grads

out = sys.argv[1]
torch.set_num_threads(1)  # as the single-process side of the test
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
model, batch, sigmas = build_case(distributed=True)
local = {k: v.view(world, -1, *v.shape[1:])[rank] for k, v in batch.items()}
loss, grads = loss_and_grads(model, model, local, sigmas, average=True)
dist.all_reduce(loss)
if rank == 0:
    torch.save({"loss": loss / world, "grads": grads}, out)
dist.barrier()
dist.destroy_process_group()
