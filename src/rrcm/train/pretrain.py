"""rRCM pre-training: contrastive denoising along diffusion trajectories.

Loss = trajectory term + instance-discrimination term, both InfoNCE (τ = 0.2) against the rest of the
global batch:
  trajectory  query: online encoder on x + σ_i ε (the noisier point, time σ_i); key: the same encoder
              with stop-gradient on x + σ_{i+1} ε (same ε, time σ_{i+1}); on the cls feature h.
  instance    two augmented views at σ_min; query: projector(encoder(view 1)); key: the EMA target's
              projector(encoder(view 2)); with `symmetric`, the swapped pair is added as well.
One grid index i per step for the whole global batch; the number of grid points follows the
21 → 41 → 81 curriculum. A task of the training engine (`engine.py`), which makes a resumed run follow
the uninterrupted one exactly, metrics.csv included (all but `seconds`). Gradients are averaged by one
explicit all-reduce, not DDP (see `contrastive.average_gradients`).

Outputs in `out_dir`: config.json, metrics.csv, train_state.safetensors (resume) and
encoder.safetensors (the pre-trained encoder with its config; the projector is dropped).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__, diffusion
from ..checkpoint import save_checkpoint
from ..data import load_dataset
from ..data.augment import identity, random_hflip, train_augment
from ..data.contrastive import two_views
from ..distributed import DistContext, init_distributed
from ..errors import UserError
from ..models import count_parameters, model_config
from ..models.time_vit import Projector, TimeConditionedViT, encoder_from_config, moco_v3_init
from . import engine
from .config import config_from_dict
from .contrastive import EMA_SCHEDULES, EMATarget, convert_to_global_batchnorm, ema_momentum, info_nce
from .engine import StepContext, StepOutput

ENCODER_FILE = "encoder.safetensors"
STATE_FILE = engine.STATE_FILE
METRIC_COLUMNS = ("step", "num_points", "lr", "ema", "loss", "trajectory", "instance", "seconds")
BATCH_STREAM, GRID_STREAM = 10, 11  # generator streams of a step (engine.StepContext.generator)
VIEW_NOISE = ("shared", "independent")
TRAJECTORY_AUGMENTS = ("flip", "standard")
ENCODER_INITS = ("vit", "moco-v3")


@dataclass
class PretrainConfig:
    data: str = "digits"
    data_root: str | None = None
    image_size: int | None = None
    arch_options: dict[str, Any] = field(default_factory=lambda: {"size": "tiny"})
    steps: int = 1000
    batch_size: int = 256  # global
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 50
    grad_clip: float = 3.0
    clip_during_warmup: bool = False  # the authors clip only after warm-up; True is rrcm's earlier recipe
    temperature: float = 0.2
    projector_hidden: int = 1024
    projector_dim: int = 256
    ema_schedule: str = "rrcm"  # rrcm (the authors') | sigmoid (rrcm's earlier) | fixed: see ema_momentum
    ema_base: float = 0.99
    ema_final: float = 0.9999
    ema_sharpness: float = 15.0  # A of the authors' schedule: 15 for CIFAR-10, 10 for ImageNet
    symmetric: bool = True  # both directions of the instance term (the authors'); False: one (rrcm's earlier)
    view_noise: str = "shared"  # shared: both views take the trajectory term's ε (the authors'); independent
    trajectory_augment: str = "flip"  # flip (the authors': colour data only) | standard (rrcm's earlier: + crop)
    trajectory_weight: float = 1.0  # 0 disables the term (ablation)
    instance_weight: float = 1.0  # 0 disables the term (ablation)
    crop_scale_min: float = 0.08
    blur: bool = True
    # The authors' ImageNet pre-training: MoCo v3's initialisation and the patch embedding frozen at it
    # (their CIFAR-10 one: neither). "vit" is trunc-normal(0.02) weights (see rrcm.models.time_vit's docstring).
    encoder_init: str = "vit"  # vit | moco-v3
    freeze_patch_embed: bool = False
    curriculum: str = "rrcm"  # rrcm (the authors': 43% of steps on 41 points, 57% on 81) | equal-stages
    curriculum_start: int = diffusion.CURRICULUM_START
    curriculum_end: int = diffusion.CURRICULUM_END
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 with a gradient scaler, for GPUs without bf16)
    checkpoint_every: int = 200  # steps
    log_every: int = 50  # steps per metrics row

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "PretrainConfig":
        return config_from_dict(cls, values, "pre-training")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, world_size: int = 1) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            # InfoNCE needs at least one negative and the projector's batch norm two samples to normalise
            raise UserError(f"--batch-size must be at least 2 for contrastive pre-training, got {self.batch_size}")
        if self.batch_size % world_size:
            raise UserError(f"the global batch ({self.batch_size}) must divide evenly over {world_size} processes")
        if self.lr <= 0 or self.temperature <= 0:
            raise UserError("learning rate and temperature must be positive")
        choices = {"ema_schedule": ("EMA schedule", EMA_SCHEDULES), "curriculum": ("curriculum", diffusion.CURRICULA),
                   "view_noise": ("view noise", VIEW_NOISE),
                   "trajectory_augment": ("trajectory augmentation", TRAJECTORY_AUGMENTS),
                   "encoder_init": ("encoder initialisation", ENCODER_INITS)}
        for name, (what, allowed) in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"unknown {what} {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        if not (0 <= self.ema_base < 1 and 0 <= self.ema_final < 1):
            raise UserError("EMA rates must lie in [0, 1)")
        if self.ema_schedule == "rrcm" and not (self.ema_final > self.ema_base and self.ema_sharpness > 0):
            raise UserError("the rrcm EMA schedule needs --ema-final above --ema-base and --ema-sharpness > 0")
        if self.trajectory_weight < 0 or self.instance_weight < 0 or self.trajectory_weight + self.instance_weight == 0:
            raise UserError("term weights must be non-negative and not both zero")
        engine.check_precision(self.precision)
        if not 0 < self.crop_scale_min <= 1:
            raise UserError(f"crop-scale-min must lie in (0, 1], got {self.crop_scale_min}")


class ContrastiveDenoiser(torch.nn.Module):
    """Online encoder + projector and their EMA target; `forward` returns the pre-training loss."""

    def __init__(self, encoder: TimeConditionedViT, feature_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.encoder = encoder
        self.projector = Projector(feature_dim, hidden, out_dim)
        self.target = EMATarget(torch.nn.ModuleDict({"encoder": encoder, "projector": self.projector}))

    def update_target(self, momentum: float) -> None:
        self.target.update(torch.nn.ModuleDict({"encoder": self.encoder, "projector": self.projector}), momentum)

    def forward(self, batch: dict[str, torch.Tensor], sigma_noisy: float, sigma_clean: float, *,
                temperature: float, trajectory_weight: float = 1.0, instance_weight: float = 1.0,
                symmetric: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts: dict[str, torch.Tensor] = {}
        loss = torch.zeros((), device=batch["x"].device)
        if trajectory_weight > 0:
            x, eps = batch["x"], batch["eps"]
            query = self.encoder(diffusion.add_noise(x, sigma_noisy, eps), sigma_noisy)
            with torch.no_grad():  # stop-gradient key on the less noisy neighbour
                key = self.encoder(diffusion.add_noise(x, sigma_clean, eps), sigma_clean)
            parts["trajectory"] = info_nce(query, key, temperature)
            loss = loss + trajectory_weight * parts["trajectory"]
        if instance_weight > 0:
            sigma = diffusion.SIGMA_MIN
            view1 = diffusion.add_noise(batch["view1"], sigma, batch["eps1"])
            view2 = diffusion.add_noise(batch["view2"], sigma, batch["eps2"])
            query = self.projector(self.encoder(view1, sigma))
            with torch.no_grad():
                key = self.target.network["projector"](self.target.network["encoder"](view2, sigma))
            instance = info_nce(query, key, temperature)
            if symmetric:
                query2 = self.projector(self.encoder(view2, sigma))
                with torch.no_grad():
                    key2 = self.target.network["projector"](self.target.network["encoder"](view1, sigma))
                instance = instance + info_nce(query2, key2, temperature)
            parts["instance"] = instance
            loss = loss + instance_weight * instance
        return loss, parts


def resolve_pretrain_config(cfg: PretrainConfig, info) -> dict[str, Any]:
    try:
        arch = model_config("rrcm_vit", num_classes=info.num_classes, in_channels=info.channels,
                            image_size=info.image_size, mean=list(info.mean), std=list(info.std), **cfg.arch_options)
    except (ValueError, TypeError) as e:
        raise UserError(f"invalid encoder options: {e}") from None
    return {"command": "pretrain", "rrcm_version": __version__, "torch_version": torch.__version__,
            "pretrain": cfg.to_dict(), "model": arch, "data": info.to_dict(),
            "grid": {"sigma_min": diffusion.SIGMA_MIN, "sigma_max": diffusion.SIGMA_MAX, "rho": diffusion.RHO,
                     "sigma_data": diffusion.SIGMA_DATA, "curriculum": [cfg.curriculum_start, cfg.curriculum_end]}}


def make_batch(dataset, indices: torch.Tensor, cfg: PretrainConfig, ctx: StepContext) -> dict[str, torch.Tensor]:
    """The local inputs of one step: clean images in [−1, 1], their noise, and two augmented views."""
    generator = ctx.generator(BATCH_STREAM)
    x01, _ = dataset.batch(indices)
    grey = x01.shape[1] == 1
    if cfg.trajectory_augment == "flip":  # flips change what a digit is: none for grey images
        augment = identity if grey else random_hflip
    else:
        augment = train_augment(cfg.data)
    x = diffusion.pixels_to_diffusion(augment(x01, generator))
    view1, view2 = two_views(x01, generator, grey=grey, scale_min=cfg.crop_scale_min, blur=cfg.blur)
    batch = {"x": x, "view1": diffusion.pixels_to_diffusion(view1), "view2": diffusion.pixels_to_diffusion(view2)}
    batch["eps"] = torch.randn(x.shape, generator=generator)
    for name in ("eps1", "eps2"):
        batch[name] = batch["eps"] if cfg.view_noise == "shared" else torch.randn(x.shape, generator=generator)
    return {k: v.to(ctx.device, non_blocking=True) for k, v in batch.items()}


class PretrainTask(engine.Task):
    """One rRCM pre-training run for the engine."""

    what = "pre-training"
    settings_key = "pretrain"
    final_file = ENCODER_FILE
    metric_columns = METRIC_COLUMNS

    def __init__(self, cfg: PretrainConfig, dataset, run_config: dict[str, Any]):
        self.cfg, self.dataset, self.run_config = cfg, dataset, run_config
        self.num_examples = len(dataset)
        self.settings = engine.EngineSettings(
            seed=cfg.seed, total_steps=cfg.steps, batch_size=cfg.batch_size, drop_last=True, lr=cfg.lr,
            warmup_steps=cfg.warmup_steps, log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every,
            optimizer="adamw", grad_clip=cfg.grad_clip, clip_from_step=0 if cfg.clip_during_warmup else cfg.warmup_steps,
            precision=cfg.precision, gradient_sync="all_reduce")

    def build(self, ctx: DistContext) -> torch.nn.Module:
        cfg = self.cfg
        encoder = encoder_from_config(self.run_config["model"])
        if cfg.encoder_init == "moco-v3":
            moco_v3_init(encoder)
        if cfg.freeze_patch_embed:
            encoder.patch_embed.requires_grad_(False)
        model = ContrastiveDenoiser(encoder, self.run_config["model"]["width"], cfg.projector_hidden, cfg.projector_dim)
        if ctx.enabled:
            convert_to_global_batchnorm(model)
        return model.to(ctx.device)

    def parameter_groups(self, model: torch.nn.Module) -> list[dict]:
        return engine.parameter_groups(model, self.cfg.weight_decay)

    def describe(self, model: torch.nn.Module, device: torch.device) -> str:
        cfg = self.cfg
        return (f"pre-training an rRCM encoder ({count_parameters(model.encoder):,} parameters) on {cfg.data} "
                f"({self.num_examples} images) for {cfg.steps} steps of {cfg.batch_size} on {device}")

    def num_points(self, step: int) -> int:
        cfg = self.cfg
        return diffusion.curriculum_num_points(step, cfg.steps, cfg.curriculum_start, cfg.curriculum_end, cfg.curriculum)

    def step(self, model, forward, indices: torch.Tensor, ctx: StepContext) -> StepOutput:
        cfg = self.cfg
        batch = make_batch(self.dataset, indices, cfg, ctx)
        num_points = self.num_points(ctx.step)
        grid = diffusion.karras_sigmas(num_points)
        # one grid index for the whole global batch: the same draw on every process
        i = diffusion.sample_adjacent_index(num_points, ctx.generator(GRID_STREAM, per_rank=False))
        loss, parts = forward(batch, float(grid[i]), float(grid[i + 1]), temperature=cfg.temperature,
                              trajectory_weight=cfg.trajectory_weight, instance_weight=cfg.instance_weight,
                              symmetric=cfg.symmetric)
        n = len(indices)
        sums = {"loss": loss.detach() * n}
        for name in ("trajectory", "instance"):
            sums[name] = parts[name].detach() * n if name in parts else torch.zeros((), device=ctx.device)
        return StepOutput(loss, sums, n)

    def momentum(self, step: int) -> float:
        cfg = self.cfg
        return ema_momentum(step, cfg.steps, cfg.ema_schedule, cfg.ema_base, cfg.ema_final, cfg.ema_sharpness)

    def after_optimizer_step(self, model: torch.nn.Module, step: int) -> None:
        model.update_target(self.momentum(step))

    def row_values(self, step: int) -> dict[str, Any]:
        return {"num_points": self.num_points(step), "ema": self.momentum(step)}

    def export(self, model: torch.nn.Module, path: Path) -> None:
        run_config = self.run_config
        config = {"kind": "rrcm_encoder", "rrcm_version": __version__, "model": run_config["model"],
                  "data": run_config["data"], "pretrain": run_config["pretrain"], "grid": run_config["grid"],
                  "steps_trained": self.cfg.steps}
        save_checkpoint(path, torch.nn.ModuleDict({"encoder": model.encoder}), config)


def pretrain(cfg: PretrainConfig, out_dir: str | Path, *, progress: bool = True,
             stop_after_step: int | None = None, ctx: DistContext | None = None) -> Path:
    """Pre-train (or resume) an rRCM encoder; returns the path of encoder.safetensors."""
    ctx = ctx or init_distributed(cfg.device)
    cfg.validate(ctx.world_size)
    dataset = load_dataset(cfg.data, "train", cfg.data_root, image_size=cfg.image_size)
    if len(dataset) < cfg.batch_size:
        # every step takes one full global batch of distinct images; a smaller set would train on less
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {len(dataset)} training images of "
                        f"{cfg.data}; use --batch-size {len(dataset)} or less")
    task = PretrainTask(cfg, dataset, resolve_pretrain_config(cfg, dataset.info))
    return engine.train(task, out_dir, ctx, progress=progress, stop_after_step=stop_after_step)
