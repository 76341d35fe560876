"""Training a smoothed-classifier base model: every objective of `objectives.OBJECTIVES` (Gaussian
augmentation, consistency regularisation, clean), from scratch or fine-tuned from an rRCM encoder, as a
task of the training engine (`engine.py`: resume, DDP, precision, metrics).

Outputs in `out_dir`:
  config.json              the resolved run config (what --dry-run prints), written with the first training
                           state: a run that fails before it has anything to keep leaves the folder as it was
  metrics.csv              one row per epoch
  train_state.safetensors  model, optimizer and step, to resume an interrupted run
  model.safetensors        the final model with its config: all `rrcm certify` needs
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from .. import __version__, diffusion
from ..checkpoint import read_checkpoint_config, save_checkpoint
from ..compatibility import check_class_names, recorded_class_names
from ..data import load_dataset, probe_dataset
from ..data.augment import train_augment
from ..distributed import DistContext, init_distributed
from ..errors import UserError
from ..models import build_model, count_parameters, model_config
from . import engine
from .config import TrainConfig
from .engine import StepContext, StepOutput
from .mixing import mix_batch
from .objectives import OBJECTIVES

MODEL_FILE = "model.safetensors"
STATE_FILE = engine.STATE_FILE
METRIC_COLUMNS = ("epoch", "step", "lr", "loss", "noisy_train_accuracy", "seconds")
NOISE_STREAM, AUGMENT_STREAM = 1, 2  # generator streams of a step (engine.StepContext.generator)


def engine_settings(cfg: TrainConfig, num_examples: int) -> engine.EngineSettings:
    """Epochs in steps: a metrics row per epoch, a resumable state every `checkpoint_every` epochs."""
    per_epoch = engine.steps_per_epoch(num_examples, cfg.batch_size, drop_last=False)
    return engine.EngineSettings(
        seed=cfg.seed, total_steps=per_epoch * cfg.epochs, batch_size=cfg.batch_size, drop_last=False, lr=cfg.lr,
        warmup_steps=int(cfg.warmup_epochs * per_epoch), log_every=per_epoch,
        checkpoint_every=cfg.checkpoint_every * per_epoch, optimizer=cfg.optimizer, momentum=cfg.momentum,
        grad_clip=cfg.grad_clip, precision=cfg.precision, gradient_sync="ddp", lr_schedule=cfg.lr_schedule)


def resolve_run_config(cfg: TrainConfig, info=None, *, ignore_class_names: bool = False) -> dict[str, Any]:
    """Everything the run will use, resolved: what `--dry-run` prints and `config.json` holds.

    Fine-tuning from an encoder pre-trained on other classes is refused unless `ignore_class_names`.
    """
    cfg.validate()
    if info is None:
        info, _ = probe_dataset(cfg.data, "train", cfg.data_root, image_size=cfg.image_size)  # decodes no image
    options = dict(cfg.arch_options)
    extra: dict[str, Any] = {}
    if cfg.arch == "rrcm_vit":
        # The encoder is told the noise level: 2σ in [−1, 1] space, snapped to the final Karras grid.
        extra["conditioning"] = diffusion.conditioning_sigma(cfg.sigma)
        options["condition_sigma"] = extra["conditioning"]["sigma_condition"]
        if cfg.pretrained:
            encoder_config = read_checkpoint_config(cfg.pretrained)
            if encoder_config.get("kind") != "rrcm_encoder":
                raise UserError(f"{cfg.pretrained} is not a pre-trained rRCM encoder; give the encoder.safetensors "
                                "written by `rrcm pretrain`")
            pretrained_model = encoder_config["model"]
            if (pretrained_model["in_channels"], pretrained_model["image_size"]) != (info.channels, info.image_size):
                raise UserError(f"{cfg.pretrained} was pre-trained on {pretrained_model['in_channels']}×"
                                f"{pretrained_model['image_size']}² images but the data has {info.channels}×"
                                f"{info.image_size}²; fine-tune on the data it was pre-trained on")
            if not ignore_class_names:
                check_class_names(recorded_class_names(encoder_config), info.classes, cfg.pretrained)
            # the encoder's structure is the pre-trained one's; the head's input (feature_norm) is fine-tuning's
            keep = ("patch_size", "width", "depth", "heads", "mlp_ratio", "time_embed_dim", "sigma_data",
                    "time_token", "qkv_bias")
            options = {**{k: pretrained_model[k] for k in keep if k in pretrained_model}, **options}
            extra["pretrained"] = {"path": cfg.pretrained, "data": encoder_config.get("data"),
                                   "steps_trained": encoder_config.get("steps_trained")}
    try:
        arch = model_config(cfg.arch, num_classes=info.num_classes, in_channels=info.channels,
                            image_size=info.image_size, mean=list(info.mean), std=list(info.std), **options)
    except (ValueError, TypeError) as e:
        raise UserError(f"invalid model options for {cfg.arch!r}: {e}") from None
    return {"command": "train", "rrcm_version": __version__, "torch_version": torch.__version__,
            "python": platform.python_version(), "train": cfg.to_dict(), "model": arch, "data": info.to_dict(),
            **extra}


class ClassifierTask(engine.Task):
    """One classifier training run for the engine."""

    what = "training"
    settings_key = "train"
    final_file = MODEL_FILE
    metric_columns = METRIC_COLUMNS

    def __init__(self, cfg: TrainConfig, dataset, run_config: dict[str, Any]):
        self.cfg, self.dataset, self.run_config = cfg, dataset, run_config
        self.num_examples = len(dataset)
        self.settings = engine_settings(cfg, self.num_examples)
        self.objective = OBJECTIVES[cfg.method](cfg)
        self.augment = train_augment(cfg.data, cfg.augmentation) if cfg.augment else None
        self.mixes = cfg.mixup > 0 or cfg.cutmix > 0 or cfg.label_smoothing > 0

    def build(self, ctx: DistContext) -> torch.nn.Module:
        model = build_model(self.run_config["model"])
        if self.cfg.pretrained:
            _load_pretrained_encoder(model, self.cfg.pretrained)
        if self.cfg.freeze_head:
            for p in model.head.parameters():
                p.requires_grad_(False)
        return model.to(ctx.device)

    def parameter_groups(self, model: torch.nn.Module) -> list[dict]:
        depth = self.run_config["model"].get("depth") if self.cfg.arch == "rrcm_vit" else None
        return engine.parameter_groups(model, self.cfg.weight_decay, layer_decay=self.cfg.layer_decay, depth=depth)

    def describe(self, model: torch.nn.Module, device: torch.device) -> str:
        cfg = self.cfg
        noise = "on clean images" if cfg.method == "clean" else f"with {cfg.method} noise σ={cfg.sigma}"
        return (f"training {cfg.arch} ({count_parameters(model):,} parameters) {noise} on {cfg.data} "
                f"({self.num_examples} images) for {cfg.epochs} epochs on {device}")

    def step(self, model, forward, indices: torch.Tensor, ctx: StepContext) -> StepOutput:
        x, y = self.dataset.batch(indices)
        augment_generator = ctx.generator(AUGMENT_STREAM)
        if self.augment is not None:
            x = self.augment(x, augment_generator)
        targets = y
        if self.mixes:
            cfg = self.cfg
            x, targets = mix_batch(x, y, self.dataset.info.num_classes, augment_generator, mixup_alpha=cfg.mixup,
                                   cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing)
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        targets = targets.to(ctx.device, non_blocking=True)
        out = self.objective(forward, x, targets, ctx.generator(NOISE_STREAM, device=ctx.device))
        correct = (out.logits.argmax(1) == y).sum()
        return StepOutput(out.loss, {"loss": out.loss.detach() * len(y), "noisy_train_accuracy": correct}, len(y))

    def export(self, model: torch.nn.Module, path: Path) -> None:
        cfg, run_config = self.cfg, self.run_config
        config = {"kind": "classifier", "rrcm_version": __version__, "model": run_config["model"],
                  "data": run_config["data"], "method": cfg.method,
                  # a clean classifier has no smoothing σ: certify then asks for --sigma
                  "sigma": None if cfg.method == "clean" else cfg.sigma,
                  "train": run_config["train"], "epochs_trained": cfg.epochs,
                  **{k: run_config[k] for k in ("conditioning", "pretrained") if k in run_config}}
        save_checkpoint(path, model, config)


def train_classifier(cfg: TrainConfig, out_dir: str | Path, *, progress: bool = True,
                     stop_after_epoch: int | None = None, ignore_class_names: bool = False) -> Path:
    """Train (or resume training) and return the path of the final checkpoint.

    `stop_after_epoch` ends the run early after that epoch's checkpoint, as an interruption would.
    """
    cfg.validate()
    dataset = load_dataset(cfg.data, "train", cfg.data_root, image_size=cfg.image_size)
    task = ClassifierTask(cfg, dataset, resolve_run_config(cfg, dataset.info, ignore_class_names=ignore_class_names))
    ctx = init_distributed(cfg.device)
    per_epoch = task.settings.log_every
    stop_after_step = None if stop_after_epoch is None else stop_after_epoch * per_epoch
    return engine.train(task, out_dir, ctx, progress=progress, stop_after_step=stop_after_step)


def _load_pretrained_encoder(model: torch.nn.Module, path: str) -> None:
    """Copy the `encoder.*` weights of a pre-trained rRCM encoder into the classifier; the head stays new."""
    from ..checkpoint import load_weights

    state = load_weights(path)  # checked against the SHA-256 recorded when it was written
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise UserError(f"{path} does not match the classifier's encoder (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}); fine-tune with the architecture it was pre-trained with")
