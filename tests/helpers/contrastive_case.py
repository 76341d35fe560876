"""A small, fixed pre-training problem shared by the single-process and the two-process runs."""

import torch

from rrcm.models import model_config
from rrcm.models.time_vit import encoder_from_config
from rrcm.train.contrastive import convert_to_global_batchnorm
from rrcm.train.pretrain import ContrastiveDenoiser

GLOBAL_BATCH = 8


def build_case(distributed: bool, dtype: torch.dtype = torch.float32):
    """The model and the global batch; with `dtype=torch.float64`, the same weights and inputs (drawn in
    float32, then converted exactly) for a float64 reference of the same step."""
    torch.manual_seed(0)
    cfg = model_config("rrcm_vit", num_classes=10, in_channels=1, image_size=8, mean=[0.5], std=[0.5],
                       width=32, depth=2, heads=2, patch_size=4)
    model = ContrastiveDenoiser(encoder_from_config(cfg), 32, 64, 16)
    if distributed:
        convert_to_global_batchnorm(model)
    g = torch.Generator().manual_seed(1)
    shape = (GLOBAL_BATCH, 1, 8, 8)
    batch = {name: torch.rand(shape, generator=g) * 2 - 1 for name in ("x", "view1", "view2")}
    batch.update({name: torch.randn(shape, generator=g) for name in ("eps", "eps1", "eps2")})
    model.to(dtype)
    return model, {k: v.to(dtype) for k, v in batch.items()}, (1.5, 1.2)


def loss_and_grads(runner, model, batch, sigmas, average=False):
    from rrcm.train.contrastive import average_gradients

    model.train()
    loss, _ = runner(batch, *sigmas, temperature=0.2, symmetric=True)
    loss.backward()
    if average:
        average_gradients(model)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads
