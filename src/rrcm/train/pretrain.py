"""rRCM pre-training: contrastive denoising along diffusion trajectories.

Loss = trajectory term + instance-discrimination term, both InfoNCE (τ = 0.2) against the rest of the
global batch:
  trajectory  query: online encoder on x + σ_i ε (the noisier point, time σ_i); key: the same encoder
              with stop-gradient on x + σ_{i+1} ε (same ε, time σ_{i+1}); on the cls feature h.
  instance    two augmented views at σ_min; query: projector(encoder(view 1)); key: the EMA target's
              projector(encoder(view 2)); with `symmetric`, the swapped pair is added as well.
One grid index i per step for the whole global batch; the number of grid points follows the
21 → 41 → 81 curriculum. All randomness of a step comes from generators seeded by (seed, step, rank),
so a resumed run follows the uninterrupted one exactly. The running sums of the current metrics window
travel in the training state too, so a resumed run writes the same metrics.csv (all but `seconds`, the
wall-clock time spent training in the window) even when --checkpoint-every is not a multiple of --log-every.

Outputs in `out_dir`: config.json, metrics.csv, train_state.safetensors (resume) and
encoder.safetensors (the pre-trained encoder with its config; the projector is dropped).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .. import __version__, diffusion
from ..checkpoint import load_state, save_checkpoint, save_state
from ..data import load_dataset
from ..data.augment import train_augment
from ..data.contrastive import two_views
from ..distributed import DistContext, init_distributed
from ..errors import UserError
from ..fileio import check_output_folder, write_json_atomic
from ..models import count_parameters, model_config
from ..models.time_vit import Projector, TimeConditionedViT, encoder_from_config
from .contrastive import EMATarget, average_gradients, convert_to_global_batchnorm, ema_momentum, info_nce
from .loop import seeded_generator
from .config import config_from_dict
from .schedule import warmup_cosine
from .outputs import CONFIG_FILE, check_resumable, write_metrics

ENCODER_FILE = "encoder.safetensors"
STATE_FILE = "train_state.safetensors"
METRIC_COLUMNS = ("step", "num_points", "lr", "ema", "loss", "trajectory", "instance", "seconds")


def _empty_window() -> dict[str, Any]:
    """Running sums of one metrics row; `seconds` counts training time only (not the time before a resume)."""
    return {"loss": 0.0, "trajectory": 0.0, "instance": 0.0, "count": 0, "seconds": 0.0}


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
    temperature: float = 0.2
    projector_hidden: int = 1024
    projector_dim: int = 256
    ema_schedule: str = "fixed"  # fixed | sigmoid
    ema_base: float = 0.99
    ema_final: float = 0.9999
    symmetric: bool = False
    trajectory_weight: float = 1.0  # 0 disables the term (ablation)
    instance_weight: float = 1.0  # 0 disables the term (ablation)
    crop_scale_min: float = 0.08
    blur: bool = True
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
        if self.ema_schedule not in ("fixed", "sigmoid"):
            raise UserError(f"unknown EMA schedule {self.ema_schedule!r}; choose fixed or sigmoid")
        if not (0 <= self.ema_base < 1 and 0 <= self.ema_final < 1):
            raise UserError("EMA rates must lie in [0, 1)")
        if self.trajectory_weight < 0 or self.instance_weight < 0 or self.trajectory_weight + self.instance_weight == 0:
            raise UserError("term weights must be non-negative and not both zero")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise UserError(f"unknown precision {self.precision!r}; choose fp32, bf16 or fp16")
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


def make_batch(dataset, indices: torch.Tensor, cfg: PretrainConfig, step: int, rank: int,
               device: torch.device) -> dict[str, torch.Tensor]:
    """The local inputs of one step: clean images in [−1, 1], their noise, and two augmented views."""
    generator = seeded_generator(cfg.seed, 10, step, rank)
    x01, _ = dataset.batch(indices)
    augment = train_augment(cfg.data)
    grey = x01.shape[1] == 1
    x = diffusion.pixels_to_diffusion(augment(x01, generator))
    view1, view2 = two_views(x01, generator, grey=grey, scale_min=cfg.crop_scale_min, blur=cfg.blur)
    batch = {"x": x, "view1": diffusion.pixels_to_diffusion(view1), "view2": diffusion.pixels_to_diffusion(view2)}
    for name in ("eps", "eps1", "eps2"):
        batch[name] = torch.randn(x.shape, generator=generator)
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def pretrain(cfg: PretrainConfig, out_dir: str | Path, *, progress: bool = True,
             stop_after_step: int | None = None, ctx: DistContext | None = None) -> Path:
    """Pre-train (or resume) an rRCM encoder; returns the path of encoder.safetensors."""
    out_dir = Path(out_dir)
    ctx = ctx or init_distributed(cfg.device)
    cfg.validate(ctx.world_size)
    dataset = load_dataset(cfg.data, "train", cfg.data_root, image_size=cfg.image_size)
    if len(dataset) < cfg.batch_size:
        # every step takes one full global batch of distinct images; a smaller set would train on less
        raise UserError(f"--batch-size {cfg.batch_size} is larger than the {len(dataset)} training images of "
                        f"{cfg.data}; use --batch-size {len(dataset)} or less")
    run_config = resolve_pretrain_config(cfg, dataset.info)
    final_path = out_dir / ENCODER_FILE
    if final_path.exists():
        if ctx.is_main:
            print(f"{final_path} is already pre-trained; nothing to do")
        return final_path
    check_resumable(out_dir, run_config, state_file=STATE_FILE, keys=("pretrain", "model"),
                    what="pre-training run")
    if ctx.is_main:  # an unwritable --out is refused now; config.json comes with the first training state
        check_output_folder(out_dir)

    device = ctx.device
    torch.manual_seed(cfg.seed)  # identical initial weights on every process
    encoder = encoder_from_config(run_config["model"])
    model = ContrastiveDenoiser(encoder, run_config["model"]["width"], cfg.projector_hidden, cfg.projector_dim)
    if ctx.enabled:
        convert_to_global_batchnorm(model)
    model.to(device)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    if ctx.enabled:  # identical start on every process (the seed already makes it so; this makes sure)
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, 0)

    step, metric_rows, state = 0, [], {}
    state_path = out_dir / STATE_FILE
    if state_path.exists():
        state = load_state(state_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, metric_rows = state["step"], state["metrics"]
        if ctx.is_main:
            print(f"resuming {out_dir} at step {step} of {cfg.steps}")
    if ctx.is_main:
        print(f"pre-training an rRCM encoder ({count_parameters(encoder):,} parameters) on {cfg.data} "
              f"({len(dataset)} images) for {cfg.steps} steps of {cfg.batch_size} on {device}")

    num_examples = len(dataset)
    steps_per_epoch = max(1, num_examples // cfg.batch_size)  # drop the last partial batch
    autocast = torch.autocast(device_type=device.type, enabled=cfg.precision != "fp32",
                              dtype=torch.float16 if cfg.precision == "fp16" else torch.bfloat16)
    # fp16 needs loss scaling; its scale is part of the resumable state
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    # a state written before the window was saved resumes with an empty one (its first row then averages
    # only the steps after the resume)
    window = {**_empty_window(), **state.get("window", {})}
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc="pretrain", unit="step",
               disable=not (progress and ctx.is_main), dynamic_ncols=True)
    while step < cfg.steps:
        epoch, position = divmod(step, steps_per_epoch)
        order = torch.randperm(num_examples, generator=seeded_generator(cfg.seed, 3, epoch))
        global_batch = order[position * cfg.batch_size : (position + 1) * cfg.batch_size]
        local = global_batch.view(ctx.world_size, -1)[ctx.rank]
        batch = make_batch(dataset, local, cfg, step, ctx.rank, device)
        num_points = diffusion.curriculum_num_points(step, cfg.steps, cfg.curriculum_start, cfg.curriculum_end)
        grid = diffusion.karras_sigmas(num_points)
        i = diffusion.sample_adjacent_index(num_points, seeded_generator(cfg.seed, 11, step))
        lr = _learning_rate(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        model.target.network.train()
        with autocast:
            loss, parts = model(batch, float(grid[i]), float(grid[i + 1]), temperature=cfg.temperature,
                                      trajectory_weight=cfg.trajectory_weight, instance_weight=cfg.instance_weight,
                                      symmetric=cfg.symmetric)
        if not torch.isfinite(loss):
            raise UserError(f"pre-training diverged (loss {float(loss)} at step {step}); lower --lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        average_gradients(model)
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        momentum = ema_momentum(step, cfg.steps, cfg.ema_schedule, cfg.ema_base, cfg.ema_final)
        model.update_target(momentum)
        step += 1
        bar.update(1)
        window["loss"] += float(loss.detach())
        for name in ("trajectory", "instance"):
            window[name] += float(parts[name].detach()) if name in parts else 0.0
        window["count"] += 1
        if step % cfg.log_every == 0 or step == cfg.steps:
            n = window["count"]
            metric_rows.append({"step": step, "num_points": num_points, "lr": lr, "ema": momentum,
                                "loss": window["loss"] / n, "trajectory": window["trajectory"] / n,
                                "instance": window["instance"] / n,
                                "seconds": round(window["seconds"] + time.perf_counter() - t0, 3)})
            bar.set_postfix_str(f"loss {metric_rows[-1]['loss']:.3f}")
            window, t0 = _empty_window(), time.perf_counter()
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or step == stop_after_step:
            if ctx.is_main:
                saved_window = {**window, "seconds": window["seconds"] + time.perf_counter() - t0}
                write_json_atomic(out_dir / CONFIG_FILE, run_config)  # with the first thing the run keeps
                save_state(state_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                        "scaler": scaler.state_dict(), "step": step, "metrics": metric_rows,
                                        "window": saved_window})
                write_metrics(out_dir, metric_rows, METRIC_COLUMNS)
        if step == stop_after_step and step < cfg.steps:
            bar.close()
            return state_path
    bar.close()
    if ctx.is_main:
        checkpoint_config = {"kind": "rrcm_encoder", "rrcm_version": __version__, "model": run_config["model"],
                             "data": run_config["data"], "pretrain": run_config["pretrain"], "grid": run_config["grid"],
                             "steps_trained": cfg.steps}
        save_checkpoint(final_path, torch.nn.ModuleDict({"encoder": model.encoder}), checkpoint_config)
        state_path.unlink(missing_ok=True)
    if ctx.enabled:
        torch.distributed.barrier()
    return final_path


def _learning_rate(cfg: PretrainConfig, step: int) -> float:
    return warmup_cosine(cfg.lr, step, cfg.steps, cfg.warmup_steps)
