"""View augmentations for instance discrimination (MoCo v3 / BYOL recipe), on batches in plain torch.

Every function takes a batch `x` of images in [0, 1], shape (B, C, H, W), floating point, and an
explicit `torch.Generator`, and returns a batch of the same dtype on the same device, still in [0, 1].
Each image gets its own random parameters. The parameters are drawn on the generator's device (use a
CPU generator) and then moved to the batch's, so a seed gives the same views on any device. Each
function draws a fixed number of values per call whatever their outcome (retries included), so the
generator's stream never depends on the pixel values.

    views = ContrastiveViews()                              # MoCo v3 recipe for 224 px colour images
    v1, v2 = views(x, generator)
    v1, v2 = two_views(x, generator, scale_min=0.25, blur=False)   # tiny (8x8, 28x28) images

The operations, as in torchvision (which is not used):

- `random_resized_crop`: area fraction uniform in `scale`, aspect ratio log-uniform in `ratio`,
  up to 10 tries per image, else a centre crop; then bilinear resampling of the crop box to the output
  size through one `affine_grid` / `grid_sample` call for the whole batch. Unlike torchvision, there
  is no antialiasing when a crop is *shrunk* (only matters when the output is smaller than the crop,
  e.g. ImageNet at 224), and samples at the crop's border blend with the pixels just outside it
  instead of clamping at its edge.
- `random_hflip`: the one from `rrcm.data.augment`.
- `color_jitter`: brightness, contrast, saturation factors uniform in [max(0, 1 - s), 1 + s], hue shift
  uniform in [-h, h] turns, applied in a random order per image (as torchvision), each step clamped
  to [0, 1]. Hue is shifted in HSV space (RGB -> HSV -> RGB in torch). A strength of 0 skips that
  operation exactly. On one-channel images saturation and hue are skipped (as torchvision does).
- `random_grayscale`: ITU-R 601 luma 0.299 R + 0.587 G + 0.114 B, replicated to the 3 channels;
  a no-op on one-channel images.
- `gaussian_blur`: sigma uniform in `sigma` per image, kernel ~10% of the smaller side (odd, >= 3;
  23 at 224 px, 3 at 32 px), separable, reflect padding, one grouped convolution for the batch.
- `solarize`: pixels >= threshold become 1 - pixel.

`view_recipe` says which operations a view applies (colour operations are skipped for grey images,
blur may be switched off) and `ContrastiveViews` / `two_views` apply the two MoCo v3 recipes:
view 1 = crop + flip + jitter(p 0.8) + grayscale(p 0.2) + blur(p 1.0);
view 2 = crop + flip + jitter(p 0.8) + grayscale(p 0.2) + blur(p 0.1) + solarize(p 0.2).

Small images: a crop down to 8% of the area of an 8x8 digit keeps about 5 pixels, so use
`scale_min` 0.2-0.35 for images of 32 px and below, and `blur=False` for 8x8 (even a 3-tap blur
with sigma up to 2 nearly erases strokes that are one or two pixels wide).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from rrcm.data.augment import random_hflip

__all__ = [
    "LUMA_WEIGHTS",
    "ContrastiveViews",
    "apply_recipe",
    "blur_kernel_size",
    "color_jitter",
    "gaussian_blur",
    "random_grayscale",
    "random_hflip",
    "random_resized_crop",
    "solarize",
    "two_views",
    "view_recipe",
]

LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601
_CROP_TRIES = 10


# ---------------------------------------------------------------------------------------------- helpers


def _check_images(x: torch.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"expected floating-point images in [0, 1], got dtype {x.dtype}")


def _check_p(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {p}")


def _rand(generator: torch.Generator, *shape: int) -> torch.Tensor:
    """Uniform [0, 1) float32 draws on the generator's device, kept there (callers move them)."""
    return torch.rand(shape, generator=generator, device=generator.device)


def _selected(batch: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Indices (on `device`) of the images an operation applied with probability `p` acts on."""
    chosen = _rand(generator, batch) < p
    return chosen.nonzero().squeeze(1).to(device)


def _apply_to(x: torch.Tensor, index: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """`x` with the images at `index` replaced by `fn(x[index])` (the input is not modified)."""
    if index.numel() == 0:
        return x
    if index.numel() == x.shape[0]:
        return fn(x)
    return x.index_copy(0, index, fn(x[index]))


def _luma(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) ITU-R 601 luma of RGB images (B, 3, H, W)."""
    weights = torch.tensor(LUMA_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * weights).sum(dim=1, keepdim=True)


def _require_rgb(x: torch.Tensor, what: str) -> None:
    if x.shape[1] != 3:
        raise ValueError(f"{what} needs RGB images (C = 3), got C = {x.shape[1]}")


# ----------------------------------------------------------------------------------------------- crops


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _crop_boxes(
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> torch.Tensor:
    """(B, 4) int64 crop boxes (top, left, h, w) on the generator's device, as torchvision samples them.

    Per image: up to 10 tries of area fraction ~ U(scale), aspect ratio (w / h) ~ logU(ratio),
    w = round(sqrt(A r)), h = round(sqrt(A / r)); the first try that fits is placed at a uniform
    offset; if none fits, the largest centre crop with aspect ratio clamped into `ratio`.
    All 4 x 10 uniforms per image are always drawn.
    """
    if not (0.0 < scale[0] <= scale[1]):
        raise ValueError(f"scale must satisfy 0 < min <= max, got {tuple(scale)}")
    if not (0.0 < ratio[0] <= ratio[1]):
        raise ValueError(f"ratio must satisfy 0 < min <= max, got {tuple(ratio)}")
    draws = _rand(generator, 4, batch, _CROP_TRIES).double()
    area = height * width * (scale[0] + (scale[1] - scale[0]) * draws[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * draws[1])
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first try that fits
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    top = torch.floor(draws[2].gather(1, first).squeeze(1) * (height - h + 1)).clamp(max=height - h)
    left = torch.floor(draws[3].gather(1, first).squeeze(1) * (width - w + 1)).clamp(max=width - w)

    # Fallback: centre crop of the whole image, aspect ratio clamped into `ratio`.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = int(round(height * ratio[1])), height
    else:
        fw, fh = width, height
    fallback = torch.tensor([(height - fh) // 2, (width - fw) // 2, fh, fw], dtype=torch.float64, device=draws.device)
    boxes = torch.stack([top, left, h, w], dim=1)
    boxes = torch.where(fits.any(dim=1, keepdim=True), boxes, fallback)
    return boxes.long()


def _resample_boxes(x: torch.Tensor, boxes: torch.Tensor, output_size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling of pixel boxes (top, left, h, w), one per image, to `output_size`.

    A box covers pixels [top, top + h) x [left, left + w); in the normalised coordinates of
    `grid_sample(align_corners=False)` its edges are 2 * pixel_edge / size - 1, so the affine map from
    output to input coordinates is a scale of (w / W, h / H) about the box's centre. When the output is
    no larger than the box every sample lies between pixel centres inside the box and this equals
    `F.interpolate(box, output_size, mode="bilinear", align_corners=False)` of the sliced box.
    """
    batch, channels, height, width = x.shape
    boxes = boxes.to(device=x.device, dtype=torch.float64)
    top, left, h, w = boxes.unbind(1)
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64, device=x.device)
    theta[:, 0, 0] = w / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta.to(x.dtype), [batch, channels, *output_size], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.clamp_(0.0, 1.0)


def random_resized_crop(
    x: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    output_size: int | Sequence[int] | None = None,
) -> torch.Tensor:
    """Crop each image to a random box (area fraction in `scale`, aspect ratio w/h in `ratio`) and
    resample it bilinearly to `output_size` (int or (h, w); default the input's size)."""
    _check_images(x)
    batch, _, height, width = x.shape
    out_hw = (height, width) if output_size is None else _pair(output_size)
    if batch == 0:
        return x.new_empty(0, x.shape[1], *out_hw)
    scale_pair = (float(scale[0]), float(scale[1]))
    ratio_pair = (float(ratio[0]), float(ratio[1]))
    boxes = _crop_boxes(batch, height, width, scale_pair, ratio_pair, generator)
    return _resample_boxes(x, boxes, out_hw)


# --------------------------------------------------------------------------------------------- colour


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV, each in [0, 1] (hue in turns)."""
    r, g, b = x.unbind(1)
    maxc = x.amax(dim=1)
    minc = x.amin(dim=1)
    delta = maxc - minc
    grey = delta <= 0
    safe = torch.where(grey, torch.ones_like(delta), delta)
    hue_r = torch.remainder((g - b) / safe, 6.0)
    hue_g = (b - r) / safe + 2.0
    hue_b = (r - g) / safe + 4.0
    hue = torch.where(maxc == r, hue_r, torch.where(maxc == g, hue_g, hue_b)) / 6.0
    hue = torch.where(grey, torch.zeros_like(hue), hue)
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack([hue, sat, maxc], dim=1)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of `_rgb_to_hsv`: (R, G, B) = v - v s clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6
    for n = 5, 3, 1."""
    hue, sat, val = hsv.unbind(1)
    n = torch.tensor([5.0, 3.0, 1.0], dtype=hsv.dtype, device=hsv.device).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * hue[:, None], 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return (val[:, None] - val[:, None] * sat[:, None] * ramp).clamp(0.0, 1.0)


def _adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp(0.0, 1.0)


def _adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    grey = _luma(x) if x.shape[1] == 3 else x
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * mean).clamp(0.0, 1.0)


def _adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    _require_rgb(x, "saturation")
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * _luma(x)).clamp(0.0, 1.0)


def _adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images by `shift` turns (per image), through HSV."""
    _require_rgb(x, "hue")
    hsv = _rgb_to_hsv(x)
    hue = torch.remainder(hsv[:, 0] + shift.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(torch.stack([hue, hsv[:, 1], hsv[:, 2]], dim=1))


_JITTER_OPS = (_adjust_brightness, _adjust_contrast, _adjust_saturation, _adjust_hue)


def _jitter_params(
    batch: int, strengths: tuple[float, float, float, float], p: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(applied (B,) bool, factors (B, 4), order (B, 4)) on the generator's device.

    factors[:, 0:3] ~ U[max(0, 1 - s), 1 + s] (brightness, contrast, saturation), factors[:, 3] ~ U[-h, h]
    (hue shift); order[i] is a uniformly random permutation of the four operations.
    """
    draws = _rand(generator, 3, batch, 4)
    applied = draws[0, :, 0] < p
    lo = torch.tensor([max(0.0, 1 - s) for s in strengths[:3]] + [-strengths[3]], device=draws.device)
    hi = torch.tensor([1 + s for s in strengths[:3]] + [strengths[3]], device=draws.device)
    factors = lo + (hi - lo) * draws[1]
    order = draws[2].argsort(dim=1)
    return applied, factors, order


def _apply_jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, enabled: Sequence[bool]) -> torch.Tensor:
    """Apply the enabled jitter operations to each image in its own `order`, with its own `factors`."""
    factors = factors.to(device=x.device, dtype=x.dtype)
    order = order.to(x.device)
    for step in range(4):
        for op in range(4):
            if not enabled[op]:
                continue
            index = (order[:, step] == op).nonzero().squeeze(1)
            fn = _JITTER_OPS[op]
            x = _apply_to(x, index, lambda images, fn=fn, index=index, op=op: fn(images, factors[index, op]))
    return x


def color_jitter(
    x: torch.Tensor,
    generator: torch.Generator,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.2,
    hue: float = 0.1,
    p: float = 0.8,
) -> torch.Tensor:
    """With probability `p` per image, jitter brightness, contrast, saturation and hue in a random order.

    Factors are uniform in [max(0, 1 - s), 1 + s]; the hue shift is uniform in [-hue, hue] turns (HSV).
    A strength of 0 leaves that property exactly as it is. One-channel images get brightness and
    contrast only; other channel counts than 1 and 3 are refused when saturation or hue is asked for.
    """
    _check_images(x)
    _check_p(p)
    for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"hue must be in [0, 0.5], got {hue}")
    channels = x.shape[1]
    colour = channels != 1
    enabled = (brightness > 0, contrast > 0, colour and saturation > 0, colour and hue > 0)
    if (enabled[2] or enabled[3]) and channels != 3:
        raise ValueError(f"saturation and hue need RGB images (C = 3) or grey ones (C = 1), got C = {channels}")
    applied, factors, order = _jitter_params(x.shape[0], (brightness, contrast, saturation, hue), p, generator)
    index = applied.nonzero().squeeze(1).to(x.device)
    factors = factors.to(x.device)
    order = order.to(x.device)
    return _apply_to(x, index, lambda images: _apply_jitter(images, factors[index], order[index], enabled))


def random_grayscale(x: torch.Tensor, generator: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """With probability `p` per image, replace RGB by its ITU-R 601 luma on all three channels.

    One-channel images are returned unchanged (the draws are still made)."""
    _check_images(x)
    _check_p(p)
    index = _selected(x.shape[0], p, generator, x.device)
    if x.shape[1] == 1:
        return x
    _require_rgb(x, "random_grayscale")
    return _apply_to(x, index, lambda images: _luma(images).clamp(0.0, 1.0).expand(-1, 3, -1, -1))


# ----------------------------------------------------------------------------------------- blur, solarize


def blur_kernel_size(height: int, width: int) -> int:
    """Odd kernel size of about 10% of the smaller side, at least 3 (23 at 224 px, 3 at 32 px)."""
    size = int(round(0.1 * min(height, width)))
    if size % 2 == 0:
        size += 1
    return max(size, 3)


def _gaussian_kernels(sigma: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) normalised 1-D Gaussian kernels, one per sigma."""
    offsets = torch.arange(size, dtype=sigma.dtype, device=sigma.device) - (size // 2)
    kernels = torch.exp(-0.5 * (offsets[None, :] / sigma[:, None]) ** 2)
    return kernels / kernels.sum(dim=1, keepdim=True)


def _blur(x: torch.Tensor, sigma: torch.Tensor, size: int) -> torch.Tensor:
    """Separable Gaussian blur of each image with its own sigma: one grouped convolution per axis."""
    batch, channels, height, width = x.shape
    kernels = _gaussian_kernels(sigma.to(device=x.device, dtype=torch.float64), size).to(x.dtype)
    kernels = kernels.repeat_interleave(channels, dim=0)  # (B * C, size)
    half = size // 2
    flat = F.pad(x.reshape(1, batch * channels, height, width), (half, half, half, half), mode="reflect")
    flat = F.conv2d(flat, kernels.view(-1, 1, size, 1), groups=batch * channels)
    flat = F.conv2d(flat, kernels.view(-1, 1, 1, size), groups=batch * channels)
    return flat.view(batch, channels, height, width).clamp(0.0, 1.0)


def gaussian_blur(
    x: torch.Tensor,
    generator: torch.Generator,
    p: float = 0.5,
    sigma: tuple[float, float] = (0.1, 2.0),
    kernel_size: int | None = None,
) -> torch.Tensor:
    """With probability `p` per image, Gaussian blur with sigma ~ U(sigma) per image.

    `kernel_size` (odd) defaults to `blur_kernel_size(H, W)`; padding reflects the border."""
    _check_images(x)
    _check_p(p)
    if not 0.0 < sigma[0] <= sigma[1]:
        raise ValueError(f"sigma must satisfy 0 < min <= max, got {tuple(sigma)}")
    size = blur_kernel_size(x.shape[2], x.shape[3]) if kernel_size is None else int(kernel_size)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    draws = _rand(generator, 2, x.shape[0])
    index = (draws[0] < p).nonzero().squeeze(1).to(x.device)
    sigmas = (sigma[0] + (sigma[1] - sigma[0]) * draws[1].double()).to(x.device)
    return _apply_to(x, index, lambda images: _blur(images, sigmas[index], size))


def solarize(x: torch.Tensor, generator: torch.Generator, p: float = 0.2, threshold: float = 0.5) -> torch.Tensor:
    """With probability `p` per image, invert the pixels >= `threshold` (x -> 1 - x)."""
    _check_images(x)
    _check_p(p)
    index = _selected(x.shape[0], p, generator, x.device)
    return _apply_to(x, index, lambda images: torch.where(images >= threshold, 1.0 - images, images))


# --------------------------------------------------------------------------------------------- recipes

_OPS: dict[str, Callable[..., torch.Tensor]] = {
    "random_resized_crop": random_resized_crop,
    "random_hflip": random_hflip,
    "color_jitter": color_jitter,
    "random_grayscale": random_grayscale,
    "gaussian_blur": gaussian_blur,
    "solarize": solarize,
}


def view_recipe(
    view: int,
    *,
    grey: bool,
    blur: bool = True,
    scale_min: float = 0.08,
    output_size: int | Sequence[int] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """The operations (name, keyword arguments), in order, of MoCo v3 view `view` (1 or 2).

    view 1: crop + flip + jitter(p 0.8) + grayscale(p 0.2) + blur(p 1.0)
    view 2: crop + flip + jitter(p 0.8) + grayscale(p 0.2) + blur(p 0.1) + solarize(p 0.2)
    `grey`: colour operations are skipped (jitter keeps brightness and contrast only; no grayscale).
    `blur=False` drops the blur. `scale_min` is the smallest crop area fraction.
    """
    if view not in (1, 2):
        raise ValueError(f"view must be 1 or 2, got {view}")
    if not 0.0 < scale_min <= 1.0:
        raise ValueError(f"scale_min must be in (0, 1], got {scale_min}")
    jitter = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1, "p": 0.8}
    if grey:
        jitter.update(saturation=0.0, hue=0.0)
    recipe: list[tuple[str, dict[str, Any]]] = [
        ("random_resized_crop", {"scale": (scale_min, 1.0), "output_size": output_size}),
        ("random_hflip", {"p": 0.5}),
        ("color_jitter", jitter),
    ]
    if not grey:
        recipe.append(("random_grayscale", {"p": 0.2}))
    if blur:
        recipe.append(("gaussian_blur", {"p": 1.0 if view == 1 else 0.1, "sigma": (0.1, 2.0)}))
    if view == 2:
        recipe.append(("solarize", {"p": 0.2, "threshold": 0.5}))
    return recipe


def apply_recipe(
    x: torch.Tensor, generator: torch.Generator, recipe: Sequence[tuple[str, dict[str, Any]]]
) -> torch.Tensor:
    """Apply the operations of `recipe` (see `view_recipe`) in order."""
    for name, params in recipe:
        x = _OPS[name](x, generator, **params)
    return x


def _is_grey(x: torch.Tensor, grey: bool | None) -> bool:
    channels = x.shape[1]
    if grey is None:
        return channels == 1
    if not grey and channels != 3:
        raise ValueError(f"colour augmentations need RGB images (C = 3), got C = {channels}: pass grey=True")
    return grey


@dataclass(frozen=True)
class ContrastiveViews:
    """The two MoCo v3 views of a batch: `v1, v2 = ContrastiveViews()(x, generator)`.

    `scale_min`: smallest crop area fraction (0.08 for ImageNet; 0.2-0.35 recommended for images of
    32 px and below, e.g. 8x8 digits). `blur`: False drops the Gaussian blur (recommended for 8x8).
    `grey`: None decides from the channel count (C == 1 is grey); True skips the colour operations
    also for 3-channel images. `output_size`: size of the views (default the input's).
    """

    scale_min: float = 0.08
    blur: bool = True
    grey: bool | None = None
    output_size: int | tuple[int, int] | None = None

    def recipe(self, view: int, grey: bool) -> list[tuple[str, dict[str, Any]]]:
        return view_recipe(view, grey=grey, blur=self.blur, scale_min=self.scale_min, output_size=self.output_size)

    def view(self, x: torch.Tensor, generator: torch.Generator, view: int) -> torch.Tensor:
        """One view (1 or 2) of the batch."""
        _check_images(x)
        return apply_recipe(x, generator, self.recipe(view, _is_grey(x, self.grey)))

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(view 1, view 2), drawn in that order from `generator`."""
        return self.view(x, generator, 1), self.view(x, generator, 2)


def two_views(
    x: torch.Tensor,
    generator: torch.Generator,
    grey: bool | None = None,
    *,
    scale_min: float = 0.08,
    blur: bool = True,
    output_size: int | tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two MoCo v3 views of `x` (see `ContrastiveViews`); `grey=None` means grey iff C == 1."""
    return ContrastiveViews(scale_min=scale_min, blur=blur, grey=grey, output_size=output_size)(x, generator)
