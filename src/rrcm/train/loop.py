"""One training loop for smoothed-classifier baselines: DDP, autocast, resumable checkpoints, metrics.

Outputs in `out_dir`:
  config.json              the resolved run config (what --dry-run prints), written with the first training
                           state: a run that fails before it has anything to keep leaves the folder as it was
  metrics.csv              one row per epoch
  train_state.safetensors  model, optimizer, epoch and generator states, to resume an interrupted run
  model.safetensors        the final model with its config: all `rrcm certify` needs
"""

from __future__ import annotations

import contextlib
import math
import platform
import re
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .. import __version__, diffusion
from ..checkpoint import load_state, read_checkpoint_config, save_checkpoint, save_state
from ..data import load_dataset, probe_dataset
from ..data.augment import train_augment
from ..distributed import DistContext, init_distributed
from ..errors import UserError
from ..fileio import check_output_folder, write_json_atomic
from ..models import build_model, count_parameters, model_config
from ..smoothing.noise import derive_seed
from .config import TrainConfig
from .mixing import mix_batch
from .schedule import warmup_cosine
from .outputs import CONFIG_FILE, check_resumable, write_metrics
from ..compatibility import check_class_names, recorded_class_names
from .objectives import clean_objective, consistency_objective, gaussian_objective

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
METRIC_COLUMNS = ("epoch", "step", "lr", "loss", "noisy_train_accuracy", "seconds")


def seeded_generator(*keys: int, device: torch.device | str = "cpu") -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(*keys))
    return generator


def learning_rate(cfg: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Linear warm-up, then cosine decay to zero."""
    return warmup_cosine(cfg.lr, step, total_steps, int(cfg.warmup_epochs * steps_per_epoch))


def layer_id(name: str, depth: int) -> int:
    """Depth of a ViT parameter for layer-wise decay: embeddings 0, block i → i + 1, the rest depth + 1."""
    match = re.search(r"(?:^|\.)blocks\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    if re.search(r"(patch|pos|cls|time|token|embed)", name) and not name.startswith("head"):
        return 0
    return depth + 1


def parameter_groups(cfg: TrainConfig, model: torch.nn.Module, depth: int | None) -> list[dict]:
    """No weight decay on biases and norms (1-D tensors); with layer decay, lr scale decay^(depth+1−layer)."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        layer = layer_id(name, depth) if (cfg.layer_decay is not None and depth is not None) else 0
        scale = cfg.layer_decay ** ((depth + 1) - layer) if (cfg.layer_decay is not None and depth is not None) else 1.0
        key = (layer, p.ndim > 1)
        group = groups.setdefault(key, {"params": [], "weight_decay": cfg.weight_decay if p.ndim > 1 else 0.0,
                                        "lr_scale": scale})
        group["params"].append(p)
    return list(groups.values())


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module, depth: int | None = None) -> torch.optim.Optimizer:
    groups = parameter_groups(cfg, model, depth)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    return torch.optim.AdamW(groups, lr=cfg.lr)


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
            keep = ("patch_size", "width", "depth", "heads", "mlp_ratio")
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


def train_classifier(cfg: TrainConfig, out_dir: str | Path, *, progress: bool = True,
                     stop_after_epoch: int | None = None, ignore_class_names: bool = False) -> Path:
    """Train (or resume training) and return the path of the final checkpoint.

    `stop_after_epoch` ends the run early after that epoch's checkpoint, as an interruption would.
    """
    out_dir = Path(out_dir)
    cfg.validate()
    dataset = load_dataset(cfg.data, "train", cfg.data_root, image_size=cfg.image_size)
    run_config = resolve_run_config(cfg, dataset.info, ignore_class_names=ignore_class_names)
    ctx = init_distributed(cfg.device)
    final_path = out_dir / MODEL_FILE
    if final_path.exists():
        previous = read_checkpoint_config(final_path)
        if previous.get("train") != run_config["train"]:
            raise UserError(f"{final_path} was trained with different settings; use another --out")
        if ctx.is_main:
            print(f"{final_path} is already trained; nothing to do")
        return final_path
    check_resumable(out_dir, run_config, state_file=STATE_FILE, keys=("train", "model"))
    if ctx.is_main:  # an unwritable --out is refused now; config.json comes with the first training state
        check_output_folder(out_dir)

    device = ctx.device
    torch.manual_seed(derive_seed(cfg.seed, 0))  # identical initial weights on every process
    model = build_model(run_config["model"])
    if cfg.pretrained:
        _load_pretrained_encoder(model, cfg.pretrained)
    if cfg.freeze_head:
        for p in model.head.parameters():
            p.requires_grad_(False)
    model.to(device)
    optimizer = make_optimizer(cfg, model, run_config["model"].get("depth") if cfg.arch == "rrcm_vit" else None)
    train_model = model
    if ctx.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    augment = train_augment(cfg.data) if cfg.augment else None
    noise_generator = seeded_generator(cfg.seed, 1, ctx.rank, device=device)
    augment_generator = seeded_generator(cfg.seed, 2, ctx.rank)

    num_examples = len(dataset)
    steps_per_epoch = math.ceil(num_examples / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    start_epoch, step, metric_rows = 0, 0, []
    state_path = out_dir / STATE_FILE
    if state_path.exists():
        state = load_state(state_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        noise_generator.set_state(state["noise_generator"][ctx.rank])
        augment_generator.set_state(state["augment_generator"][ctx.rank])
        start_epoch, step, metric_rows = state["epoch"], state["step"], state["metrics"]
        if ctx.is_main:
            print(f"resuming {out_dir} after epoch {start_epoch} of {cfg.epochs}")

    if ctx.is_main:
        noise = "on clean images" if cfg.method == "clean" else f"with {cfg.method} noise σ={cfg.sigma}"
        print(f"training {cfg.arch} ({count_parameters(model):,} parameters) {noise} on {cfg.data} "
              f"({num_examples} images) for {cfg.epochs} epochs on {device}")
    tensorboard = None  # made at the end of the first epoch: a run that fails at its first step leaves nothing
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if cfg.precision == "bf16"
                else contextlib.nullcontext())
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        t0 = time.perf_counter()
        order = torch.randperm(num_examples, generator=seeded_generator(cfg.seed, 3, epoch))
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step", leave=False,
                   disable=not (progress and ctx.is_main), dynamic_ncols=True)
        for batch_number in bar:
            global_batch = order[batch_number * cfg.batch_size : (batch_number + 1) * cfg.batch_size]
            local = global_batch[ctx.rank :: ctx.world_size]
            x, y = dataset.batch(local)
            if augment is not None:
                x = augment(x, augment_generator)
            targets = y
            if cfg.mixup > 0 or cfg.cutmix > 0 or cfg.label_smoothing > 0:
                x, targets = mix_batch(x, y, dataset.info.num_classes, augment_generator, mixup_alpha=cfg.mixup,
                                       cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            lr = learning_rate(cfg, step, total_steps, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            with autocast:
                if cfg.method == "clean":
                    out = clean_objective(train_model, x, targets)
                elif cfg.method == "gaussian":
                    out = gaussian_objective(train_model, x, targets, sigma=cfg.sigma, generator=noise_generator)
                else:
                    out = consistency_objective(train_model, x, targets, sigma=cfg.sigma, generator=noise_generator,
                                                num_noise=cfg.num_noise, lbd=cfg.lbd, eta=cfg.eta)
            if not torch.isfinite(out.loss):
                raise UserError(f"training diverged (loss {float(out.loss)} at step {step}); lower --lr")
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            loss_sum += out.loss.detach() * len(y)
            correct += (out.logits.argmax(1) == y).sum()
            seen += len(y)
        totals = torch.stack([loss_sum, correct.float(), torch.tensor(float(seen), device=device)])
        if ctx.enabled:
            torch.distributed.all_reduce(totals)
        metric_rows.append({"epoch": epoch + 1, "step": step, "lr": lr, "loss": float(totals[0] / totals[2]),
                            "noisy_train_accuracy": float(totals[1] / totals[2]),
                            "seconds": round(time.perf_counter() - t0, 3)})
        if tensorboard is None and ctx.is_main:
            tensorboard = _tensorboard_writer(out_dir)
        if tensorboard is not None:
            for key in ("loss", "noisy_train_accuracy", "lr"):
                tensorboard.add_scalar(f"train/{key}", metric_rows[-1][key], epoch + 1)
            tensorboard.flush()
        if ctx.is_main and progress:
            row = metric_rows[-1]
            tqdm.write(f"epoch {row['epoch']}: loss {row['loss']:.4f}, noisy train accuracy "
                       f"{row['noisy_train_accuracy']:.4f} ({row['seconds']:.1f}s)")
        last = epoch + 1 == cfg.epochs
        if last or (epoch + 1) % cfg.checkpoint_every == 0 or stop_after_epoch == epoch + 1:
            if ctx.is_main:  # first of all the run keeps (and rewritten, unchanged, with every state)
                write_json_atomic(out_dir / CONFIG_FILE, run_config)
            _save_training_state(ctx, out_dir, model, optimizer, noise_generator, augment_generator,
                                 epoch + 1, step, metric_rows)
        if stop_after_epoch == epoch + 1 and not last:
            return state_path

    if ctx.is_main:
        checkpoint_config = {"kind": "classifier", "rrcm_version": __version__, "model": run_config["model"],
                             "data": run_config["data"], "method": cfg.method,
                             # a clean classifier has no smoothing σ: certify then asks for --sigma
                             "sigma": None if cfg.method == "clean" else cfg.sigma,
                             "train": run_config["train"], "epochs_trained": cfg.epochs,
                             **{k: run_config[k] for k in ("conditioning", "pretrained") if k in run_config}}
        save_checkpoint(final_path, model, checkpoint_config)
        state_path.unlink(missing_ok=True)
    if ctx.enabled:
        torch.distributed.barrier()
    return final_path


def _load_pretrained_encoder(model: torch.nn.Module, path: str) -> None:
    """Copy the `encoder.*` weights of a pre-trained rRCM encoder into the classifier; the head stays new."""
    from ..checkpoint import load_weights

    state = load_weights(path)  # checked against the SHA-256 recorded when it was written
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise UserError(f"{path} does not match the classifier's encoder (missing {missing[:3]}, unexpected "
                        f"{unexpected[:3]}); fine-tune with the architecture it was pre-trained with")


def _tensorboard_writer(out_dir: Path):
    """A TensorBoard writer when the tensorboard package is installed; metrics.csv is always written."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))


def _gather_generator_states(ctx: DistContext, generator: torch.Generator) -> list[torch.Tensor]:
    state = generator.get_state()
    if not ctx.enabled:
        return [state]
    states = [None] * ctx.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def _save_training_state(ctx: DistContext, out_dir: Path, model, optimizer, noise_generator, augment_generator,
                         epoch: int, step: int, metric_rows: list[dict]) -> None:
    noise_states = _gather_generator_states(ctx, noise_generator)
    augment_states = _gather_generator_states(ctx, augment_generator)
    if not ctx.is_main:
        return
    save_state(out_dir / STATE_FILE, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                      "noise_generator": noise_states, "augment_generator": augment_states,
                                      "epoch": epoch, "step": step, "metrics": metric_rows})
    write_metrics(out_dir, metric_rows, METRIC_COLUMNS)
