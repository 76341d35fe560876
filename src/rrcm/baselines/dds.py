"""Diffusion denoised smoothing (DDS; Carlini et al. 2023, "(Certified!!) Adversarial Robustness for Free!").

The base classifier f(x + δ) = classifier(denoise(x + δ)): an off-the-shelf DDPM denoiser removes the
smoothing noise in one step, an off-the-shelf classifier (trained on clean data) labels the result.
It plugs into the standard certifier as the registry arch "dds", registered here with
`rrcm.models.register_arch` when this module is imported; the registry imports it the first time it
is asked for "dds" (it is listed in `rrcm.ARCH_MODULES`). Importing it is cheap: `.denoiser` (and
through it diffusers) is imported only inside the functions that check, build or assemble a DDS model.

The noise is exactly σ. The certifier adds δ ~ N(0, σ²I) on [0, 1] pixels; `DDSClassifier.forward`
adds nothing and draws no random numbers (the same input always gives the same output):
    z   = 2(x + δ) − 1 = (2x − 1) + 2δ       (the diffusion's [−1, 1] space: noise std 2σ)
    x_t = √ᾱ_t · z = √ᾱ_t x0 + √ᾱ_t · 2σ ε    (a DDPM marginal iff √((1−ᾱ_t)/ᾱ_t) = 2σ)
    ε̂   = UNet(x_t, t);  x̂0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t, clamped to [−1, 1]
    f   = classifier((x̂0 + 1) / 2)
Timestep rule (`dds_timestep`): the smallest t whose noise level √((1−ᾱ_t)/ᾱ_t) is ≥ 2σ, so the
denoiser is told at least the noise that is really there (rounding up, never down). With 1000 linear
steps neighbouring levels differ by < 1–2 % at the σ's used for smoothing, so the mismatch is tiny;
`effective_sigma` = level_t / 2 (on [0, 1] pixels) is recorded beside t. A σ whose 2σ exceeds the
schedule's noisiest level is refused.

`steps > 1`: deterministic DDIM (η = 0) from t down to 0 over `steps` UNet evaluations at
t_i = round(t·(steps − i)/steps), i = 0 … steps−1: x̂0 is predicted (and clamped) at t_i, then
x_{t_{i+1}} = √ᾱ_{t_{i+1}} x̂0 + √(1−ᾱ_{t_{i+1}}) ε̂; the last x̂0 is classified. Still no randomness.

The certificate is sound whatever the denoiser does (any deterministic base classifier is allowed);
the timestep only decides how accurate the smoothed classifier is.

Checkpoint (`rrcm dds assemble`): kind "classifier", method "dds", sigma σ, model =
{"arch": "dds", "denoiser": <denoiser model config>, "classifier": <classifier registry config>,
 "sigma", "timestep", "steps", + the registry's common keys (mean/std copied from the classifier,
unused by DDS itself)}; weights `denoiser.*` + `classifier.*`.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..errors import UserError
from ..models import COMMON_KEYS, build_model, model_config, register_arch

DDS_DEFAULTS: dict[str, Any] = {"denoiser": None, "classifier": None, "sigma": None, "timestep": None, "steps": 1}


# -- timestep choice -------------------------------------------------------------------------------

def noise_levels(alphas_cumprod: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """√((1 − ᾱ_t)/ᾱ_t) for every t, in float64: the noise std relative to the signal in [−1, 1] space."""
    a = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
    return torch.sqrt((1.0 - a) / a)


def dds_timestep(sigma: float, alphas_cumprod: Sequence[float] | torch.Tensor) -> tuple[int, float]:
    """(t, effective σ): the smallest t with √((1−ᾱ_t)/ᾱ_t) ≥ 2σ, and that level / 2 on [0, 1] pixels.

    Raises ValueError for σ ≤ 0 or when 2σ exceeds the schedule's largest level.
    """
    sigma = float(sigma)
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a positive number, got {sigma}")
    levels = noise_levels(alphas_cumprod)
    if levels.numel() == 0 or not torch.isfinite(levels).all() or (levels.numel() > 1 and not (levels.diff() > 0).all()):
        raise ValueError("the diffusion schedule's ᾱ_t must lie in (0, 1] and decrease strictly with t")
    target = 2.0 * sigma
    if float(levels[-1]) < target:
        largest = float(levels[-1]) / 2.0
        raise ValueError(f"σ = {sigma} is too large for the denoiser: its noisiest step (t = {levels.numel() - 1}) "
                         f"has noise {largest:.4g} on [0, 1] pixels; use σ ≤ {largest:.4g}")
    t = int(torch.searchsorted(levels, torch.tensor([target], dtype=torch.float64), side="left")[0])
    return t, float(levels[t]) / 2.0


def ddim_timesteps(timestep: int, steps: int) -> list[int]:
    """The UNet evaluation times t_i = round(t·(steps − i)/steps), i = 0 … steps−1 (t_0 = t, strictly decreasing)."""
    if steps < 1 or steps > max(1, timestep):
        raise ValueError(f"steps must lie in [1, max(1, timestep) = {max(1, timestep)}], got {steps}")
    return [int(math.floor(timestep * (steps - i) / steps + 0.5)) for i in range(steps)]


# -- the base classifier ---------------------------------------------------------------------------

class DDSClassifier(nn.Module):
    """Denoise x + δ (pixels in [0, 1], δ added by the certifier) with a DDPM UNet, then classify.

    `denoiser` maps (x_t, timesteps) to ε̂ (a `diffusers.UNet2DModel`; its output's `.sample` is used);
    `classifier` is any rrcm registry model (pixels in [0, 1] → logits).
    """

    def __init__(self, denoiser: nn.Module, classifier: nn.Module, alphas_cumprod: Sequence[float] | torch.Tensor,
                 timestep: int, sigma: float, *, steps: int = 1, prediction_type: str = "epsilon"):
        super().__init__()
        self.denoiser = denoiser
        self.classifier = classifier
        table = torch.as_tensor(alphas_cumprod, dtype=torch.float64).flatten()
        if not 0 <= timestep < table.numel():
            raise ValueError(f"timestep {timestep} is outside the schedule's 0 … {table.numel() - 1}")
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unknown prediction type {prediction_type!r}")
        self.alphas_cumprod = table  # a plain attribute: not in the state dict, never cast or moved
        self.timestep = int(timestep)
        self.sigma = float(sigma)
        self.steps = int(steps)
        self.prediction_type = prediction_type
        self.timesteps = ddim_timesteps(self.timestep, self.steps)

    def _coefficients(self, t: int) -> tuple[float, float]:
        a = float(self.alphas_cumprod[t])
        return math.sqrt(a), math.sqrt(1.0 - a)

    def _predict(self, x_t: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂0 clamped to [−1, 1], ε̂) at time t."""
        s, s1 = self._coefficients(t)
        timesteps = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        out = self.denoiser(x_t, timesteps)
        out = getattr(out, "sample", out)
        if isinstance(out, (tuple, list)):
            out = out[0]
        out = out[:, : x_t.shape[1]].to(x_t.dtype)  # learned-variance UNets return [ε̂, variance]
        if self.prediction_type == "epsilon":
            eps = out
            x0 = (x_t - s1 * eps) / s
        elif self.prediction_type == "v_prediction":
            x0 = s * x_t - s1 * out
            eps = s * out + s1 * x_t
        else:  # "sample"
            x0 = out
            eps = (x_t - s * x0) / s1 if s1 > 0 else torch.zeros_like(x_t)
        return x0.clamp(-1.0, 1.0), eps

    def denoise(self, x: torch.Tensor) -> torch.Tensor:
        """The denoised image in [0, 1] for a noisy input x + δ in [0, 1] pixel space."""
        s, _ = self._coefficients(self.timesteps[0])
        x_t = s * (2.0 * x - 1.0)
        x0 = x_t
        for i, t in enumerate(self.timesteps):
            x0, eps = self._predict(x_t, t)
            if i + 1 < len(self.timesteps):
                s_next, s1_next = self._coefficients(self.timesteps[i + 1])
                x_t = s_next * x0 + s1_next * eps
        return (x0 + 1.0) / 2.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.denoise(x))

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, timestep={self.timestep}, steps={self.steps}, prediction={self.prediction_type}"


# -- the registry arch "dds" (registered below, when this module is imported) ---------------------------

def dds_defaults(cfg: dict) -> dict:
    return dict(DDS_DEFAULTS)


def check_dds_config(cfg: dict) -> None:
    """Validate and complete the "dds" keys of a registry config in place (ValueError/TypeError name the key)."""
    from .denoiser import alphas_cumprod, check_denoiser_config, unet_sample_size

    for key in ("denoiser", "classifier", "sigma"):
        if cfg[key] is None:
            raise ValueError(f"model config for 'dds' needs key {key!r}")
    denoiser = check_denoiser_config(cfg["denoiser"])
    unet = denoiser["unet"]
    if unet["in_channels"] != cfg["in_channels"] or unet_sample_size(unet) != cfg["image_size"]:
        raise ValueError(f"model config key 'denoiser' is for {unet['in_channels']}×{unet_sample_size(unet)}² images "
                         f"but the model takes {cfg['in_channels']}×{cfg['image_size']}²")
    cfg["denoiser"] = denoiser
    cfg["classifier"] = _check_nested_classifier(cfg)
    sigma = cfg["sigma"]
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"model config key 'sigma' must be a finite positive number, got {sigma!r}")
    cfg["sigma"] = float(sigma)
    table = alphas_cumprod(denoiser["scheduler"])
    if cfg["timestep"] is None:
        cfg["timestep"] = dds_timestep(cfg["sigma"], table)[0]
    timestep = cfg["timestep"]
    if isinstance(timestep, bool) or not isinstance(timestep, numbers.Integral) or not 0 <= timestep < table.numel():
        raise ValueError(f"model config key 'timestep' must be an integer in [0, {table.numel() - 1}], got {timestep!r}")
    cfg["timestep"] = int(timestep)
    steps = cfg["steps"]
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or not 1 <= steps <= max(1, timestep):
        raise ValueError(f"model config key 'steps' must be an integer in [1, {max(1, timestep)}], got {steps!r}")
    cfg["steps"] = int(steps)


def _check_nested_classifier(cfg: dict) -> dict:
    """The resolved registry config of the classifier nested in a "dds" config."""
    classifier = cfg["classifier"]
    if not isinstance(classifier, Mapping):
        raise TypeError(f"model config key 'classifier' must be a registry model config, got {classifier!r}")
    missing = [k for k in COMMON_KEYS if k not in classifier]
    if missing:
        raise ValueError(f"model config key 'classifier' is missing key(s): {', '.join(missing)}")
    if classifier["arch"] == "dds":
        raise ValueError("model config key 'classifier' cannot itself be a 'dds' model")
    classifier = model_config(**classifier)
    for key in ("num_classes", "in_channels", "image_size"):
        if classifier[key] != cfg[key]:
            raise ValueError(f"model config key 'classifier' has {key} {classifier[key]} but the model has {cfg[key]}")
    return classifier


def build_dds(cfg: dict) -> DDSClassifier:
    from .denoiser import alphas_cumprod, build_unet

    denoiser = cfg["denoiser"]
    return DDSClassifier(build_unet(denoiser), build_model(cfg["classifier"]), alphas_cumprod(denoiser["scheduler"]),
                         cfg["timestep"], cfg["sigma"], steps=cfg["steps"],
                         prediction_type=denoiser["scheduler"]["prediction_type"])


register_arch("dds", defaults=dds_defaults, check=check_dds_config, build=build_dds, composite=True)


# -- assembling a checkpoint -----------------------------------------------------------------------

def _describe(name: Any, channels: Any, size: Any, classes: Any) -> str:
    text = f"{name or 'unknown data'}: {channels}×{size}×{size}"
    return text + (f", {classes} classes" if classes is not None else "")


def _check_options(sigma: Any, steps: Any, out: Any, dry_run: bool, denoiser: Any, pretrained_denoiser: Any) -> float:
    """The options of `assemble_dds` that need no file; returns σ as a float."""
    if (denoiser is None) == (pretrained_denoiser is None):
        raise UserError("give exactly one of --denoiser (from `rrcm train-denoiser`) and --pretrained-denoiser "
                        "(a diffusers folder or hub id)")
    try:
        sigma = float(sigma)
    except (TypeError, ValueError):
        raise UserError(f"sigma must be a positive number, got {sigma!r}") from None
    if not (sigma > 0 and math.isfinite(sigma)):
        raise UserError(f"sigma must be a positive number, got {sigma}; use e.g. --sigma 0.25")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    if out is None and not dry_run:
        raise UserError("give --out, the model.safetensors to write")
    return sigma


def _read_classifier(classifier: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint config of a plain (not DDS) classifier."""
    from ..checkpoint import read_checkpoint_config

    cls_config = read_checkpoint_config(classifier)
    if cls_config.get("kind", "classifier") != "classifier":
        raise UserError(f"{classifier} is not a classifier (kind {cls_config.get('kind')!r}); give a model.safetensors "
                        "written by `rrcm train` (ideally `--method clean`)")
    if cls_config["model"].get("arch") == "dds":
        raise UserError(f"{classifier} is already a DDS model; give the plain classifier it was assembled from")
    return cls_config


def _read_denoiser(denoiser: str | os.PathLike | None, pretrained_denoiser: str | None) -> tuple[Any, dict, dict, dict]:
    """(the UNet if already loaded else None, denoiser model config, its data info, its source record)."""
    from ..smoothing.runner import file_sha256
    from .denoiser import load_pretrained_denoiser, read_denoiser_config

    if denoiser is not None:
        den_config, den_model = read_denoiser_config(denoiser)
        den_data = den_config.get("data") or {}
        source = {"path": str(denoiser), "sha256": file_sha256(denoiser), "data": den_data.get("name"),
                  "epochs_trained": den_config.get("epochs_trained")}
        return None, den_model, den_data, source
    unet, den_model = load_pretrained_denoiser(str(pretrained_denoiser))
    return unet, den_model, {}, {"pretrained": str(pretrained_denoiser)}


def _check_same_data(den_model: dict, den_data: dict, cls_config: dict, pretrained_denoiser: str | None) -> None:
    """The denoiser and the classifier must have been trained on the same kind of data."""
    from .denoiser import unet_sample_size

    cls_model, cls_data = cls_config["model"], cls_config.get("data") or {}
    den_shape = (den_model["unet"]["in_channels"], unet_sample_size(den_model["unet"]), den_data.get("num_classes"))
    cls_shape = (cls_model.get("in_channels"), cls_model.get("image_size"), cls_model.get("num_classes"))
    differ = [name for name, a, b in zip(("channels", "image size", "classes"), den_shape, cls_shape)
              if a is not None and b is not None and a != b]
    if differ:
        raise UserError(f"the denoiser ({_describe(den_data.get('name') or pretrained_denoiser, *den_shape)}) and the "
                        f"classifier ({_describe(cls_data.get('name'), *cls_shape)}) differ in {', '.join(differ)}; "
                        "assemble a denoiser and a classifier trained on the same data set")


def _choose_timestep(sigma: float, steps: int, table: torch.Tensor) -> tuple[int, float]:
    """(t, effective σ) of `dds_timestep`, as UserErrors, with `steps` checked against t."""
    try:
        timestep, effective_sigma = dds_timestep(sigma, table)
    except ValueError as e:
        raise UserError(f"{e}, or a denoiser with a noisier schedule") from None
    if steps > max(1, timestep):
        raise UserError(f"--steps {steps} is more than the {max(1, timestep)} timestep(s) below t = {timestep}; "
                        f"use --steps {max(1, timestep)} or fewer")
    return timestep, effective_sigma


def _dds_model_config(cls_model: dict, den_model: dict, sigma: float, timestep: int, steps: int) -> dict:
    try:
        return model_config("dds", num_classes=cls_model["num_classes"], in_channels=cls_model["in_channels"],
                            image_size=cls_model["image_size"], mean=cls_model["mean"], std=cls_model["std"],
                            denoiser=den_model, classifier=cls_model, sigma=sigma, timestep=timestep, steps=steps)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"cannot assemble a DDS model from these checkpoints ({e})") from None


def _checkpoint_config(classifier: str | os.PathLike, cls_config: dict, model_cfg: dict, source: dict,
                       table: torch.Tensor, effective_sigma: float) -> dict[str, Any]:
    """The checkpoint config of the assembled model (see the module docstring)."""
    from ..smoothing.runner import file_sha256

    sigma, timestep, steps = model_cfg["sigma"], model_cfg["timestep"], model_cfg["steps"]
    levels = noise_levels(table)
    cls_data = cls_config.get("data") or {}
    return {
        "kind": "classifier", "method": "dds", "command": "dds assemble", "rrcm_version": __version__,
        "sigma": sigma, "model": model_cfg, "data": cls_config.get("data"),
        "dds": {
            "timestep": timestep, "steps": steps, "timesteps": ddim_timesteps(timestep, steps),
            "effective_sigma": effective_sigma,  # level_t / 2 on [0, 1] pixels, >= sigma
            "noise_level": 2.0 * effective_sigma,  # √((1 − ᾱ_t)/ᾱ_t) in [−1, 1] space, >= 2σ
            "previous_level": float(levels[timestep - 1]) if timestep > 0 else None,
            "rule": "smallest t with sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t]) >= 2 sigma",
            "denoiser": source,
            "classifier": {"path": str(classifier), "sha256": file_sha256(classifier), "method": cls_config.get("method"),
                           "train_sigma": cls_config.get("sigma"), "data": cls_data.get("name")},
        },
    }


def _build_and_probe(unet: nn.Module, classifier: str | os.PathLike, table: torch.Tensor, model_cfg: dict,
                     prediction_type: str) -> DDSClassifier:
    """The assembled model, run once on a probe batch: fail here, not in certification, if the pieces
    do not fit together."""
    from ..checkpoint import load_checkpoint

    classifier_model, _ = load_checkpoint(classifier)
    model = DDSClassifier(unet, classifier_model, table, model_cfg["timestep"], model_cfg["sigma"],
                          steps=model_cfg["steps"], prediction_type=prediction_type).eval()
    with torch.no_grad():
        probe = torch.full((2, model_cfg["in_channels"], model_cfg["image_size"], model_cfg["image_size"]), 0.5)
        try:
            logits = model(probe)
        except RuntimeError as e:
            raise UserError(f"the denoiser and the classifier do not work together ({str(e).splitlines()[0][:200]})") from None
    if tuple(logits.shape) != (2, model_cfg["num_classes"]) or not torch.isfinite(logits).all():
        raise UserError(f"the assembled model returns {tuple(logits.shape)} logits (or non-finite ones); check the "
                        "classifier checkpoint")
    return model


def assemble_dds(classifier: str | os.PathLike, sigma: float, out: str | os.PathLike | None = None, *,
                 denoiser: str | os.PathLike | None = None, pretrained_denoiser: str | None = None,
                 steps: int = 1, dry_run: bool = False) -> dict[str, Any]:
    """Combine a denoiser and a clean classifier into a DDS base classifier checkpoint for smoothing σ.

    Give exactly one of `denoiser` (a denoiser.safetensors from `rrcm train-denoiser`) and
    `pretrained_denoiser` (a diffusers folder or hub id). Writes `out` (and `<out>.json`, the same
    config) unless `dry_run`; returns the checkpoint config. Every user mistake is a UserError.
    """
    from ..checkpoint import save_checkpoint
    from ..fileio import write_json_atomic
    from .denoiser import alphas_cumprod, load_denoiser

    sigma = _check_options(sigma, steps, out, dry_run, denoiser, pretrained_denoiser)
    cls_config = _read_classifier(classifier)
    unet, den_model, den_data, source = _read_denoiser(denoiser, pretrained_denoiser)
    _check_same_data(den_model, den_data, cls_config, pretrained_denoiser)
    table = alphas_cumprod(den_model["scheduler"])
    timestep, effective_sigma = _choose_timestep(sigma, steps, table)
    model_cfg = _dds_model_config(cls_config["model"], den_model, sigma, timestep, steps)
    config = _checkpoint_config(classifier, cls_config, model_cfg, source, table, effective_sigma)
    if dry_run:
        return config
    if unet is None:
        unet, _ = load_denoiser(denoiser)
    model = _build_and_probe(unet, classifier, table, model_cfg, den_model["scheduler"]["prediction_type"])
    save_checkpoint(out, model, config)
    write_json_atomic(f"{out}.json", config)
    return config


__all__ = ["DDSClassifier", "dds_timestep", "ddim_timesteps", "noise_levels", "assemble_dds", "build_dds",
           "check_dds_config", "dds_defaults"]
