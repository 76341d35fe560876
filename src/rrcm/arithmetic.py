"""The arithmetic a forward pass runs in: one autocast context per precision name, for training,
certification and timing alike."""

from __future__ import annotations

import contextlib

import torch


def autocast(precision: str, device: torch.device | str):
    """fp32: no autocast; bf16 or fp16: autocast to that dtype on `device`'s type."""
    if precision == "fp32":
        return contextlib.nullcontext()
    device_type = device if isinstance(device, str) else device.type
    return torch.autocast(device_type=device_type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
