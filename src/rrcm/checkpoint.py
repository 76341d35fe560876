"""Self-describing checkpoints: weights in safetensors, the resolved config as JSON in its metadata.

A checkpoint is one `.safetensors` file. Its header metadata holds `rrcm_config`, a JSON object with at
least `model` (the architecture config that `rrcm.models.build_model` takes). Certification needs
nothing else. Nothing is ever unpickled. `read_checkpoint_config` checks the types of the fields rrcm
reads before building anything (`sigma`, `kind`, `model`, `data`), so an edited or damaged config is
one line naming the file and the field, never a traceback later on.

Integrity: every file written here (checkpoints and training states) also records
`rrcm_weights_sha256` in its metadata, the SHA-256 of its tensors, checked on every load. It is the
lowercase hex SHA-256 of this byte string, where u64(n) is n as 8 bytes little-endian and
bytes(b) = u64(len(b)) + b:

    u64(number of tensors)
    then, for each tensor in the order of its name's sorted Unicode code points (Python's `sorted`):
        bytes(name as UTF-8)
        bytes(dtype as the safetensors name: "F32", "BF16", "I64", "U8", "BOOL", ...  as ASCII)
        u64(number of dimensions), then u64(size) for each dimension
        bytes(the tensor's raw data: its elements in C order, little-endian, exactly the bytes the file
              stores between the tensor's data_offsets)

The metadata (config included) is not covered: it is JSON that rrcm validates field by field. Files
written before the digest existed have none; they load as before, unchecked.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import re
import struct
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from .errors import UserError, short_message
from .fileio import atomic_path

CONFIG_KEY = "rrcm_config"
WEIGHTS_DIGEST_KEY = "rrcm_weights_sha256"

# safetensors' names of the dtypes (those of this torch build that safetensors stores)
_DTYPE_NAMES = {getattr(torch, attr): name for attr, name in [
    ("float64", "F64"), ("float32", "F32"), ("float16", "F16"), ("bfloat16", "BF16"), ("int64", "I64"),
    ("int32", "I32"), ("int16", "I16"), ("int8", "I8"), ("uint8", "U8"), ("bool", "BOOL"), ("uint16", "U16"),
    ("uint32", "U32"), ("uint64", "U64"), ("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"),
    ("complex64", "C64"),
] if hasattr(torch, attr)}


def weights_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """The SHA-256 of `tensors` as the module docstring defines it (hex)."""

    def u64(n: int) -> bytes:
        return struct.pack("<Q", n)

    digest = hashlib.sha256(u64(len(tensors)))
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        if tensor.dtype not in _DTYPE_NAMES:
            raise TypeError(f"tensor {name!r} has dtype {tensor.dtype}, which rrcm cannot digest")
        encoded, dtype = name.encode("utf-8"), _DTYPE_NAMES[tensor.dtype].encode("ascii")
        raw = tensor.reshape(-1).view(torch.uint8).numpy()  # torch is little-endian on every platform it runs on
        digest.update(u64(len(encoded)) + encoded + u64(len(dtype)) + dtype)
        digest.update(u64(tensor.dim()) + b"".join(u64(size) for size in tensor.shape))
        digest.update(u64(raw.nbytes))
        digest.update(memoryview(raw))
    return digest.hexdigest()


def _digest_matches(metadata: Mapping[str, str], tensors: Mapping[str, torch.Tensor]) -> bool:
    """False when the file records a digest its tensors do not have; True when it matches or when the
    file records none (written before rrcm recorded digests: there is nothing to check it against)."""
    recorded = metadata.get(WEIGHTS_DIGEST_KEY)
    if recorded is None:
        return True
    return recorded == weights_digest(tensors)


def _save(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> None:
    """Write tensors + metadata (with their digest) atomically; a failure is one line naming `path`."""
    metadata = {**metadata, WEIGHTS_DIGEST_KEY: weights_digest(tensors)}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as e:
            # An I/O error names a temporary file of safetensors' own: re-raise it as the OSError it was, which
            # `atomic_path` reports as "cannot write <path>: <reason>".
            io_error = re.search(r"I/O error: (.*?) \(os error (\d+)\)", str(e))
            if io_error is None:
                raise
            raise OSError(int(io_error.group(2)), io_error.group(1)) from None
        _sort_metadata(tmp)


def _sort_metadata(path: Path) -> None:
    """Rewrite a safetensors header with its metadata keys in sorted order, in place.

    safetensors writes the metadata in hash-map order, which changes from one process to the next: with
    more than one key the same weights would give different bytes, and a resumed run's files would not
    equal an uninterrupted run's. The JSON is re-written compactly, as safetensors writes it, and padded
    with spaces to its old length (the format pads headers with spaces), so the tensor data stays put.
    """
    with open(path, "r+b") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(raw) > length:  # not expected (same content, same compact form); keep safetensors' order then
            return
        f.seek(8)
        f.write(raw + b" " * (length - len(raw)))


def _read(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """(metadata, tensors) of a safetensors file, in one open. Raises what safetensors raises."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    return metadata, tensors


def _state_for_saving(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses shared or non-contiguous storage: save independent contiguous copies.
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, config: dict[str, Any]) -> None:
    """Write `model`'s weights and `config` atomically to `path`."""
    if "model" not in config:
        raise ValueError("checkpoint config needs a 'model' entry (the architecture config)")
    _save(_state_for_saving(model), path, {CONFIG_KEY: json.dumps(config, sort_keys=True, default=str)})


def read_checkpoint_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read only the config of a checkpoint (cheap: the header, not the weights)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path} is a folder; give the .safetensors file in it written by `rrcm train`")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (give the .safetensors file written by `rrcm train`)")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"cannot read checkpoint {path}: corrupt, truncated or not a safetensors file "
                        f"({short_message(e)}); point to the model.safetensors written by rrcm, "
                        f"or copy it again") from None
    if CONFIG_KEY not in metadata:
        raise UserError(f"checkpoint {path} has no rrcm config in its metadata; "
                        "only checkpoints written by rrcm can be loaded")
    try:
        config = json.loads(metadata[CONFIG_KEY])
    except json.JSONDecodeError:
        raise UserError(f"checkpoint {path} has a corrupt config; re-train or re-save it") from None
    if not isinstance(config, dict) or "model" not in config:
        raise UserError(f"checkpoint {path} has no model config; re-train or re-save it")
    _check_config_types(path, config)
    from .models import upgrade_saved_config

    # a checkpoint saved before its arch gained a key describes the model that key's legacy value gives
    config["model"] = upgrade_saved_config(config["model"])
    if config.get("data", {}) is None:  # recorded as null (e.g. a DDS model of an old classifier): unknown
        del config["data"]
    return config


# rrcm.baselines.denoiser.DENOISER_ARCH, the arch of denoiser checkpoints (not a classifier of the model
# registry); not imported from there, which would import rrcm.smoothing as well (half a second).
DENOISER_ARCH = "ddpm_unet"


def _is_known_arch(arch: str) -> bool:
    from .models import is_arch

    return arch == DENOISER_ARCH or is_arch(arch)


def _known_archs() -> set[str]:
    from .models import arch_names

    return {*arch_names(), DENOISER_ARCH}


def _check_config_types(path: Path, config: dict[str, Any]) -> None:
    """The fields rrcm reads from a checkpoint's config have the right types (each optional one only if
    present); otherwise one line naming the file and the field. The rest of `model` is checked when the
    model is built."""

    def bad(field: str, expected: str, value: Any) -> UserError:
        shown = json.dumps(value, default=str)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return UserError(f"checkpoint {path} has a bad config: field '{field}' must be {expected}, got {shown}; "
                         "the file was edited or damaged: re-train or re-save it")

    def number(value: Any) -> bool:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)

    def count(section: dict, prefix: str, keys: tuple[str, ...]) -> None:
        for key in keys:
            value = section.get(key)
            if key in section and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise bad(f"{prefix}.{key}", "a positive integer", value)

    sigma = config.get("sigma")
    if sigma is not None and not (number(sigma) and sigma > 0):
        raise bad("sigma", "a positive finite number (or null for a classifier without σ)", sigma)
    if "kind" in config and not isinstance(config["kind"], str):
        raise bad("kind", "a string", config["kind"])
    model = config["model"]
    if not isinstance(model, dict):
        raise bad("model", "an object with an 'arch'", model)
    if "arch" not in model:
        raise bad("model.arch", "present (the architecture's name)", None)
    if not isinstance(model["arch"], str):
        raise bad("model.arch", "a string", model["arch"])
    if not _is_known_arch(model["arch"]):
        raise bad("model.arch", f"one of {', '.join(sorted(_known_archs()))}", model["arch"])
    count(model, "model", ("num_classes", "in_channels", "image_size"))
    data = config.get("data")
    if data is None:
        return
    if not isinstance(data, dict):
        raise bad("data", "an object", data)
    if "name" in data and not isinstance(data["name"], str):
        raise bad("data.name", "a string", data["name"])
    classes = data.get("classes")
    if "classes" in data and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        raise bad("data.classes", "a list of class names (strings)", classes)
    count(data, "data", ("num_classes", "image_size", "channels", "in_channels"))
    for key in ("mean", "std"):
        value = data.get(key)
        if key in data and not (isinstance(value, list) and all(number(v) for v in value)):
            raise bad(f"data.{key}", "a list of finite numbers", value)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the model described by the checkpoint's config and load its weights."""
    from .models import build_model

    config = read_checkpoint_config(path)
    state = load_weights(path)
    try:
        model = build_model(config["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"checkpoint {path} describes a model rrcm cannot build ({short_message(e)}); "
                        "it may come from a newer rrcm version") from None
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:  # strict: every weight of the model, and nothing else
        differences = _key_differences(missing, unexpected)
        raise UserError(f"checkpoint {path} weights do not match its model config ({differences}); "
                        "the file is corrupt or was edited")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise UserError(f"checkpoint {path} weights do not match its model config ({short_message(e)}); "
                        "the file is corrupt or was edited") from None
    model.to(device).eval()
    return model, config


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint, checked against the SHA-256 recorded in it (on the CPU)."""
    try:
        metadata, state = _read(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(f"cannot read weights from checkpoint {path}: corrupt or truncated file "
                        f"({short_message(e)}); re-train or copy it again") from None
    if not _digest_matches(metadata, state):
        raise UserError(f"checkpoint {path} is corrupt: its weights do not match the SHA-256 recorded when it was "
                        "written (a changed bit: a bad disk, copy or edit); copy it again or re-train")
    return state


def _key_differences(missing: list[str], unexpected: list[str], shown: int = 3) -> str:
    def names(keys: list[str]) -> str:
        return ", ".join(keys[:shown]) + (f", ... ({len(keys)} in all)" if len(keys) > shown else "")

    parts = ([f"missing tensor(s) {names(missing)}"] if missing else []) + \
            ([f"unexpected tensor(s) {names(unexpected)}"] if unexpected else [])
    return "; ".join(parts)


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


def _references(obj: Any, found: set[str]) -> set[str]:
    """The tensor names a skeleton refers to."""
    if isinstance(obj, dict):
        if _TENSOR_REF in obj:
            found.add(obj[_TENSOR_REF])
        else:
            for value in obj.values():
                _references(value, found)
    elif isinstance(obj, list):
        for value in obj:
            _references(value, found)
    return found


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
    _save(tensors, path, {STATE_KEY: json.dumps(skeleton)})


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Inverse of `save_state`: refuses a state whose tensors do not match its recorded SHA-256 (states
    written before it was recorded are not checked) or its own layout (a tensor missing or extra)."""
    fix = "delete it to restart training from scratch"
    try:
        metadata, tensors = _read(path)
        skeleton = json.loads(metadata[STATE_KEY])
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"cannot resume from {path}: corrupt or truncated training state "
                        f"({short_message(e)}); {fix}") from None
    if not _digest_matches(metadata, tensors):
        raise UserError(f"cannot resume from {path}: the training state is corrupt, its tensors do not match the "
                        f"SHA-256 recorded when it was written; {fix}")
    try:
        referenced = _references(skeleton, set())
        missing, unexpected = sorted(referenced - set(tensors)), sorted(set(tensors) - referenced)
        if missing or unexpected:
            raise UserError(f"cannot resume from {path}: the training state does not match its own layout "
                            f"({_key_differences(missing, unexpected)}); {fix}")
        return _unflatten(skeleton, tensors)
    except (TypeError, ValueError, AttributeError) as e:  # a skeleton of the wrong shape
        raise UserError(f"cannot resume from {path}: corrupt training state layout "
                        f"({short_message(e)}); {fix}") from None
