"""The model registry's mechanism: archs register here, configs are resolved and models built here.

An arch is registered once, by the module that defines it, with `register_arch`:

    register_arch("my_arch", defaults=lambda cfg: {"width": 64}, check=check_my_arch, build=build_my_arch)

- `defaults(cfg)` gives the arch's own keys with their default values (it sees the checked common keys);
- `check(cfg)` validates (and may normalise, in place) those keys of a filled-in config, raising
  TypeError for a wrong type and ValueError for a wrong value, the message naming the key;
- `build(cfg)` returns the model (pixels in [0, 1] -> logits) for a filled-in, checked config;
- `prepare(config)`, optional, rewrites the raw config before anything else (rrcm_vit: size presets);
- `legacy`, optional, maps each key added to the arch after its first release to the value the model
  had before the key existed. `upgrade_saved_config` fills those into a config read from disk
  (`rrcm.checkpoint` does), so an old checkpoint keeps building the model it was trained as, while a
  new config takes the current defaults;
- `composite=True` marks an arch assembled from other models (e.g. "dds"): buildable, not trainable.

Which modules register archs. `rrcm.models` registers the built-in ones when it is imported. Archs
defined elsewhere in the package (the composite "dds" of `rrcm.baselines.dds`, which itself builds
on this registry, so this package cannot import it) are named in `rrcm.ARCH_MODULES`; the registry
imports those modules the first time it is asked for an arch it does not hold or for the list of all
archs (`arch_names`), and each registers its own archs on import. So `rrcm.models` imports nothing
from them, and a checkpoint of any arch builds without its caller importing anything first. Code
outside the package can call `register_arch` directly.
"""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["COMMON_KEYS", "ArchSpec", "register_arch", "arch_names", "is_arch", "model_config", "build_model",
           "upgrade_saved_config", "config_int", "config_real", "config_bool", "config_choice"]

COMMON_KEYS = ("arch", "num_classes", "in_channels", "image_size", "mean", "std")


@dataclass(frozen=True)
class ArchSpec:
    """How to default, check and build one registered architecture (see the module docstring)."""

    defaults: Callable[[dict], dict]
    check: Callable[[dict], None]
    build: Callable[[dict], nn.Module]
    prepare: Callable[[Mapping[str, Any]], dict] | None = None
    composite: bool = False
    legacy: Mapping[str, Any] | None = None


_REGISTRY: dict[str, ArchSpec] = {}
_arch_modules_imported = False


def register_arch(name: str, *, build: Callable[[dict], nn.Module],
                  defaults: Callable[[dict], dict] | None = None, check: Callable[[dict], None] | None = None,
                  prepare: Callable[[Mapping[str, Any]], dict] | None = None, composite: bool = False,
                  legacy: Mapping[str, Any] | None = None) -> None:
    """Add arch `name` to the registry. An arch without own keys needs only `build`.

    Raises ValueError if `name` is already registered (each arch is registered once, by its module).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"an arch name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        raise ValueError(f"arch {name!r} is already registered")
    _REGISTRY[name] = ArchSpec(defaults=defaults or (lambda cfg: {}), check=check or (lambda cfg: None),
                               build=build, prepare=prepare, composite=composite,
                               legacy=dict(legacy) if legacy else None)


def _import_arch_modules() -> None:
    """Import, once, the package's modules that register archs of their own (`rrcm.ARCH_MODULES`)."""
    global _arch_modules_imported
    if _arch_modules_imported:
        return
    from .. import ARCH_MODULES

    for module in ARCH_MODULES:
        # a module already being imported (one that asks the registry while it loads) is returned as is
        importlib.import_module(module)
    _arch_modules_imported = True


def arch_names(*, composite: bool | None = None) -> tuple[str, ...]:
    """The registered arch names, in registration order: all of them, or only the trainable ones
    (`composite=False`, what `rrcm train --arch` takes), or only the composite ones (`composite=True`)."""
    _import_arch_modules()
    return tuple(name for name, spec in _REGISTRY.items() if composite is None or spec.composite == composite)


def _spec(arch: str) -> ArchSpec | None:
    if arch not in _REGISTRY:
        _import_arch_modules()
    return _REGISTRY.get(arch)


def is_arch(name: str) -> bool:
    """Whether `name` is a registered arch (imports the arch modules only for a name not yet known)."""
    return _spec(name) is not None


# ---- value checks (TypeError for a wrong type, ValueError for a wrong value; both name the key)

def config_int(cfg: Mapping[str, Any], key: str, minimum: int) -> int:
    """`cfg[key]` as an int >= `minimum` (a bool is not an integer here)."""
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"model config key '{key}' must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"model config key '{key}' must be >= {minimum}, got {value}")
    return int(value)


def config_real(cfg: Mapping[str, Any], key: str, *, positive: bool = False) -> float:
    """`cfg[key]` as a finite float (and > 0 if `positive`)."""
    value = cfg[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"model config key '{key}' must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(f"model config key '{key}' must be a finite{' positive' if positive else ''} "
                         f"number, got {value}")
    return value


def config_bool(cfg: Mapping[str, Any], key: str) -> bool:
    """`cfg[key]`, which must be true or false."""
    value = cfg[key]
    if not isinstance(value, bool):
        raise TypeError(f"model config key '{key}' must be true or false, got {value!r}")
    return value


def config_choice(cfg: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    """`cfg[key]`, which must be one of `choices`."""
    value = cfg[key]
    if value not in choices:
        raise ValueError(f"model config key '{key}' must be one of {', '.join(choices)}, got {value!r}")
    return value


def _per_channel(cfg: dict, key: str, *, positive: bool) -> list[float]:
    values = cfg[key]
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"model config key '{key}' must be a list of numbers (one per channel), got {values!r}")
    values = list(values)
    if len(values) != cfg["in_channels"]:
        raise ValueError(f"model config key '{key}' needs {cfg['in_channels']} value(s) (in_channels), "
                         f"got {len(values)}")
    return [config_real({key: v}, key, positive=positive) for v in values]


def _check_common(cfg: dict) -> None:
    cfg["num_classes"] = config_int(cfg, "num_classes", 2)
    cfg["in_channels"] = config_int(cfg, "in_channels", 1)
    cfg["image_size"] = config_int(cfg, "image_size", 1)
    cfg["mean"] = _per_channel(cfg, "mean", positive=False)
    cfg["std"] = _per_channel(cfg, "std", positive=True)


# ---- resolving and building

def _resolve(config: Mapping[str, Any]) -> tuple[dict, ArchSpec]:
    """Validate `config` and return it with every default filled in, plus the arch's spec."""
    if not isinstance(config, Mapping):
        raise TypeError(f"model config must be a dict, got {type(config).__name__}")
    if "arch" not in config:
        raise ValueError(f"model config has no 'arch' key; valid archs: {', '.join(arch_names(composite=False))}")
    arch = config["arch"]
    if not isinstance(arch, str):
        raise TypeError(f"model config key 'arch' must be a string, got {arch!r}")
    spec = _spec(arch)
    if spec is None:
        raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(arch_names(composite=False))}")
    missing = [k for k in COMMON_KEYS if k not in config]
    if missing:
        raise ValueError(f"model config for {arch!r} is missing key(s): {', '.join(missing)}")
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


def upgrade_saved_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """A model config read from disk, with the keys its arch gained since it was saved set to the values
    they stand for there (the arch's `legacy`), and so for the model configs nested in it (a composite's
    parts); anything else is returned as it is (`build_model` reports what is wrong with it)."""
    if not isinstance(config, Mapping):
        return config
    config = {k: upgrade_saved_config(v) if isinstance(v, Mapping) and "arch" in v else v
              for k, v in config.items()}
    arch = config.get("arch")
    spec = _spec(arch) if isinstance(arch, str) else None
    if spec is None or not spec.legacy:
        return config
    return {**spec.legacy, **config}


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
