"""Self-describing checkpoints: weights in safetensors, the resolved config as JSON in its metadata.

A checkpoint is one `.safetensors` file. Its header metadata holds `rrcm_config`, a JSON object with at
least `model` (the architecture config that `rrcm.models.build_model` takes). Certification needs
nothing else. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import UserError
from .fileio import atomic_path

CONFIG_KEY = "rrcm_config"


def _state_for_saving(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage: save independent contiguous copies.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, config: dict[str, Any]) -> None:
    """Write `model`'s weights and `config` atomically to `path`."""
    if "model" not in config:
        raise ValueError("checkpoint config needs a 'model' entry (the architecture config)")
    metadata = {CONFIG_KEY: json.dumps(config, sort_keys=True, default=str)}
    with atomic_path(path) as tmp:
        save_file(_state_for_saving(model), str(tmp), metadata=metadata)


def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read only the config of a checkpoint (cheap: the header, not the weights)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (give the .safetensors file written by `rrcm train`)")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"cannot read checkpoint {path}: corrupt, truncated or not a safetensors file "
                        f"({_short(e)}); point to the model.safetensors written by rrcm, or copy it again") from None
    if CONFIG_KEY not in metadata:
        raise UserError(f"checkpoint {path} has no rrcm config in its metadata; "
                        "only checkpoints written by rrcm can be loaded")
    try:
        config = json.loads(metadata[CONFIG_KEY])
    except json.JSONDecodeError:
        raise UserError(f"checkpoint {path} has a corrupt config; re-train or re-save it") from None
    if not isinstance(config, dict) or "model" not in config:
        raise UserError(f"checkpoint {path} has no model config; re-train or re-save it")
    return config


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the model described by the checkpoint's config and load its weights."""
    from .models import build_model

    config = read_checkpoint_config(path)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot read weights from checkpoint {path}: corrupt or truncated file "
                        f"({_short(e)}); re-train or copy it again") from None
    try:
        model = build_model(config["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"checkpoint {path} describes a model rrcm cannot build ({_short(e)}); "
                        "it may come from a newer rrcm version") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"checkpoint {path} weights do not match its model config ({_short(e)}); "
                        "the file is corrupt or was edited") from None
    model.to(device).eval()
    return model, config


def _short(e: BaseException, limit: int = 160) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- training state (for resuming) ---------------------------------------------------------------
# Nested dicts/lists of tensors and JSON values (model, optimizer and scheduler state, RNG state, step)
# are split into a flat tensor dict for safetensors and a JSON skeleton in its metadata.

STATE_KEY = "rrcm_state"
_TENSOR_REF = "__tensor__"


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = prefix or "_"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {_TENSOR_REF: key}
    if isinstance(obj, dict):
        # JSON object keys are strings; remember integer keys (optimizer state is keyed by int).
        return {"__dict__": [[k, _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{prefix}.{i}" if prefix else str(i), tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a training state")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR_REF in obj:
            return tensors[obj[_TENSOR_REF]]
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Atomically save a nested training state (tensors + JSON values) as safetensors."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={STATE_KEY: json.dumps(skeleton)})


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Inverse of `save_state`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            skeleton = json.loads((f.metadata() or {})[STATE_KEY])
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"cannot resume from {path}: corrupt or truncated training state ({_short(e)}); "
                        "delete it to restart training from scratch") from None
    return _unflatten(skeleton, tensors)
