"""Model registry: build any base classifier from a JSON-able config dict.

Every model takes pixels in [0, 1] shaped (B, C, H, W), normalises them inside itself (its first
module is `normalize`), and returns logits (B, num_classes). A config holds the common keys
`arch`, `num_classes`, `in_channels`, `image_size`, `mean`, `std` plus the arch's own keys;
`model_config` fills in every default, so a checkpoint that stores its result rebuilds the
identical model with `build_model`.

    cfg = model_config("vit", num_classes=10, in_channels=1, image_size=8, mean=[0.5], std=[0.5])
    model = build_model(cfg)

The "rrcm_vit" arch (the rRCM classifier, `time_vit.RRCMClassifier`) also takes `size=` (a key of
`RRCM_VIT_SIZES`), which fills patch_size/width/depth/heads, and always uses mean = std = 0.5
whatever mean/std it is given (the encoder works in the diffusion's [-1, 1] space).

The composite "dds" arch (diffusion denoised smoothing, `rrcm.baselines.dds.DDSClassifier`) nests a
denoiser config and a classifier config in its own; it is written by `rrcm dds assemble`, is not in
`ARCHS` (which lists the trainable archs) but in `COMPOSITE_ARCHS`, and builds like any other.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from .lenet import LeNet, default_lenet_padding, lenet_feature_size
from .normalize import Normalize
from .resnet_cifar import BLOCK_TYPES, CifarResNet, blocks_per_stage
from .time_vit import (RRCM_VIT_SIZES, Projector, RRCMClassifier, TimeConditionedViT, build_rrcm_classifier,
                       encoder_from_config, prepare_rrcm_vit_config, rrcm_vit_defaults)
from .vit import VisionTransformer, default_patch_size

__all__ = ["ARCHS", "build_model", "model_config", "count_parameters",
           "Normalize", "LeNet", "CifarResNet", "VisionTransformer",
           "TimeConditionedViT", "RRCMClassifier", "Projector", "RRCM_VIT_SIZES", "encoder_from_config"]

COMMON_KEYS = ("arch", "num_classes", "in_channels", "image_size", "mean", "std")


@dataclass(frozen=True)
class _ArchSpec:
    """How to default, check and build one registered architecture."""

    defaults: Callable[[dict], dict]  # the arch's own keys with default values, given the common keys
    check: Callable[[dict], None]     # validates the arch's own keys of a filled config
    build: Callable[[dict], nn.Module]
    # optional rewrite of the raw config before anything else (rrcm_vit: fixed mean/std, size presets)
    prepare: Callable[[Mapping[str, Any]], dict] | None = None
    # assembled from other models' configs (nested in its own, e.g. "dds"): buildable, not trainable,
    # so not listed in ARCHS
    composite: bool = False


# ---- value checks (TypeError for a wrong type, ValueError for a wrong value; both name the key)

def _int(cfg: dict, key: str, minimum: int) -> int:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"model config key '{key}' must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"model config key '{key}' must be >= {minimum}, got {value}")
    return int(value)


def _real(cfg: dict, key: str, *, positive: bool = False) -> float:
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"model config key '{key}' must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"model config key '{key}' must be a finite{' positive' if positive else ''} "
                         f"number, got {value}")
    return value


def _per_channel(cfg: dict, key: str, *, positive: bool) -> list[float]:
    values = cfg[key]
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"model config key '{key}' must be a list of numbers (one per channel), got {values!r}")
    values = list(values)
    if len(values) != cfg["in_channels"]:
        raise ValueError(f"model config key '{key}' needs {cfg['in_channels']} value(s) (in_channels), "
                         f"got {len(values)}")
    return [_real({key: v}, key, positive=positive) for v in values]


def _check_common(cfg: dict) -> None:
    cfg["num_classes"] = _int(cfg, "num_classes", 2)
    cfg["in_channels"] = _int(cfg, "in_channels", 1)
    cfg["image_size"] = _int(cfg, "image_size", 1)
    cfg["mean"] = _per_channel(cfg, "mean", positive=False)
    cfg["std"] = _per_channel(cfg, "std", positive=True)


def _common_kwargs(cfg: dict) -> dict:
    return {k: cfg[k] for k in ("num_classes", "in_channels", "mean", "std")}


# ---- LeNet

def _lenet_spec(conv_channels: tuple[int, int], hidden: tuple[int, ...]) -> _ArchSpec:
    def check(cfg: dict) -> None:
        cfg["padding"] = _int(cfg, "padding", 0)
        if lenet_feature_size(cfg["image_size"], cfg["padding"]) < 1:
            raise ValueError(f"model config key 'padding' ({cfg['padding']}) is too small for "
                             f"image_size {cfg['image_size']} in {cfg['arch']}; use padding=2")

    def build(cfg: dict) -> nn.Module:
        return LeNet(**_common_kwargs(cfg), image_size=cfg["image_size"], conv_channels=conv_channels,
                     hidden=hidden, padding=cfg["padding"])

    return _ArchSpec(defaults=lambda cfg: {"padding": default_lenet_padding(cfg["image_size"])},
                     check=check, build=build)


# ---- CIFAR ResNets

def _check_resnet(cfg: dict) -> None:
    cfg["depth"] = _int(cfg, "depth", 1)
    if cfg["block"] not in BLOCK_TYPES:
        raise ValueError(f"model config key 'block' must be one of {BLOCK_TYPES}, got {cfg['block']!r}")
    blocks_per_stage(cfg["depth"], cfg["block"])


def _fixed_resnet_spec(depth: int) -> _ArchSpec:
    # Cohen et al.'s named ResNets: basic blocks, no arch-specific keys to vary.
    return _ArchSpec(defaults=lambda cfg: {}, check=lambda cfg: None,
                     build=lambda cfg: CifarResNet(**_common_kwargs(cfg), depth=depth, block="basic"))


# ---- ViT

def _vit_defaults(cfg: dict) -> dict:
    # ~200k parameters at 8x8 with patch 2: small enough to train and certify on CPU.
    return {"patch_size": default_patch_size(cfg["image_size"]), "width": 64, "depth": 4, "heads": 4,
            "mlp_ratio": 4.0}


def _check_vit(cfg: dict) -> None:
    for key in ("patch_size", "width", "depth", "heads"):
        cfg[key] = _int(cfg, key, 1)
    cfg["mlp_ratio"] = _real(cfg, "mlp_ratio", positive=True)
    if cfg["image_size"] % cfg["patch_size"] != 0:
        raise ValueError(f"model config key 'patch_size' ({cfg['patch_size']}) must divide "
                         f"'image_size' ({cfg['image_size']})")
    if cfg["width"] % cfg["heads"] != 0:
        raise ValueError(f"model config key 'width' ({cfg['width']}) must be divisible by "
                         f"'heads' ({cfg['heads']})")
    if int(cfg["width"] * cfg["mlp_ratio"]) < 1:
        raise ValueError(f"model config key 'mlp_ratio' ({cfg['mlp_ratio']}) gives an empty MLP")


def _build_vit(cfg: dict) -> nn.Module:
    return VisionTransformer(**_common_kwargs(cfg), image_size=cfg["image_size"],
                             **{k: cfg[k] for k in ("patch_size", "width", "depth", "heads", "mlp_ratio")})


# ---- rRCM classifier (time-conditioned ViT encoder + linear head); see time_vit.py

def _check_rrcm_vit(cfg: dict) -> None:
    _check_vit(cfg)
    cfg["time_embed_dim"] = _int(cfg, "time_embed_dim", 2)
    cfg["condition_sigma"] = _real(cfg, "condition_sigma", positive=True)
    cfg["sigma_data"] = _real(cfg, "sigma_data", positive=True)


# ---- diffusion denoised smoothing (rrcm.baselines.dds): a DDPM denoiser config + a registry classifier
# config nested in one config; imported on use (diffusers is slow to import)

def _dds_hook(name: str) -> Callable:
    def call(cfg: dict):
        from ..baselines import dds

        return getattr(dds, name)(cfg)

    return call


_REGISTRY: dict[str, _ArchSpec] = {
    "lenet": _lenet_spec(conv_channels=(20, 50), hidden=(500,)),
    "lenet5": _lenet_spec(conv_channels=(6, 16), hidden=(120, 84)),
    "cifar_resnet": _ArchSpec(defaults=lambda cfg: {"depth": 20, "block": "basic"}, check=_check_resnet,
                              build=lambda cfg: CifarResNet(**_common_kwargs(cfg), depth=cfg["depth"],
                                                            block=cfg["block"])),
    "cifar_resnet20": _fixed_resnet_spec(20),
    "cifar_resnet110": _fixed_resnet_spec(110),
    "vit": _ArchSpec(defaults=_vit_defaults, check=_check_vit, build=_build_vit),
    "rrcm_vit": _ArchSpec(defaults=rrcm_vit_defaults, check=_check_rrcm_vit, build=build_rrcm_classifier,
                          prepare=prepare_rrcm_vit_config),
    "dds": _ArchSpec(defaults=_dds_hook("dds_defaults"), check=_dds_hook("check_dds_config"),
                     build=_dds_hook("build_dds"), composite=True),
}

ARCHS: tuple[str, ...] = tuple(name for name, spec in _REGISTRY.items() if not spec.composite)
COMPOSITE_ARCHS: tuple[str, ...] = tuple(name for name, spec in _REGISTRY.items() if spec.composite)


def _resolve(config: Mapping[str, Any]) -> tuple[dict, _ArchSpec]:
    """Validate `config` and return it with every default filled in, plus the arch's spec."""
    if not isinstance(config, Mapping):
        raise TypeError(f"model config must be a dict, got {type(config).__name__}")
    if "arch" not in config:
        raise ValueError(f"model config has no 'arch' key; valid archs: {', '.join(ARCHS)}")
    arch = config["arch"]
    if not isinstance(arch, str):
        raise TypeError(f"model config key 'arch' must be a string, got {arch!r}")
    if arch not in _REGISTRY:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(ARCHS)}")
    missing = [k for k in COMMON_KEYS if k not in config]
    if missing:
        raise ValueError(f"model config for {arch!r} is missing key(s): {', '.join(missing)}")
    spec = _REGISTRY[arch]
    if spec.prepare is not None:
        config = spec.prepare(config)
    cfg = {k: config[k] for k in COMMON_KEYS}
    _check_common(cfg)
    defaults = spec.defaults(cfg)
    unknown = sorted(set(config) - set(COMMON_KEYS) - set(defaults))
    if unknown:
        valid = ", ".join(list(COMMON_KEYS) + list(defaults))
        raise ValueError(f"unknown model config key(s) for arch {arch!r}: {', '.join(unknown)} "
                         f"(valid keys: {valid})")
    cfg.update({k: config.get(k, default) for k, default in defaults.items()})
    spec.check(cfg)
    return cfg, spec


def model_config(arch: str, *, num_classes: int, in_channels: int, image_size: int, mean, std,
                 **overrides: Any) -> dict:
    """The full, validated, JSON-able config for `arch` (defaults filled in, overrides applied)."""
    config = {"arch": arch, "num_classes": num_classes, "in_channels": in_channels,
              "image_size": image_size, "mean": mean, "std": std, **overrides}
    return _resolve(config)[0]


def build_model(config: Mapping[str, Any]) -> nn.Module:
    """Build the model a config describes (missing arch-specific keys take their defaults).

    Raises ValueError for an unknown arch, a missing/unknown key or a bad value, TypeError for a
    value of the wrong type; the message names the key.
    """
    cfg, spec = _resolve(config)
    return spec.build(cfg)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (distinct) parameters, optionally only those with requires_grad."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
