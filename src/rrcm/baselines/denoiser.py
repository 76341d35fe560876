"""The denoiser of diffusion denoised smoothing: a DDPM ε-prediction `diffusers.UNet2DModel`.

Training is the standard DDPM objective (Ho et al. 2020): images in [0, 1] are mapped to [-1, 1],
t ~ U{0, …, T−1}, x_t = √ᾱ_t x0 + √(1−ᾱ_t) ε with a `diffusers.DDPMScheduler` (linear betas
1e-4 … 0.02 over 1000 steps by default), loss ‖ε̂(x_t, t) − ε‖². AdamW, linear warm-up then cosine
decay, gradient clipping, in the training engine (`rrcm.train.engine`), which seeds every step's
randomness (t, ε, flips, dropout) by (seed, step, rank): a resumed run follows the uninterrupted one
exactly. No EMA of the weights (DDPM's EMA matters for sampling quality, much less
for the one-step denoising DDS does).

Outputs in `out_dir` (`rrcm train-denoiser`; re-running the same command resumes):
  config.json              the resolved run config (what --dry-run prints)
  metrics.csv              one row per epoch
  train_state.safetensors  model, optimizer, epoch: the state an interrupted run resumes from
  denoiser.safetensors     the final UNet with its config (kind "denoiser"):
      {"kind": "denoiser", "model": {"arch": "ddpm_unet", "unet": <UNet2DModel config>,
       "scheduler": {num_train_timesteps, beta_start, beta_end, beta_schedule, prediction_type}},
       "data": <DataInfo>, "train": <DenoiserConfig>, ...}

The denoiser config ("ddpm_unet") is not a classifier arch of `rrcm.models`: load a denoiser with
`load_denoiser`, and turn it into a base classifier with `rrcm dds assemble` (see `dds.py`).
diffusers is imported only inside the functions that need it (it takes seconds to import).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..checkpoint import read_checkpoint_config, save_checkpoint
from ..data import load_dataset, probe_dataset
from ..data.augment import random_hflip
from ..distributed import DistContext, init_distributed
from ..errors import UserError
from ..train import engine
from ..train.config import config_from_dict
from ..train.engine import StepContext, StepOutput

DENOISER_ARCH = "ddpm_unet"
DENOISER_FILE = "denoiser.safetensors"
STATE_FILE = engine.STATE_FILE
METRIC_COLUMNS = ("epoch", "step", "lr", "loss", "seconds")
NOISE_STREAM = 20  # the generator stream of a step's flips, timesteps and noise (engine.StepContext.generator)

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SCHEDULER_DEFAULTS = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
                      "beta_schedule": "linear", "prediction_type": "epsilon"}

# UNet2DModel keyword arguments per size; `arch_options` (--arch-option KEY=VALUE) override them.
UNET_SIZES: dict[str, dict[str, Any]] = {
    # ~0.65M parameters; digits 8×8 trains in a minute or two on a CPU, MNIST 28×28 works as well
    "small": {"block_out_channels": [32, 64], "layers_per_block": 1,
              "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
              "norm_num_groups": 8},
    # MNIST 28×28 on a CPU (~0.16M): half small's width and no attention in the middle block, so that a
    # certification run (UNet + classifier per noise sample) stays within the study's time budget
    "mnist": {"block_out_channels": [16, 32], "layers_per_block": 1,
              "down_block_types": ["DownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "UpBlock2D"],
              "norm_num_groups": 8, "add_attention": False},
    # DDPM's CIFAR-10 shape, narrower (~9M parameters): attention at the second resolution (16×16 at 32×32)
    "cifar": {"block_out_channels": [64, 128, 128], "layers_per_block": 2,
              "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
              "up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 32, "dropout": 0.1},
}

# Built-in presets for `rrcm train-denoiser --preset NAME` (a YAML file with these keys works too).
DENOISER_PRESETS: dict[str, dict[str, Any]] = {
    "digits-denoiser": {"data": "digits", "size": "small", "epochs": 100, "batch_size": 128, "lr": 1e-3,
                        "warmup_steps": 100},
    "mnist-denoiser": {"data": "mnist", "size": "mnist", "epochs": 20, "batch_size": 128, "lr": 1e-3,
                       "warmup_steps": 500},
    # DDPM trained 800k steps of 128 (≈ 2048 epochs), lr 2e-4, 5000 warm-up steps: a GPU job.
    "cifar10-denoiser": {"data": "cifar10", "size": "cifar", "epochs": 2048, "batch_size": 128, "lr": 2e-4,
                         "warmup_steps": 5000, "checkpoint_every": 10},
}


# -- the denoiser config ---------------------------------------------------------------------------

def check_denoiser_config(config: Any) -> dict[str, Any]:
    """Validate a denoiser model config and return it normalised (scheduler defaults filled in).

    Raises TypeError/ValueError naming the key (the registry's contract); needs no diffusers import.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"denoiser config must be a dict, got {type(config).__name__}")
    unknown = sorted(set(config) - {"arch", "unet", "scheduler"})
    if unknown:
        raise ValueError(f"unknown denoiser config key(s): {', '.join(unknown)} (valid keys: arch, unet, scheduler)")
    if config.get("arch") != DENOISER_ARCH:
        raise ValueError(f"denoiser config key 'arch' must be {DENOISER_ARCH!r}, got {config.get('arch')!r}")
    unet = config.get("unet")
    if not isinstance(unet, Mapping):
        raise TypeError(f"denoiser config key 'unet' must be a UNet2DModel config dict, got {unet!r}")
    for key in ("in_channels", "out_channels", "sample_size"):
        if key not in unet:
            raise ValueError(f"denoiser config 'unet' is missing key {key!r}")
    channels = _int(unet["in_channels"], "unet.in_channels", 1)
    if _int(unet["out_channels"], "unet.out_channels", 1) not in (channels, 2 * channels):
        raise ValueError(f"denoiser config 'unet.out_channels' must be in_channels ({channels}) or twice that "
                         f"(learned variance), got {unet['out_channels']}")
    unet_sample_size(unet)
    if unet.get("num_class_embeds") is not None or unet.get("class_embed_type") is not None:
        raise ValueError("class-conditional denoisers are not supported (unet.num_class_embeds / class_embed_type)")
    scheduler = config.get("scheduler")
    if not isinstance(scheduler, Mapping):
        raise TypeError(f"denoiser config key 'scheduler' must be a dict, got {scheduler!r}")
    unknown = sorted(set(scheduler) - set(SCHEDULER_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown denoiser scheduler key(s): {', '.join(unknown)} "
                         f"(valid keys: {', '.join(SCHEDULER_DEFAULTS)})")
    sched = {**SCHEDULER_DEFAULTS, **scheduler}
    sched["num_train_timesteps"] = _int(sched["num_train_timesteps"], "scheduler.num_train_timesteps", 2)
    for key in ("beta_start", "beta_end"):
        value = sched[key]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < float(value) < 1:
            raise ValueError(f"denoiser scheduler key {key!r} must be a number in (0, 1), got {value!r}")
        sched[key] = float(value)
    if sched["beta_schedule"] not in BETA_SCHEDULES:
        raise ValueError(f"denoiser scheduler key 'beta_schedule' must be one of {', '.join(BETA_SCHEDULES)}, "
                         f"got {sched['beta_schedule']!r}")
    if sched["prediction_type"] not in PREDICTION_TYPES:
        raise ValueError(f"denoiser scheduler key 'prediction_type' must be one of {', '.join(PREDICTION_TYPES)}, "
                         f"got {sched['prediction_type']!r}")
    return {"arch": DENOISER_ARCH, "unet": _jsonable(unet), "scheduler": sched}


def unet_sample_size(unet: Mapping[str, Any]) -> int:
    """The square image side a UNet config describes (sample_size may be an int or [h, w])."""
    size = unet["sample_size"]
    if isinstance(size, (list, tuple)):
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"denoiser config 'unet.sample_size' must be square, got {size!r}")
        size = size[0]
    return _int(size, "unet.sample_size", 1)


def alphas_cumprod(scheduler: Mapping[str, Any]) -> torch.Tensor:
    """ᾱ_t for t = 0 … T−1 in float64 (what `DDPMScheduler` holds, in float32).

    Linear and scaled-linear schedules are computed here in float64 (no diffusers import); others come
    from a `DDPMScheduler` built from the config.
    """
    sched = {**SCHEDULER_DEFAULTS, **scheduler}
    steps, start, end = int(sched["num_train_timesteps"]), float(sched["beta_start"]), float(sched["beta_end"])
    if sched["beta_schedule"] == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float64)
    elif sched["beta_schedule"] == "scaled_linear":
        betas = torch.linspace(start ** 0.5, end ** 0.5, steps, dtype=torch.float64) ** 2
    else:
        return make_scheduler(sched).alphas_cumprod.to(torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def make_scheduler(scheduler: Mapping[str, Any]):
    """The `diffusers.DDPMScheduler` a scheduler config describes."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**{**SCHEDULER_DEFAULTS, **scheduler})


def build_unet(config: Mapping[str, Any]):
    """A freshly initialised `diffusers.UNet2DModel` for a denoiser model config."""
    from diffusers import UNet2DModel

    config = check_denoiser_config(config)
    return UNet2DModel.from_config(dict(config["unet"]))


def unet_config_dict(unet) -> dict[str, Any]:
    """A UNet's full config as a JSON dict (diffusers' private `_...` keys dropped)."""
    return _jsonable({k: v for k, v in dict(unet.config).items() if not k.startswith("_")})


def read_denoiser_config(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(checkpoint config, checked model config) of a `denoiser.safetensors`, without its weights."""
    config = read_checkpoint_config(path)
    if config.get("kind") != "denoiser":
        raise UserError(f"{path} is not a denoiser (kind {config.get('kind')!r}); give the denoiser.safetensors "
                        "written by `rrcm train-denoiser`")
    try:
        return config, check_denoiser_config(config["model"])
    except (TypeError, ValueError) as e:
        raise UserError(f"denoiser {path} has a config rrcm cannot build ({_short(e)}); re-train it") from None


def load_denoiser(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(UNet in eval mode, checkpoint config) of a `denoiser.safetensors` written by `rrcm train-denoiser`."""
    from ..checkpoint import load_weights

    config, model_cfg = read_denoiser_config(path)
    try:
        unet = build_unet(model_cfg)
    except (TypeError, ValueError) as e:
        raise UserError(f"denoiser {path} has a config rrcm cannot build ({_short(e)}); re-train it") from None
    state = load_weights(path)  # checked against the SHA-256 recorded when it was written
    try:
        unet.load_state_dict(state, strict=True)
    except Exception as e:  # noqa: BLE001 - a corrupt file and mismatched weights are the same user mistake
        raise UserError(f"denoiser {path} weights do not load ({_short(e)}); the file is corrupt or was edited") from None
    config["model"] = model_cfg
    return unet.eval(), config


def _hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def load_pretrained_denoiser(name: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(UNet in eval mode, denoiser model config) of a diffusers DDPM checkpoint: a folder or a hub id.

    The folder (or hub repository) holds `config.json` + weights and `scheduler_config.json` at its top,
    or a pipeline's `unet/` and `scheduler/` subfolders. With HF_HUB_OFFLINE=1 nothing is downloaded.
    diffusers reads safetensors, or .bin files with `torch.load(weights_only=True)` (no arbitrary
    unpickling). Any failure (no network, no such model, wrong files) is one UserError.
    """
    import warnings

    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.utils import logging as diffusers_logging

    kwargs = {"local_files_only": _hf_offline()}
    folder = Path(name)
    if folder.is_dir():  # a local pipeline folder keeps its parts in subfolders
        layouts = [("unet" if not (folder / "config.json").is_file() and (folder / "unet").is_dir() else None,
                    "scheduler" if not (folder / "scheduler_config.json").is_file()
                    and (folder / "scheduler").is_dir() else None)]
    else:
        layouts = [(None, None), ("unet", "scheduler")]
    errors = []
    unet = scheduler = None
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)  # failures come back as one UserError
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecation chatter of diffusers/huggingface_hub
            for unet_sub, sched_sub in layouts:
                try:
                    unet = UNet2DModel.from_pretrained(name, subfolder=unet_sub, low_cpu_mem_usage=False, **kwargs)
                    scheduler = DDPMScheduler.from_pretrained(name, subfolder=sched_sub, **kwargs)
                    break
                except Exception as e:  # noqa: BLE001 - network, hub and file errors all mean "cannot load it"
                    unet = scheduler = None
                    errors.append(_short(e, 200))
    finally:
        diffusers_logging.set_verbosity(verbosity)
    if unet is None or scheduler is None:
        offline = " (HF_HUB_OFFLINE is set)" if kwargs["local_files_only"] else ""
        raise UserError(f"cannot load the pre-trained denoiser {name!r}{offline}: {errors[0].rstrip('.')}; give a local "
                        "diffusers folder (config.json, weights, scheduler_config.json) or a hub id with network access")
    sc = scheduler.config
    if sc.get("trained_betas") is not None or sc.get("rescale_betas_zero_snr"):
        raise UserError(f"the pre-trained denoiser {name!r} uses a custom beta table; only standard DDPM schedules "
                        f"({', '.join(BETA_SCHEDULES)}) are supported")
    config = {"arch": DENOISER_ARCH, "unet": unet_config_dict(unet),
              "scheduler": {k: sc.get(k, v) for k, v in SCHEDULER_DEFAULTS.items()}}
    try:
        config = check_denoiser_config(config)
    except (TypeError, ValueError) as e:
        raise UserError(f"the pre-trained denoiser {name!r} is not supported: {e}") from None
    return unet.float().eval(), config


# -- training --------------------------------------------------------------------------------------

@dataclass
class DenoiserConfig:
    data: str = "digits"
    data_root: str | None = None
    image_size: int | None = None  # imagefolder only
    size: str = "small"  # a key of UNET_SIZES
    arch_options: dict[str, Any] = field(default_factory=dict)  # UNet2DModel keyword overrides
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0  # AdamW; never on biases and norms
    warmup_steps: int = 100
    grad_clip: float | None = 1.0
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    augment: bool = True  # random horizontal flips for colour data sets (none for digits and MNIST)
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 with loss scaling)
    checkpoint_every: int = 1  # epochs between resumable checkpoints

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "DenoiserConfig":
        return config_from_dict(cls, values, "denoiser")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        if self.size not in UNET_SIZES:
            raise UserError(f"unknown denoiser size {self.size!r}; choose one of {', '.join(UNET_SIZES)}")
        for name in ("epochs", "batch_size", "checkpoint_every", "num_train_timesteps"):
            if getattr(self, name) < 1:
                raise UserError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"learning rate must be positive, got {self.lr}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise UserError("warmup-steps and weight-decay must be >= 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise UserError(f"grad-clip must be positive, got {self.grad_clip}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise UserError(f"betas must satisfy 0 < beta-start < beta-end < 1, got {self.beta_start}, {self.beta_end}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise UserError(f"unknown beta schedule {self.beta_schedule!r}; choose one of {', '.join(BETA_SCHEDULES)}")
        engine.check_precision(self.precision)


def denoiser_model_config(channels: int, image_size: int, *, size: str = "small",
                          scheduler: Mapping[str, Any] | None = None, **unet_overrides: Any) -> dict[str, Any]:
    """The full denoiser model config ("ddpm_unet") for images of `channels` × `image_size`².

    `size` is a key of UNET_SIZES, `unet_overrides` UNet2DModel arguments, `scheduler` scheduler keys
    (default: DDPM's linear 1e-4 … 0.02 over 1000 steps). Raises ValueError/TypeError for bad values.
        model_config("dds", ..., denoiser=denoiser_model_config(1, 8), classifier=..., sigma=0.25)
    """
    from diffusers import UNet2DModel

    if size not in UNET_SIZES:
        raise ValueError(f"unknown denoiser size {size!r}; choose one of {', '.join(UNET_SIZES)}")
    kwargs = {**UNET_SIZES[size], **unet_overrides}
    kwargs.update(sample_size=image_size, in_channels=channels, out_channels=channels)
    blocks = kwargs.get("block_out_channels", [])
    downsamples = max(0, len(blocks) - 1)
    if image_size % (2 ** downsamples):
        raise ValueError(f"a {len(blocks)}-level UNet halves the image {downsamples} time(s) but {image_size} "
                         f"is not divisible by {2 ** downsamples}; use size small or fewer block_out_channels")
    unet = UNet2DModel(**kwargs)
    return check_denoiser_config({"arch": DENOISER_ARCH, "unet": unet_config_dict(unet),
                                  "scheduler": {**SCHEDULER_DEFAULTS, **(scheduler or {})}})


def resolve_denoiser_config(cfg: DenoiserConfig, info=None) -> dict[str, Any]:
    """Everything the run will use, resolved: what `--dry-run` prints and `config.json` holds."""
    cfg.validate()
    if info is None:
        info, _ = probe_dataset(cfg.data, "train", cfg.data_root, image_size=cfg.image_size)  # decodes no image
    scheduler = {"num_train_timesteps": cfg.num_train_timesteps, "beta_start": cfg.beta_start,
                 "beta_end": cfg.beta_end, "beta_schedule": cfg.beta_schedule, "prediction_type": "epsilon"}
    try:
        model = denoiser_model_config(info.channels, info.image_size, size=cfg.size, scheduler=scheduler,
                                      **cfg.arch_options)
    except (TypeError, ValueError) as e:
        raise UserError(f"invalid denoiser options: {_short(e, 200)}") from None
    return {"command": "train-denoiser", "rrcm_version": __version__, "torch_version": torch.__version__,
            "python": platform.python_version(), "train": cfg.to_dict(), "model": model, "data": info.to_dict()}


class DenoiserTask(engine.Task):
    """One DDPM denoiser training run for the training engine (`rrcm.train.engine`)."""

    what = "denoiser training"
    settings_key = "train"
    final_file = DENOISER_FILE
    metric_columns = METRIC_COLUMNS

    def __init__(self, cfg: DenoiserConfig, dataset, run_config: dict[str, Any]):
        self.cfg, self.dataset, self.run_config = cfg, dataset, run_config
        self.num_examples = len(dataset)
        per_epoch = engine.steps_per_epoch(self.num_examples, cfg.batch_size, drop_last=False)
        self.settings = engine.EngineSettings(
            seed=cfg.seed, total_steps=per_epoch * cfg.epochs, batch_size=cfg.batch_size, drop_last=False,
            lr=cfg.lr, warmup_steps=cfg.warmup_steps, log_every=per_epoch,
            checkpoint_every=cfg.checkpoint_every * per_epoch, optimizer="adamw", grad_clip=cfg.grad_clip,
            precision=cfg.precision, gradient_sync="ddp")
        self.flip = cfg.augment and dataset.info.channels == 3
        self.scheduler = make_scheduler(run_config["model"]["scheduler"])

    def build(self, ctx: DistContext) -> torch.nn.Module:
        return build_unet(self.run_config["model"]).to(ctx.device)

    def parameter_groups(self, model: torch.nn.Module) -> list[dict]:
        return engine.parameter_groups(model, self.cfg.weight_decay)

    def describe(self, model: torch.nn.Module, device: torch.device) -> str:
        cfg = self.cfg
        return (f"training a DDPM denoiser ({sum(p.numel() for p in model.parameters()):,} parameters, "
                f"{cfg.num_train_timesteps} {cfg.beta_schedule} steps) on {cfg.data} ({self.num_examples} images) "
                f"for {cfg.epochs} epochs on {device}")

    def step(self, model, forward, indices: torch.Tensor, ctx: StepContext) -> StepOutput:
        x, _ = self.dataset.batch(indices)
        generator = ctx.generator(NOISE_STREAM)
        if self.flip:
            x = random_hflip(x, generator)
        x0 = x * 2.0 - 1.0
        timesteps = torch.randint(0, self.cfg.num_train_timesteps, (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        noisy = self.scheduler.add_noise(x0, noise, timesteps)
        noisy, noise, timesteps = noisy.to(ctx.device), noise.to(ctx.device), timesteps.to(ctx.device)
        predicted = forward(noisy, timesteps).sample
        loss = torch.nn.functional.mse_loss(predicted.float(), noise)
        return StepOutput(loss, {"loss": loss.detach() * x0.shape[0]}, x0.shape[0])

    def export(self, model: torch.nn.Module, path: Path) -> None:
        run_config = self.run_config
        config = {"kind": "denoiser", "rrcm_version": __version__, "model": run_config["model"],
                  "data": run_config["data"], "train": run_config["train"], "epochs_trained": self.cfg.epochs,
                  "steps_trained": self.settings.total_steps}
        save_checkpoint(path, model, config)


def train_denoiser(cfg: DenoiserConfig, out_dir: str | os.PathLike, *, progress: bool = True,
                   stop_after_epoch: int | None = None, ctx: DistContext | None = None) -> Path:
    """Train (or resume training) a DDPM denoiser; returns the path of denoiser.safetensors.

    `stop_after_epoch` ends the run early after that epoch's checkpoint, as an interruption would.
    """
    cfg.validate()
    dataset = load_dataset(cfg.data, "train", cfg.data_root, image_size=cfg.image_size)
    task = DenoiserTask(cfg, dataset, resolve_denoiser_config(cfg, dataset.info))
    ctx = ctx or init_distributed(cfg.device)
    stop_after_step = None if stop_after_epoch is None else stop_after_epoch * task.settings.log_every
    return engine.train(task, out_dir, ctx, progress=progress, stop_after_step=stop_after_step)


# -- helpers ---------------------------------------------------------------------------------------

def _short(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"denoiser config key '{name}' must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"denoiser config key '{name}' must be >= {minimum}, got {value}")
    return int(value)


def _jsonable(obj: Any) -> Any:
    """Tuples become lists, mappings plain dicts: the form the config has after a JSON round trip."""
    return json.loads(json.dumps(obj))


