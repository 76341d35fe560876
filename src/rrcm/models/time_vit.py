"""The rRCM encoder: a ViT that is told its noise level, its pre-training projector, and the classifier.

Conventions:

- The encoder works in the diffusion's space: images in [-1, 1], noisy points z = x + σ·ε (EDM,
  variance exploding). It scales its input by c_in(σ) = 1/√(σ² + σ_data²) and is told
  c_noise(σ) = 250·ln σ through a *time token* placed after the cls token. Tokens are
  [cls, time, patches] + a learned position embedding over all of them.
- The time token (`time_token`): "sinusoid", the authors' (jiachenlei/rRCM, `mlp_time_embed=False`),
  is the sinusoidal embedding of c_noise at the full width, with no parameters; "mlp", rrcm's
  earlier one, is a `time_embed_dim`-wide sinusoid through Linear–SiLU–Linear, which at
  initialisation carries ~20× less signal about σ (RMS 0.03 against 0.71).
- The attention's qkv projection has no bias (`qkv_bias=False`, the authors'; True is rrcm's earlier
  model) and the cls token starts at N(0, 10⁻¹²) (standard deviation 10⁻⁶), as theirs.
- Initialisation: Linear and patch-embedding weights trunc-normal(0.02), biases zero, as the project's
  ViT. This is not the authors': their CIFAR-10 code leaves Linear layers at PyTorch's default
  (Kaiming-uniform) initialisation, and their ImageNet pre-training uses MoCo v3's (`moco_v3_init`,
  `rrcm pretrain --encoder-init moco-v3`). The classifier's head is trunc-normal(0.02) (theirs 2·10⁻⁵).
- The pre-training feature is the cls token after the final LayerNorm. The classifier's head reads
  the cls token before it (`feature_norm=False`, the authors' CIFAR-10 fine-tuning, `layernorm=False`)
  or after it (`feature_norm=True`, their ImageNet fine-tuning and rrcm's earlier model).
- `RRCMClassifier` is the base classifier that gets certified: it takes pixels in [0, 1] (possibly
  carrying smoothing noise σ_RS), maps them to [-1, 1] with the fixed normalisation mean = std = 0.5
  (so the noise becomes 2·σ_RS), runs the encoder at a fixed `condition_sigma` and a linear head.
- `Projector` is the MoCo-v3-style MLP used only during pre-training and discarded afterwards.

Checkpoints written before `time_token`, `qkv_bias` and `feature_norm` existed lack those keys; they
describe the earlier model, and `rrcm.checkpoint` reads them so (`RRCM_VIT_LEGACY`).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .. import diffusion
from .normalize import Normalize
from .registry import model_config
from .vit import INIT_STD, Block, default_patch_size, init_linear_like

__all__ = ["TimeConditionedViT", "Projector", "moco_v3_init", "RRCMClassifier", "RRCM_VIT_SIZES", "SIZE_KEYS", "TIME_TOKENS",
           "RRCM_VIT_LEGACY", "SIGMA_DATA", "encoder_from_config", "prepare_rrcm_vit_config", "sinusoidal_embedding"]

SIGMA_DATA = 0.5          # EDM's σ_data for images in [-1, 1]
PIXEL_MEAN_STD = 0.5      # (x - 0.5) / 0.5 = 2x - 1 maps [0, 1] pixels to the diffusion's [-1, 1]
MAX_PERIOD = 10_000.0     # lowest frequency of the sinusoidal embedding is 1 / MAX_PERIOD
CLS_INIT_STD = 1e-6       # the authors' cls-token initialisation, N(0, 1e-6²)
TIME_TOKENS = ("sinusoid", "mlp")
# The values that keys added to "rrcm_vit" after its first release had before they existed: a config
# saved without them (an older checkpoint) describes this model.
RRCM_VIT_LEGACY = {"time_token": "mlp", "qkv_bias": True, "feature_norm": True}

# Size presets. `patch_size` None means "by image size" (vit.default_patch_size: 2 up to 16 px,
# 4 up to 64 px, 16 above). `projector_hidden` is the pre-training projector's hidden width; it is
# not a model-config key (the projector is not part of the classifier). The paper presets' projector
# widths are the authors' (configs/*_pretrain_rcm{b,s}.py in jiachenlei/rRCM).
RRCM_VIT_SIZES: dict[str, dict[str, Any]] = {
    # digits 8x8 / MNIST 28x28 on a CPU (the registry's default)
    "tiny": {"patch_size": None, "width": 64, "depth": 4, "heads": 4, "projector_hidden": 256},
    # MNIST 28x28 on a CPU: patch 7 (16 tokens) certifies 3x faster than tiny's patch 4 (49 tokens)
    "mnist": {"patch_size": 7, "width": 64, "depth": 4, "heads": 4, "projector_hidden": 256},
    # the digits demo: 2x faster certification than tiny on a CPU
    "digits": {"patch_size": 2, "width": 48, "depth": 3, "heads": 3, "projector_hidden": 256},
    # CIFAR-10 trainable on a CPU
    "cifar-small": {"patch_size": 4, "width": 192, "depth": 6, "heads": 3, "projector_hidden": 1024},
    # paper: CIFAR-10 rRCM-B (ViT-B, patch 4, 32x32)
    "cifar10-b": {"patch_size": 4, "width": 768, "depth": 12, "heads": 12, "projector_hidden": 2048},
    # paper: ImageNet rRCM-B (ViT-B/16 at 224)
    "imagenet-b": {"patch_size": 16, "width": 768, "depth": 12, "heads": 12, "projector_hidden": 4096},
    # paper: ImageNet rRCM-S (512 wide, 6 deep, patch 16 at 224)
    "imagenet-s": {"patch_size": 16, "width": 512, "depth": 6, "heads": 8, "projector_hidden": 2048},
}
SIZE_KEYS = ("patch_size", "width", "depth", "heads")  # the model-config keys a size preset fills


# ---- preconditioning (rrcm.diffusion holds the conventions; c_in here takes the model's σ_data)

def _c_in(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """EDM input scaling 1 / sqrt(σ² + σ_data²) (rrcm.diffusion.c_in with this model's σ_data)."""
    return torch.rsqrt(sigma * sigma + sigma_data ** 2)


def _c_noise(sigma: torch.Tensor) -> torch.Tensor:
    """The noise condition 250·ln σ (consistency models' rescaled time)."""
    return diffusion.c_noise(sigma)


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = MAX_PERIOD) -> torch.Tensor:
    """Transformer/DDPM timestep embedding of t (B,) -> (B, dim), float32: [cos(t·f), sin(t·f)].

    Frequencies f_k = max_period^(-k/half), k = 0..half-1, half = dim // 2 (log-spaced from 1 down
    to 1/max_period); an odd `dim` gets one zero column. Always computed in float32, also under
    autocast: c_noise reaches ~±1500, where bf16 arguments would make the sines meaningless.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) / half
                      * torch.arange(half, dtype=torch.float32, device=t.device))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _sigma_vector(sigma: Any, batch: int, device: torch.device) -> torch.Tensor:
    """σ as a float32 vector (B,) on `device`, from a number, a 0-dim tensor or a (B,) tensor."""
    if isinstance(sigma, torch.Tensor):
        s = sigma.to(device=device, dtype=torch.float32)
        if s.dim() == 0 or s.shape == (1,):
            s = s.reshape(()).expand(batch)
        elif s.shape != (batch,):
            raise ValueError(f"time_vit: sigma must be a number, a 0-dim tensor or shaped ({batch},) "
                             f"(one per example), got shape {tuple(sigma.shape)}")
        # Checking values would force a device sync on accelerators: only do it where it is free.
        if s.device.type == "cpu" and not bool(((s > 0) & torch.isfinite(s)).all()):
            raise ValueError(f"time_vit: sigma must be finite and positive, got {sigma}")
        return s
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise TypeError(f"time_vit: sigma must be a number or a tensor, got {sigma!r}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"time_vit: sigma must be finite and positive, got {sigma}")
    # The same float32 path as a tensor σ, so scalar and per-example σ give identical results.
    return torch.full((batch,), float(sigma), dtype=torch.float32, device=device)


class TimeConditionedViT(nn.Module):
    """ViT encoder on noisy images in [-1, 1], conditioned on σ: `features(z, sigma)` -> h (B, width).

    `sigma` is a Python number, a 0-dim tensor, or a (B,) tensor (one level per example). The
    encoder applies c_in(σ) itself: pass the raw noisy point z = x + σ·ε, not a scaled one.
    """

    def __init__(self, image_size: int, patch_size: int, in_channels: int, width: int, depth: int,
                 heads: int, mlp_ratio: float = 4.0, time_embed_dim: int = 256,
                 sigma_data: float = SIGMA_DATA, time_token: str = "sinusoid", qkv_bias: bool = False):
        super().__init__()
        if time_token not in TIME_TOKENS:
            raise ValueError(f"time_vit: 'time_token' must be one of {', '.join(TIME_TOKENS)}, got {time_token!r}")
        if image_size % patch_size != 0:
            raise ValueError(f"time_vit: 'patch_size' ({patch_size}) must divide 'image_size' ({image_size})")
        if time_embed_dim < 2:
            raise ValueError(f"time_vit: 'time_embed_dim' must be >= 2, got {time_embed_dim}")
        if not (math.isfinite(sigma_data) and sigma_data > 0):
            raise ValueError(f"time_vit: 'sigma_data' must be finite and positive, got {sigma_data}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.width = width
        self.depth = depth
        self.time_embed_dim = time_embed_dim
        self.time_token_kind = time_token
        self.sigma_data = float(sigma_data)
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        # "sinusoid" has no parameters: the embedding of c_noise is the token
        self.time_embed = (nn.Sequential(nn.Linear(time_embed_dim, width), nn.SiLU(), nn.Linear(width, width))
                           if time_token == "mlp" else None)
        self.pos_embed = nn.Parameter(torch.zeros(1, 2 + self.num_patches, width))  # cls, time, patches
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        if time_token == "mlp":  # the earlier model, initialised as it was
            nn.init.trunc_normal_(self.cls_token, std=INIT_STD)
        else:
            nn.init.normal_(self.cls_token, std=CLS_INIT_STD)
        nn.init.trunc_normal_(self.pos_embed, std=INIT_STD)
        init_linear_like(self)

    @property
    def feature_dim(self) -> int:
        return self.width

    @property
    def num_tokens(self) -> int:
        return 2 + self.num_patches

    def time_token(self, sigma: Any, batch: int, device: torch.device | str) -> torch.Tensor:
        """The time token, shaped (B, width) in float32 or the MLP's dtype, before the position embedding:
        sinusoid(c_noise(σ)) at the full width ("sinusoid"), or MLP(sinusoid(c_noise(σ))) ("mlp")."""
        s = _sigma_vector(sigma, batch, torch.device(device))
        if self.time_embed is None:
            return sinusoidal_embedding(_c_noise(s), self.width)
        emb = sinusoidal_embedding(_c_noise(s), self.time_embed_dim)
        # match a model cast to half precision; under autocast the Linear picks its own dtype
        return self.time_embed(emb.to(self.time_embed[0].weight.dtype))

    def embed(self, z_scaled: torch.Tensor, sigma: Any) -> torch.Tensor:
        """Already c_in-scaled images (B, C, H, W) and σ -> tokens (B, 2 + num_patches, width)."""
        if z_scaled.dim() != 4 or z_scaled.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"time_vit: expected images shaped (B, {self.in_channels}, {self.image_size}, "
                             f"{self.image_size}), got {tuple(z_scaled.shape)}")
        patches = self.patch_embed(z_scaled).flatten(2).transpose(1, 2)
        b = patches.shape[0]
        cls = self.cls_token.expand(b, -1, -1).to(patches.dtype)
        time = self.time_token(sigma, b, patches.device).unsqueeze(1).to(patches.dtype)
        return torch.cat([cls, time, patches], dim=1) + self.pos_embed

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the transformer blocks over a token sequence (the final LayerNorm is not applied)."""
        for block in self.blocks:
            tokens = block(tokens)
        return tokens

    def cls_output(self, z: torch.Tensor, sigma: Any) -> torch.Tensor:
        """Noisy images z in [-1, 1] (B, C, H, W) at noise level σ -> the last block's cls token (B, width)."""
        if z.dim() != 4:
            raise ValueError(f"time_vit: expected images shaped (B, C, H, W), got {tuple(z.shape)}")
        scale = _c_in(_sigma_vector(sigma, z.shape[0], z.device), self.sigma_data)
        z_scaled = z * scale.to(z.dtype).view(-1, 1, 1, 1)
        return self.encode(self.embed(z_scaled, sigma))[:, 0]

    def features(self, z: torch.Tensor, sigma: Any) -> torch.Tensor:
        """The pre-training feature h (B, width): the cls token after the final LayerNorm."""
        return self.norm(self.cls_output(z, sigma))

    def forward(self, z: torch.Tensor, sigma: Any) -> torch.Tensor:
        return self.features(z, sigma)

    # The training engine's parameter groups find layers by name (train.engine.layer_id). cls_token and
    # pos_embed take weight decay like any matrix: the authors' fine-tuning names them exempt, but matches
    # the names without the model's prefix, so in their runs they are decayed too.


def moco_v3_init(encoder: TimeConditionedViT) -> None:
    """MoCo v3's ViT initialisation, which the rRCM authors use for ImageNet pre-training: Xavier-uniform
    Linear weights, with q, k and v each treated as its own matrix; the patch embedding Xavier-uniform
    over its fan-in (channels × patch area) and fan-out; zero biases. Norms, cls token, positions and
    the time token are left as they are."""
    for name, m in encoder.named_modules():
        if isinstance(m, nn.Linear):
            if name.endswith("qkv"):
                bound = math.sqrt(6.0 / (m.weight.shape[0] // 3 + m.weight.shape[1]))
                nn.init.uniform_(m.weight, -bound, bound)
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    conv = encoder.patch_embed
    bound = math.sqrt(6.0 / (conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1] + conv.out_channels))
    nn.init.uniform_(conv.weight, -bound, bound)
    nn.init.zeros_(conv.bias)


class Projector(nn.Sequential):
    """Pre-training projector (MoCo v3 / the authors' rRCM): Linear–BN–ReLU, Linear–BN–ReLU, Linear.

    Linear layers carry no bias (a BatchNorm follows the first two; the authors' last layer has none
    either) and there is no BatchNorm after the last layer (the authors' `last_bn=False`): the
    InfoNCE loss L2-normalises the output anyway. Train mode needs a batch of at least 2. With more
    than one process, pre-training replaces the BatchNorms by `rrcm.train.contrastive.GlobalBatchNorm1d`
    (batch statistics over the global batch; it works under gloo on CPUs, unlike SyncBatchNorm).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int = 256):
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim, bias=False),
        )
        self.in_dim, self.hidden_dim, self.out_dim = in_dim, hidden_dim, out_dim


class RRCMClassifier(nn.Module):
    """The fine-tuned base classifier: [0, 1] pixels -> [-1, 1] -> encoder at `condition_sigma` -> head.

    `condition_sigma` is configuration (a plain float, not a parameter or buffer): the noise level,
    in the diffusion's [-1, 1] space, the encoder is told. Pixel noise σ_RS becomes 2·σ_RS there; the
    fine-tuning code picks the grid point nearest to it. The state dict is `encoder.*` + `head.*`, so
    a pre-trained encoder's state dict loads into `classifier.encoder` as is.
    """

    def __init__(self, encoder: TimeConditionedViT, num_classes: int, condition_sigma: float = 0.5,
                 feature_norm: bool = False):
        super().__init__()
        if not (math.isfinite(condition_sigma) and condition_sigma > 0):
            raise ValueError(f"rrcm_vit: 'condition_sigma' must be finite and positive, got {condition_sigma}")
        channels = encoder.in_channels
        self.normalize = Normalize([PIXEL_MEAN_STD] * channels, [PIXEL_MEAN_STD] * channels)
        self.encoder = encoder
        self.head = nn.Linear(encoder.width, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=INIT_STD)
        nn.init.zeros_(self.head.bias)
        self.condition_sigma = float(condition_sigma)
        self.feature_norm = bool(feature_norm)
        if not self.feature_norm:
            # kept so that a pre-trained encoder's state dict loads as is; frozen, as it is not used
            for p in encoder.norm.parameters():
                p.requires_grad_(False)

    @property
    def feature_dim(self) -> int:
        return self.encoder.width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels (B, C, H, W) -> the head's input (B, width) at `condition_sigma`: the cls
        token, after the encoder's final LayerNorm if `feature_norm`."""
        z = self.normalize(x)
        if self.feature_norm:
            return self.encoder.features(z, self.condition_sigma)
        return self.encoder.cls_output(z, self.condition_sigma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def extra_repr(self) -> str:
        return f"condition_sigma={self.condition_sigma}, feature_norm={self.feature_norm}"


# ---- registry support (rrcm.models registers the "rrcm_vit" arch with these)

def prepare_rrcm_vit_config(config: Mapping[str, Any]) -> dict:
    """Raw "rrcm_vit" config -> the same with the normalisation fixed and any `size` preset expanded.

    - mean/std are replaced by 0.5 per channel whatever the caller passed: the encoder lives in the
      diffusion's [-1, 1] space (σ_data = 0.5, c_in, the noise grid all assume it), so the data's
      own mean/std must not be used. Callers pass their dataset's values; they are ignored.
    - `size` (a key of RRCM_VIT_SIZES) fills patch_size/width/depth/heads where the config does not
      give them (explicit keys win) and is then dropped: the resolved config holds the numbers only.
    """
    config = dict(config)
    channels = config.get("in_channels")
    if isinstance(channels, numbers.Integral) and not isinstance(channels, bool) and channels >= 1:
        config["mean"] = [PIXEL_MEAN_STD] * int(channels)
        config["std"] = [PIXEL_MEAN_STD] * int(channels)
    if "size" in config:
        size = config.pop("size")
        if not isinstance(size, str):
            raise TypeError(f"model config key 'size' must be a string, got {size!r}")
        if size not in RRCM_VIT_SIZES:
            raise ValueError(f"model config key 'size' must be one of {', '.join(RRCM_VIT_SIZES)}, got {size!r}")
        for key in SIZE_KEYS:
            if RRCM_VIT_SIZES[size][key] is not None:
                config.setdefault(key, RRCM_VIT_SIZES[size][key])
    return config


def rrcm_vit_defaults(cfg: Mapping[str, Any]) -> dict:
    """Defaults of the arch's own keys ("tiny" size), given the common keys."""
    tiny = RRCM_VIT_SIZES["tiny"]
    return {"patch_size": default_patch_size(cfg["image_size"]), "width": tiny["width"],
            "depth": tiny["depth"], "heads": tiny["heads"], "mlp_ratio": 4.0, "time_embed_dim": 256,
            "condition_sigma": 0.5, "sigma_data": SIGMA_DATA, "time_token": "sinusoid", "qkv_bias": False,
            "feature_norm": False}


ENCODER_KEYS = ("image_size", "patch_size", "in_channels", "width", "depth", "heads", "mlp_ratio",
                "time_embed_dim", "sigma_data", "time_token", "qkv_bias")


def _encoder_kwargs(cfg: Mapping[str, Any]) -> dict:
    return {k: cfg[k] for k in ENCODER_KEYS}


def build_rrcm_classifier(cfg: Mapping[str, Any]) -> RRCMClassifier:
    """Build from a resolved "rrcm_vit" config (use `rrcm.models.build_model` for any other)."""
    return RRCMClassifier(TimeConditionedViT(**_encoder_kwargs(cfg)), cfg["num_classes"], cfg["condition_sigma"],
                          cfg["feature_norm"])


def encoder_from_config(config: Mapping[str, Any]) -> TimeConditionedViT:
    """The encoder alone (no head, no normalisation) that an "rrcm_vit" model config describes.

    The config is validated and completed like `build_model`'s, so the encoder's state dict is
    exactly the classifier's `encoder.*` part.
    """
    cfg = model_config(**config)
    if cfg["arch"] != "rrcm_vit":
        raise ValueError(f"encoder_from_config needs an 'rrcm_vit' config, got arch {cfg['arch']!r}")
    return TimeConditionedViT(**_encoder_kwargs(cfg))
