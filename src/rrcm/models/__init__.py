"""Model registry: build any base classifier from a JSON-able config dict.

Every model takes pixels in [0, 1] shaped (B, C, H, W), normalises them inside itself (the first
module of a trainable one is `normalize`; "dds" leaves it to the classifier it holds), and returns
logits (B, num_classes). A config holds the common keys `arch`, `num_classes`, `in_channels`,
`image_size`, `mean`, `std` plus the arch's own keys; `model_config` fills in every default, so a
checkpoint that stores its result rebuilds the identical model with `build_model`.

    cfg = model_config("vit", num_classes=10, in_channels=1, image_size=8, mean=[0.5], std=[0.5])
    model = build_model(cfg)

This module registers the built-in archs with `register_arch` (the mechanism, and how archs defined
elsewhere join, is in `registry.py`); a new arch goes here the same way. `arch_names()` lists the
registered archs (`arch_names(composite=False)`: the trainable ones); `ARCHS` and `COMPOSITE_ARCHS`
are the same two lists, read from the registry when asked for.

The "rrcm_vit" arch (the rRCM classifier, `time_vit.RRCMClassifier`) also takes `size=` (a key of
`RRCM_VIT_SIZES`), which fills patch_size/width/depth/heads, and always uses mean = std = 0.5
whatever mean/std it is given (the encoder works in the diffusion's [-1, 1] space).

The composite "dds" arch (diffusion denoised smoothing, `rrcm.baselines.dds.DDSClassifier`) nests a
denoiser config and a classifier config in its own; it is written by `rrcm dds assemble`, builds like
any other, and is registered by `rrcm.baselines.dds` itself (this package imports nothing from
`rrcm.baselines`; the registry imports that module when "dds" is first asked for).
"""

from __future__ import annotations

from torch import nn

from .lenet import LeNet, default_lenet_padding, lenet_feature_size
from .normalize import Normalize
from .registry import (COMMON_KEYS, arch_names, build_model, config_bool, config_choice, config_int, config_real,
                       is_arch, model_config, register_arch, upgrade_saved_config)
from .resnet_cifar import BLOCK_TYPES, CifarResNet, blocks_per_stage
from .time_vit import (RRCM_VIT_LEGACY, RRCM_VIT_SIZES, TIME_TOKENS, Projector, RRCMClassifier, TimeConditionedViT, build_rrcm_classifier,
                       encoder_from_config, prepare_rrcm_vit_config, rrcm_vit_defaults)
from .vit import VisionTransformer, default_patch_size

__all__ = ["ARCHS", "COMPOSITE_ARCHS", "COMMON_KEYS", "register_arch", "arch_names", "is_arch", "build_model",
           "model_config", "upgrade_saved_config", "count_parameters", "Normalize", "LeNet", "CifarResNet", "VisionTransformer",
           "TimeConditionedViT", "RRCMClassifier", "Projector", "RRCM_VIT_SIZES", "encoder_from_config"]


def _common_kwargs(cfg: dict) -> dict:
    return {k: cfg[k] for k in ("num_classes", "in_channels", "mean", "std")}


# ---- LeNet

def _register_lenet(name: str, conv_channels: tuple[int, int], hidden: tuple[int, ...]) -> None:
    def check(cfg: dict) -> None:
        cfg["padding"] = config_int(cfg, "padding", 0)
        if lenet_feature_size(cfg["image_size"], cfg["padding"]) < 1:
            raise ValueError(f"model config key 'padding' ({cfg['padding']}) is too small for "
                             f"image_size {cfg['image_size']} in {cfg['arch']}; use padding=2")

    def build(cfg: dict) -> nn.Module:
        return LeNet(**_common_kwargs(cfg), image_size=cfg["image_size"], conv_channels=conv_channels,
                     hidden=hidden, padding=cfg["padding"])

    register_arch(name, defaults=lambda cfg: {"padding": default_lenet_padding(cfg["image_size"])},
                  check=check, build=build)


_register_lenet("lenet", conv_channels=(20, 50), hidden=(500,))
_register_lenet("lenet5", conv_channels=(6, 16), hidden=(120, 84))


# ---- CIFAR ResNets

def _check_resnet(cfg: dict) -> None:
    cfg["depth"] = config_int(cfg, "depth", 1)
    if cfg["block"] not in BLOCK_TYPES:
        raise ValueError(f"model config key 'block' must be one of {BLOCK_TYPES}, got {cfg['block']!r}")
    blocks_per_stage(cfg["depth"], cfg["block"])


def _register_fixed_resnet(name: str, depth: int) -> None:
    # Cohen et al.'s named ResNets: basic blocks, no arch-specific keys to vary.
    register_arch(name, build=lambda cfg: CifarResNet(**_common_kwargs(cfg), depth=depth, block="basic"))


register_arch("cifar_resnet", defaults=lambda cfg: {"depth": 20, "block": "basic"}, check=_check_resnet,
              build=lambda cfg: CifarResNet(**_common_kwargs(cfg), depth=cfg["depth"], block=cfg["block"]))
_register_fixed_resnet("cifar_resnet20", 20)
_register_fixed_resnet("cifar_resnet110", 110)


# ---- ViT

def _vit_defaults(cfg: dict) -> dict:
    # ~200k parameters at 8x8 with patch 2: small enough to train and certify on CPU.
    return {"patch_size": default_patch_size(cfg["image_size"]), "width": 64, "depth": 4, "heads": 4,
            "mlp_ratio": 4.0}


def _check_vit(cfg: dict) -> None:
    for key in ("patch_size", "width", "depth", "heads"):
        cfg[key] = config_int(cfg, key, 1)
    cfg["mlp_ratio"] = config_real(cfg, "mlp_ratio", positive=True)
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


register_arch("vit", defaults=_vit_defaults, check=_check_vit, build=_build_vit)


# ---- rRCM classifier (time-conditioned ViT encoder + linear head); see time_vit.py

def _check_rrcm_vit(cfg: dict) -> None:
    _check_vit(cfg)
    cfg["time_embed_dim"] = config_int(cfg, "time_embed_dim", 2)
    cfg["condition_sigma"] = config_real(cfg, "condition_sigma", positive=True)
    cfg["sigma_data"] = config_real(cfg, "sigma_data", positive=True)
    cfg["time_token"] = config_choice(cfg, "time_token", TIME_TOKENS)
    cfg["qkv_bias"] = config_bool(cfg, "qkv_bias")
    cfg["feature_norm"] = config_bool(cfg, "feature_norm")


register_arch("rrcm_vit", defaults=rrcm_vit_defaults, check=_check_rrcm_vit, build=build_rrcm_classifier,
              prepare=prepare_rrcm_vit_config, legacy=RRCM_VIT_LEGACY)


def __getattr__(name: str) -> tuple[str, ...]:
    # ARCHS (the trainable archs) and COMPOSITE_ARCHS, read from the registry when asked for: they
    # include archs registered after this module was imported (e.g. "dds").
    if name == "ARCHS":
        return arch_names(composite=False)
    if name == "COMPOSITE_ARCHS":
        return arch_names(composite=True)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of (distinct) parameters, optionally only those with requires_grad."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
