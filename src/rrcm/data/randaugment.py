"""timm's RandAugment policy "rand-m9-mstd0.5-inc1", on batches (B, C, H, W) in plain torch.

This is the augmentation the rRCM authors fine-tune on ImageNet with (jiachenlei/rRCM,
configs/imagenet_finetune.py: `autoaug = "rand-m9-mstd0.5-inc1"`, passed to timm's
`create_transform(auto_augment=..., interpolation="bicubic", mean=(0.5,)*3)`), re-implemented from the
semantics of timm/data/auto_augment.py (huggingface/pytorch-image-models) without PIL or timm:

- each image gets `num_ops` (n=2) ops drawn uniformly, with replacement, from the 15 ops of timm's
  `_RAND_INCREASING_TRANSFORMS` (inc1; `increasing=False` gives `_RAND_TRANSFORMS`);
- each op is applied with probability 0.5 (timm's `rand_augment_ops` default);
- each application draws its own magnitude m ~ N(magnitude, magnitude_std) (m9, mstd0.5), then clips it
  to [0, max_magnitude] (timm's `magnitude_max`, default 10); magnitude_std = inf draws m ~ U(0, magnitude)
  as timm does for mstd > 100;
- the op's argument follows from m as in timm's `LEVEL_TO_ARG`, with a random sign (+ or -, 1/2 each)
  for Rotate, Shear*, Translate*Rel and the *Increasing enhancements:
    Rotate: 30 * m/10 degrees (counter-clockwise, about the image centre, like PIL's `rotate`);
    PosterizeIncreasing: keep 4 - int(4 * m/10) bits;      SolarizeIncreasing: threshold 256 - int(256 * m/10);
    SolarizeAdd: add int(110 * m/10) to pixels below 128;   Shear{X,Y}: factor 0.3 * m/10;
    Translate{X,Y}Rel: 0.45 * m/10 of the width (height);
    {Color,Contrast,Brightness,Sharpness}Increasing: factor max(0.1, 1 +- 0.9 * m/10);
    AutoContrast, Equalize, Invert: no argument.

Pixel semantics follow PIL's on uint8 images, written for floats in [0, 1]. Deliberate differences:
- float arithmetic throughout: results are not rounded to uint8 after each op (PIL's are), though each
  op's result is clipped to [0, 1] as PIL clips to [0, 255]. Posterize and Equalize quantise to the 256
  uint8 levels round(255 x) because they are defined on them; AutoContrast leaves a channel alone when
  it spans less than one such level (as PIL does with a constant channel), and Solarize/SolarizeAdd
  compare x with threshold/255;
- greyscale is ITU-R 601-2 luma 0.299 R + 0.587 G + 0.114 B in floats (PIL: fixed point, rounded), and
  Contrast blends with its exact mean (PIL: rounded to an integer);
- geometric ops use bilinear interpolation (timm, given interpolation="bicubic" by rRCM, uses bicubic;
  with no interpolation given it picks bilinear or bicubic at random). As in PIL, an output pixel whose
  source point lies outside the image takes the fill value, one inside is interpolated with edge pixels
  replicated. The fill is 0.5 on every channel; timm's is `img_mean` = round(255 * 0.5) = 128, i.e.
  128/255 = 0.50196, for rRCM's mean 0.5;
- 1-channel images are treated as PIL's "L" mode (Color is then the identity); timm sees RGB only.

Private hooks, for testing the ops one at a time:
- `_OPS[name]` is an `_Op(apply, arg)`: `apply(x, a)` applies the op to images x (N, C, H, W) with
  per-image arguments a (N,) (None for AutoContrast, Equalize, Invert); `arg(level, sign)` maps
  per-image magnitudes and signs (+1 / -1), float64 (N,), to those arguments (None: no argument);
- `_apply_op(name, x, level, sign)` does both for every image of x, and clips to [0, 1];
- `_sample_plan(...)` draws every random choice of `rand_augment` (a `_Plan`) and `_apply_plan(x, plan)`
  applies them: `rand_augment(x, g, ...) == _apply_plan(x, _sample_plan(len(x), g, ...))`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F

_LEVEL_DENOM = 10.0  # timm: magnitude m maps to the fraction m / 10 of each op's full-scale argument
_PROB = 0.5  # timm: probability of applying each chosen op
_FILL = 0.5  # value of pixels that geometric ops bring in from outside the image (timm: 128/255)
_INTERPOLATION = "bilinear"
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, PIL's convert("L")
# PIL's ImageFilter.SMOOTH, which ImageEnhance.Sharpness blends away from.
_SMOOTH_KERNEL = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0


# ----------------------------------------------------------------------------------------------- helpers
def _per_image(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image arguments (N,) as (N, 1, 1, 1) in x's dtype and device, to broadcast over images."""
    return a.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W) greyscale: the luma of RGB, grey images as they are."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _levels(x: torch.Tensor) -> torch.Tensor:
    """The uint8 level 0..255 nearest each pixel, as int64."""
    return (x * 255).round().clamp(0, 255).to(torch.int64)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: factor 0 gives `degenerate`, 1 gives x, beyond extrapolates away from it."""
    return degenerate + _per_image(factor, x) * (x - degenerate)


def _affine(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """PIL's `Image.transform(AFFINE)`: `matrix` (N, 2, 3), float64, maps each output pixel's centre to
    its source point, both in pixels from the top-left corner (PIL's convention, the inverse map)."""
    n, c, h, w = x.shape
    # With align_corners=False, grid coordinate u = 2 x / W - 1 for pixel coordinate x (same for y).
    to_grid = matrix.new_tensor([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1]])
    from_grid = matrix.new_tensor([[w / 2, 0, w / 2], [0, h / 2, h / 2], [0, 0, 1]])
    bottom = matrix.new_tensor([0, 0, 1]).expand(n, 1, 3)
    theta = (to_grid @ torch.cat([matrix, bottom], dim=1) @ from_grid)[:, :2]
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), [n, c, h, w], align_corners=False)
    sampled = F.grid_sample(x, grid, mode=_INTERPOLATION, padding_mode="border", align_corners=False)
    inside = ((grid >= -1) & (grid < 1)).all(dim=-1).unsqueeze(1)
    return torch.where(inside, sampled, torch.full_like(sampled, _FILL))


def _matrix(n: int, a=1.0, b=0.0, c=0.0, d=0.0, e=1.0, f=0.0) -> torch.Tensor:
    """(n, 2, 3) float64 affine matrices [[a, b, c], [d, e, f]]; each entry a number or an (n,) tensor."""
    values = (a, b, c, d, e, f)
    device = next((v.device for v in values if isinstance(v, torch.Tensor)), None)
    entries = [torch.as_tensor(v, dtype=torch.float64, device=device).expand(n) for v in values]
    return torch.stack(entries, dim=1).view(n, 2, 3)


# --------------------------------------------------------------------------------------------- pixel ops
def _auto_contrast(x: torch.Tensor, _arg=None) -> torch.Tensor:
    """PIL ImageOps.autocontrast (cutoff 0): stretch each channel's [min, max] to [0, 1]."""
    lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    stretch = (hi * 255).round() > (lo * 255).round()  # PIL leaves a one-level (constant) channel alone
    return torch.where(stretch, (x - lo) / torch.where(stretch, hi - lo, torch.ones_like(hi)), x)


def _equalize(x: torch.Tensor, _arg=None) -> torch.Tensor:
    """PIL ImageOps.equalize: per channel, a look-up table from the cumulative 256-bin histogram."""
    n, c, h, w = x.shape
    levels = _levels(x).view(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, levels, torch.ones_like(levels))
    top_count = hist.gather(1, levels.amax(dim=1, keepdim=True))  # count in the highest non-empty bin
    step = (h * w - top_count) // 255
    below = hist.cumsum(dim=1) - hist  # pixels in the bins below each level
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)  # PIL clips its table to 0..255
    equalized = lut.gather(1, levels).to(x.dtype) / 255
    unchanged = ((hist > 0).sum(dim=1, keepdim=True) <= 1) | (step == 0)  # PIL: identity table
    return torch.where(unchanged, x.reshape(n * c, h * w), equalized).view(n, c, h, w)


def _invert(x: torch.Tensor, _arg=None) -> torch.Tensor:
    return 1 - x


def _posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.posterize: keep the top `bits` bits of each uint8 level (timm: 8 or more is identity)."""
    bits = _per_image(bits, x).to(torch.int64).clamp(0, 8)
    kept = _levels(x) & (256 - (1 << (8 - bits)))
    return torch.where(bits >= 8, x, kept.to(x.dtype) / 255)


def _solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """PIL ImageOps.solarize: invert the pixels at or above threshold/255 (threshold 0..256)."""
    return torch.where(x < _per_image(threshold, x) / 255, x, 1 - x)


def _solarize_add(x: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """timm's solarize_add: add add/255 to the pixels below 128/255, saturating at 1."""
    below = x < x.new_tensor(128.0) / 255
    return torch.where(below, (x + _per_image(add, x) / 255).clamp(max=1), x)


def _color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Color: blend with the greyscale image (identity for grey images)."""
    return x if x.shape[1] == 1 else _blend(_grey(x).expand_as(x), x, factor)


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Contrast: blend with the mean of the greyscale image."""
    return _blend(_grey(x).mean(dim=(1, 2, 3), keepdim=True).expand_as(x), x, factor)


def _brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Brightness: blend with black, i.e. scale by the factor."""
    return _blend(torch.zeros_like(x), x, factor)


def _sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ImageEnhance.Sharpness: blend with the SMOOTH-filtered image, whose border pixels PIL copies."""
    c, h, w = x.shape[1:]
    smooth = x.clone()
    if h >= 3 and w >= 3:
        kernel = _SMOOTH_KERNEL.to(device=x.device, dtype=x.dtype).expand(c, 1, 3, 3)
        smooth[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)
    return _blend(smooth, x, factor)


# ------------------------------------------------------------------------------------------ geometric ops
def _rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """PIL Image.rotate: counter-clockwise by `degrees` about the image centre, same size."""
    h, w = x.shape[-2:]
    angle = -torch.deg2rad(degrees.to(torch.float64))  # the source point is the output rotated back
    cos, sin = torch.round(torch.cos(angle), decimals=15), torch.round(torch.sin(angle), decimals=15)  # as PIL
    cx, cy = w / 2, h / 2
    return _affine(x, _matrix(len(x), cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy))


def _shear_x(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL affine (1, f, 0, 0, 1, 0): row y is read from x + f y, y measured from the top edge."""
    return _affine(x, _matrix(len(x), b=factor))


def _shear_y(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _affine(x, _matrix(len(x), d=factor))


def _translate_x_rel(x: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """PIL affine (1, 0, fraction * W, 0, 1, 0): a positive fraction moves the content left."""
    return _affine(x, _matrix(len(x), c=fraction.to(torch.float64) * x.shape[-1]))


def _translate_y_rel(x: torch.Tensor, fraction: torch.Tensor) -> torch.Tensor:
    """PIL affine (1, 0, 0, 0, 1, fraction * H): a positive fraction moves the content up."""
    return _affine(x, _matrix(len(x), f=fraction.to(torch.float64) * x.shape[-2]))


# ------------------------------------------------------------- magnitude to argument (timm's LEVEL_TO_ARG)
# Written in float64 in timm's order of operations, so int() truncations land where Python's do.
def _rotate_arg(level, sign):
    return level / _LEVEL_DENOM * 30.0 * sign


def _posterize_increasing_arg(level, sign):
    return 4 - torch.trunc(level / _LEVEL_DENOM * 4)


def _posterize_arg(level, sign):
    return torch.trunc(level / _LEVEL_DENOM * 4)


def _solarize_increasing_arg(level, sign):
    return 256 - torch.trunc(level / _LEVEL_DENOM * 256)


def _solarize_arg(level, sign):
    return torch.trunc(level / _LEVEL_DENOM * 256)


def _solarize_add_arg(level, sign):
    return torch.trunc(level / _LEVEL_DENOM * 110)


def _enhance_increasing_arg(level, sign):
    return (1.0 + sign * (level / _LEVEL_DENOM * 0.9)).clamp(min=0.1)


def _enhance_arg(level, sign):
    return level / _LEVEL_DENOM * 1.8 + 0.1


def _shear_arg(level, sign):
    return level / _LEVEL_DENOM * 0.3 * sign


def _translate_rel_arg(level, sign):
    return level / _LEVEL_DENOM * 0.45 * sign


class _Op(NamedTuple):
    apply: Callable[[torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
    arg: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]


_OPS: dict[str, _Op] = {
    "AutoContrast": _Op(_auto_contrast, None),
    "Equalize": _Op(_equalize, None),
    "Invert": _Op(_invert, None),
    "Rotate": _Op(_rotate, _rotate_arg),
    "PosterizeIncreasing": _Op(_posterize, _posterize_increasing_arg),
    "SolarizeIncreasing": _Op(_solarize, _solarize_increasing_arg),
    "SolarizeAdd": _Op(_solarize_add, _solarize_add_arg),
    "ColorIncreasing": _Op(_color, _enhance_increasing_arg),
    "ContrastIncreasing": _Op(_contrast, _enhance_increasing_arg),
    "BrightnessIncreasing": _Op(_brightness, _enhance_increasing_arg),
    "SharpnessIncreasing": _Op(_sharpness, _enhance_increasing_arg),
    "ShearX": _Op(_shear_x, _shear_arg),
    "ShearY": _Op(_shear_y, _shear_arg),
    "TranslateXRel": _Op(_translate_x_rel, _translate_rel_arg),
    "TranslateYRel": _Op(_translate_y_rel, _translate_rel_arg),
    # timm's _RAND_TRANSFORMS (inc0) variants: severity falls with magnitude, factors have no sign.
    "Posterize": _Op(_posterize, _posterize_arg),
    "Solarize": _Op(_solarize, _solarize_arg),
    "Color": _Op(_color, _enhance_arg),
    "Contrast": _Op(_contrast, _enhance_arg),
    "Brightness": _Op(_brightness, _enhance_arg),
    "Sharpness": _Op(_sharpness, _enhance_arg),
}

RANDAUGMENT_OPS: tuple[str, ...] = (  # timm's _RAND_INCREASING_TRANSFORMS, in its order
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing",
    "ShearX", "ShearY", "TranslateXRel", "TranslateYRel",
)
# timm's _RAND_TRANSFORMS (increasing=False): the same list with the non-increasing variants.
_RAND_OPS_PLAIN: tuple[str, ...] = tuple(name.removesuffix("Increasing") for name in RANDAUGMENT_OPS)


def _apply_op(
    name: str, x: torch.Tensor, level: float | torch.Tensor, sign: float | torch.Tensor = 1.0
) -> torch.Tensor:
    """Op `name` on every image of x at magnitude `level` with sign `sign` (numbers or (N,) tensors)."""
    op = _OPS[name]
    n = len(x)
    level = torch.as_tensor(level, dtype=torch.float64).expand(n)
    sign = torch.as_tensor(sign, dtype=torch.float64).expand(n)
    return op.apply(x, None if op.arg is None else op.arg(level, sign)).clamp(0, 1)


# ------------------------------------------------------------------------------------------------ policy
@dataclass(frozen=True)
class _Plan:
    """Every random choice of one `rand_augment` call; (num_ops, B) tensors on the generator's device."""

    names: tuple[str, ...]  # the op list that `op` indexes
    op: torch.Tensor  # int64: which op each image gets at each layer
    applied: torch.Tensor  # bool: whether that op is applied (probability 0.5)
    level: torch.Tensor  # float64: its magnitude, drawn and clipped
    sign: torch.Tensor  # float64 +1 / -1: the sign of its argument, for the signed ops


def _sample_plan(
    batch: int,
    generator: torch.Generator,
    *,
    num_ops: int = 2,
    magnitude: float = 9.0,
    magnitude_std: float = 0.5,
    increasing: bool = True,
    max_magnitude: float = 10.0,
    prob: float = _PROB,
) -> _Plan:
    if num_ops < 0 or magnitude_std < 0 or max_magnitude < 0:
        raise ValueError(
            f"need num_ops, magnitude_std, max_magnitude >= 0, got {num_ops}, {magnitude_std}, {max_magnitude}"
        )
    names = RANDAUGMENT_OPS if increasing else _RAND_OPS_PLAIN
    shape, device = (num_ops, batch), generator.device
    op = torch.randint(0, len(names), shape, generator=generator, device=device)
    applied = torch.rand(shape, generator=generator, device=device) < prob
    if math.isinf(magnitude_std):  # timm: uniform in [0, magnitude]
        level = magnitude * torch.rand(shape, generator=generator, device=device, dtype=torch.float64)
    elif magnitude_std > 0:
        level = magnitude + magnitude_std * torch.randn(shape, generator=generator, device=device, dtype=torch.float64)
    else:
        level = torch.full(shape, float(magnitude), dtype=torch.float64, device=device)
    level = level.clamp(0.0, max_magnitude)  # timm clips, it does not redraw
    negate = torch.rand(shape, generator=generator, device=device) > 0.5  # timm's _randomly_negate
    sign = 1.0 - 2.0 * negate.to(torch.float64)
    return _Plan(names, op, applied, level, sign)


def _apply_plan(x: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """Apply the plan's ops in layer order; within a layer, each op once to all the images it was drawn for."""
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected a batch (B, C, H, W) with C = 1 or 3, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected float images in [0, 1], got dtype {x.dtype}")
    if plan.op.shape[1] != len(x):
        raise ValueError(f"plan is for {plan.op.shape[1]} images, batch has {len(x)}")
    out = x.to(torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype).clone()
    for layer in range(plan.op.shape[0]):
        for k, name in enumerate(plan.names):
            chosen = ((plan.op[layer] == k) & plan.applied[layer]).nonzero().squeeze(1)
            if len(chosen) == 0:
                continue
            op = _OPS[name]
            arg = None if op.arg is None else op.arg(plan.level[layer, chosen], plan.sign[layer, chosen])
            index = chosen.to(x.device)
            arg = None if arg is None else arg.to(x.device)
            out[index] = op.apply(out[index], arg).clamp(0, 1)  # PIL clips every op's result
    return out.to(x.dtype)


def rand_augment(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    num_ops: int = 2,
    magnitude: float = 9.0,
    magnitude_std: float = 0.5,
    increasing: bool = True,
    max_magnitude: float = 10.0,
) -> torch.Tensor:
    """timm's RandAugment ("rand-m9-mstd0.5-inc1" with the defaults) on float images x (B, C, H, W) in
    [0, 1], C = 1 or 3: each image independently gets `num_ops` ops drawn uniformly with replacement from
    RANDAUGMENT_OPS, each applied with probability 0.5 at its own magnitude ~ N(magnitude, magnitude_std)
    clipped to [0, max_magnitude] (see the module docstring for the ops, and for the differences from
    timm/PIL: float arithmetic, bilinear resampling, fill 0.5). Every random draw comes from `generator`
    (made on its device), so a seed gives the same batch; returns a new tensor of x's shape and dtype."""
    plan = _sample_plan(
        len(x), generator, num_ops=num_ops, magnitude=magnitude, magnitude_std=magnitude_std,
        increasing=increasing, max_magnitude=max_magnitude,
    )
    return _apply_plan(x, plan)
