"""The resolved configuration of a classifier training run (Gaussian or consistency baseline)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError
from ..data.augment import TRAIN_AUGMENTATIONS
from .engine import LR_SCHEDULES, OPTIMIZERS, check_precision
from .objectives import METHODS


def config_from_dict(cls, values: dict[str, Any], what: str):
    """Build the dataclass `cls` from `values`, naming any unknown option and the valid ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"unknown {what} option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    return cls(**values)


@dataclass
class TrainConfig:
    data: str = "digits"
    data_root: str | None = None
    image_size: int | None = None  # imagefolder only: resize + centre-crop side (default 224)
    arch: str = "lenet"
    arch_options: dict[str, Any] = field(default_factory=dict)
    method: str = "gaussian"
    sigma: float = 0.25
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    lr_schedule: str = "step"  # step | epoch (the rRCM authors' fine-tuning: set once per epoch, epoch 0 at lr 0)
    num_noise: int = 2  # consistency: noisy copies per image (m)
    lbd: float = 10.0  # consistency: weight of the KL term (λ)
    eta: float = 0.5  # consistency: weight of the entropy term (η)
    augment: bool = True  # False: no augmentation at all
    augmentation: str = "standard"  # standard (the data set's: crop + flip for colour images) | resized-crop-flip | randaugment
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 with loss scaling)
    checkpoint_every: int = 1  # epochs between resumable checkpoints
    # rRCM fine-tuning (arch rrcm_vit) and general fine-tuning options
    pretrained: str | None = None  # encoder.safetensors from `rrcm pretrain`
    layer_decay: float | None = None  # layer-wise learning-rate decay, e.g. 0.65
    freeze_head: bool = False  # ablation: keep the head at its initial values (the authors' released code does)
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(α, α) parameter; 0 disables
    cutmix: float = 0.0  # Beta(α, α) parameter; 0 disables
    grad_clip: float | None = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        return config_from_dict(cls, values, "training")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.method != "clean" and not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise UserError(f"sigma must be a positive number, got {self.sigma}; use e.g. --sigma 0.25")
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise UserError(f"unknown learning-rate schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if self.augmentation not in TRAIN_AUGMENTATIONS:
            raise UserError(f"unknown augmentation {self.augmentation!r}; choose one of {', '.join(TRAIN_AUGMENTATIONS)}")
        check_precision(self.precision)
        for name in ("epochs", "batch_size", "num_noise", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UserError(f"learning rate must be positive, got {self.lr}")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise UserError(f"layer decay must lie in (0, 1], got {self.layer_decay}")
        if not 0 <= self.label_smoothing < 1 or self.mixup < 0 or self.cutmix < 0:
            raise UserError("label smoothing must lie in [0, 1) and mixup/cutmix must be >= 0")
        if self.pretrained is not None and self.arch != "rrcm_vit":
            raise UserError("--pretrained takes an rRCM encoder and needs --arch rrcm_vit")
        if self.method == "consistency" and self.num_noise < 2:
            raise UserError("consistency regularisation needs --num-noise >= 2 noisy copies")
