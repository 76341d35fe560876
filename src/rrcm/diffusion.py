"""EDM (variance-exploding) diffusion conventions shared by rRCM pre-training, fine-tuning and certification.

Everything that fixes "which noise level does the model think it sees" lives here, so that training and
certification cannot drift apart:

- data live in [-1, 1] (``pixels_to_diffusion``) and a trajectory point is ``x + sigma * eps``;
- noise levels come from the Karras grid (``karras_sigmas``), whose size grows 21 -> 41 -> 81 during
  pre-training (``curriculum_num_points``);
- the encoder is told its noise level through ``c_in`` (input scaling) and ``c_noise`` (time token);
- a smoothing sigma on [0, 1] pixels becomes ``2 * sigma`` in [-1, 1] space, and the time condition used
  at fine-tuning / certification is that value snapped onto the final grid (``conditioning_sigma``),
  because the encoder was only ever trained at grid points.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import numpy as np
import torch

__all__ = [
    "SIGMA_MIN",
    "SIGMA_MAX",
    "RHO",
    "SIGMA_DATA",
    "CURRICULUM_START",
    "CURRICULUM_END",
    "karras_sigmas",
    "curriculum_num_points",
    "sample_adjacent_index",
    "add_noise",
    "c_in",
    "c_noise",
    "pixels_to_diffusion",
    "smoothing_to_diffusion_sigma",
    "snap_to_grid",
    "conditioning_sigma",
]

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
RHO = 7.0
SIGMA_DATA = 0.5
CURRICULUM_START = 21  # grid points at the start of pre-training
CURRICULUM_END = 81  # grid points at the end (21 -> 41 -> 81); also the grid used for conditioning


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _positive_finite(value: Any, name: str) -> float:
    v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return v


# ----------------------------------------------------------------------------------------------------
# The noise grid and its curriculum
# ----------------------------------------------------------------------------------------------------


def karras_sigmas(
    num_points: int,
    sigma_min: float = SIGMA_MIN,
    sigma_max: float = SIGMA_MAX,
    rho: float = RHO,
) -> torch.Tensor:
    """The Karras et al. (2022) noise grid, float64, in DESCENDING order (sigma_0 = sigma_max).

    sigma_i = (sigma_max^(1/rho) + i/(N-1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, i = 0..N-1.

    Descending matches the sampling direction and the consistency-model convention that index i is the
    noisier of the adjacent pair (i, i+1). The ends are set exactly, and i/(N-1) is a correctly rounded
    division, so a grid of N points is bit-for-bit a subset of the grid of 2(N-1)+1 points (21 -> 41 -> 81):
    the curriculum refines the grid without moving old points.
    """
    n = _as_int(num_points, "num_points")
    if n < 2:
        raise ValueError(f"num_points must be >= 2, got {num_points!r}")
    lo = _positive_finite(sigma_min, "sigma_min")
    hi = _positive_finite(sigma_max, "sigma_max")
    r = _positive_finite(rho, "rho")
    if not lo < hi:
        raise ValueError(f"sigma_min must be < sigma_max, got {sigma_min!r} >= {sigma_max!r}")
    t = torch.arange(n, dtype=torch.float64) / (n - 1)
    hi_r, lo_r = hi ** (1.0 / r), lo ** (1.0 / r)
    sigmas = (hi_r + t * (lo_r - hi_r)) ** r
    sigmas[0] = hi
    sigmas[-1] = lo
    return sigmas


CURRICULA = ("rrcm", "equal-stages")


def curriculum_num_points(
    step: int,
    total_steps: int,
    start: int = CURRICULUM_START,
    end: int = CURRICULUM_END,
    schedule: str = "rrcm",
) -> int:
    """Number of grid points at optimisation ``step`` of ``total_steps`` (iCT-style doubling).

    The number of grid INTERVALS doubles at each stage, s0 * 2^k with s0 = start - 1, up to s1 = end - 1
    (s1/s0 must be a power of two, so each new grid contains the previous one).

    rrcm          the rRCM authors' schedule: K' = ceil(K / log2(ceil(s1/s0) + 1)) and
                  N(k) = min(s0 * 2^ceil(k/K'), s1) + 1. With 21 -> 81 points: 21 at k = 0 only, 41 while
                  k <= K' (43% of training), 81 after (57%).
    equal-stages  rrcm's earlier schedule: K+1 equal stages of ceil(total_steps / (K+1)) steps, with
                  K = log2(s1/s0); steps at or past ``total_steps`` on the final grid (for very short runs
                  the ceiling can leave the last stage empty, e.g. total_steps = 4 gives 21, 21, 41, 41).
    """
    step = _as_int(step, "step")
    total = _as_int(total_steps, "total_steps")
    start = _as_int(start, "start")
    end = _as_int(end, "end")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if total < 1:
        raise ValueError(f"total_steps must be >= 1, got {total}")
    if start < 2 or end < start:
        raise ValueError(f"need 2 <= start <= end, got start={start}, end={end}")
    ratio, rem = divmod(end - 1, start - 1)
    if rem or ratio & (ratio - 1):
        raise ValueError(
            f"(end-1)/(start-1) must be a power of two so grids nest, got ({end}-1)/({start}-1)"
        )
    if schedule == "rrcm":
        stage_len = math.ceil(total / math.log2(ratio + 1))  # K'
        doublings = -(-step // stage_len)  # ceil(k / K')
        return min((start - 1) * 2 ** min(doublings, 62), end - 1) + 1
    if schedule != "equal-stages":
        raise ValueError(f"unknown curriculum {schedule!r}; choose one of {', '.join(CURRICULA)}")
    k_max = ratio.bit_length() - 1
    stage_len = -(-total // (k_max + 1))  # ceil
    k = k_max if step >= total else min(step // stage_len, k_max)
    return (start - 1) * 2**k + 1


def sample_adjacent_index(num_points: int, generator: torch.Generator) -> int:
    """One grid index i, uniform on [0, N-2], for the whole global batch at this step.

    The adjacent pair is (sigma_i, sigma_{i+1}) with sigma_i the noisier point. The paper samples one
    temporal step per iteration for the whole batch, so every example (and every process; the training
    loop seeds ``generator`` identically everywhere) uses the same pair; the InfoNCE negatives then share
    the query's noise level. Deterministic given the generator's state.
    """
    n = _as_int(num_points, "num_points")
    if n < 2:
        raise ValueError(f"num_points must be >= 2, got {num_points!r}")
    if not isinstance(generator, torch.Generator):
        raise ValueError("generator must be a torch.Generator")
    return int(torch.randint(0, n - 1, (1,), generator=generator, device=generator.device).item())


# ----------------------------------------------------------------------------------------------------
# Noising and the network's view of sigma
# ----------------------------------------------------------------------------------------------------


def add_noise(x: torch.Tensor, sigma, eps: torch.Tensor) -> torch.Tensor:
    """A trajectory point x + sigma * eps (variance exploding: x is not rescaled).

    ``sigma`` is a float, a 0-dim tensor, or a per-example tensor of shape (B,) broadcast over the other
    dimensions of ``x`` (B, C, H, W, ...).
    """
    if x.shape != eps.shape:
        raise ValueError(f"x and eps must have the same shape, got {tuple(x.shape)} and {tuple(eps.shape)}")
    if isinstance(sigma, torch.Tensor):
        s = sigma.to(device=x.device, dtype=x.dtype)
        if s.ndim == 1 and x.ndim >= 1 and s.shape[0] == x.shape[0]:
            s = s.reshape((-1,) + (1,) * (x.ndim - 1))
        elif s.ndim != 0:
            raise ValueError(
                f"sigma must be a scalar or of shape ({x.shape[0] if x.ndim else ''},), got {tuple(s.shape)}"
            )
        return x + s * eps
    return x + float(sigma) * eps


def _apply(sigma, torch_fn, numpy_fn, math_fn):
    if isinstance(sigma, torch.Tensor):
        return torch_fn(sigma)
    if isinstance(sigma, np.ndarray):
        return numpy_fn(sigma)
    return math_fn(float(sigma))


def c_in(sigma):
    """EDM input scaling 1 / sqrt(sigma^2 + SIGMA_DATA^2): keeps the network input at unit-ish variance
    at every noise level. Returns the type it was given (float, numpy array or tensor)."""
    return _apply(
        sigma,
        lambda s: torch.rsqrt(s * s + SIGMA_DATA**2),
        lambda s: 1.0 / np.sqrt(s * s + SIGMA_DATA**2),
        lambda s: 1.0 / math.sqrt(s * s + SIGMA_DATA**2),
    )


def c_noise(sigma):
    """Time input 250 * ln(sigma) (consistency models' 1000 * 0.25 * ln sigma), fed to the time token.
    Returns the type it was given; sigma must be positive."""
    return _apply(
        sigma,
        lambda s: 250.0 * torch.log(s),
        lambda s: 250.0 * np.log(s),
        lambda s: 250.0 * math.log(s),
    )


def pixels_to_diffusion(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels -> [-1, 1] diffusion space (2x - 1), the range the EDM grid is defined on."""
    return x01 * 2.0 - 1.0


# ----------------------------------------------------------------------------------------------------
# Smoothing sigma -> conditioning sigma
# ----------------------------------------------------------------------------------------------------


def smoothing_to_diffusion_sigma(sigma_rs: float) -> float:
    """Noise sigma on [0, 1] pixels is 2 * sigma in [-1, 1] space (the map 2x - 1 doubles distances)."""
    s = float(sigma_rs)
    if not math.isfinite(s) or s < 0:
        raise ValueError(f"sigma_rs must be a finite number >= 0, got {sigma_rs!r}")
    return 2.0 * s


def _snap_index(sigma: float, grid: torch.Tensor) -> int:
    s = float(sigma)
    if not math.isfinite(s):
        raise ValueError(f"sigma must be finite, got {sigma!r}")
    if not isinstance(grid, torch.Tensor) or grid.ndim != 1 or grid.numel() == 0:
        raise ValueError("grid must be a non-empty 1-D tensor")
    g = grid.detach().to(device="cpu", dtype=torch.float64)
    dist = (g - s).abs()
    ties = torch.nonzero(dist == dist.min()).flatten()
    # among equally near points take the LARGER sigma
    return int(ties[torch.argmax(g[ties])].item())


def snap_to_grid(sigma: float, grid: torch.Tensor) -> float:
    """The grid value nearest to ``sigma``, as a python float equal to a grid element.

    The encoder was trained only at grid points, so at fine-tuning / certification it is told the grid
    sigma nearest the real one. Ties go to the LARGER sigma so the model is never told there is less
    noise than there really is. Values outside the grid snap to its ends.
    """
    idx = _snap_index(sigma, grid)
    return float(grid[idx].item())


def conditioning_sigma(sigma_rs: float, num_points: int = CURRICULUM_END) -> dict:
    """Everything that fixes the time condition for a model fine-tuned at smoothing sigma ``sigma_rs``.

    JSON-able; the fine-tuned checkpoint stores it so certification never needs training-time flags:
    {"sigma_rs", "sigma_diffusion" (= 2 sigma_rs), "sigma_condition" (snapped onto
    karras_sigmas(num_points)), "grid_index", "grid": {num_points, sigma_min, sigma_max, rho, sigma_data}}.
    """
    s = _positive_finite(sigma_rs, "sigma_rs")
    n = _as_int(num_points, "num_points")
    grid = karras_sigmas(n)
    sigma_diffusion = smoothing_to_diffusion_sigma(s)
    idx = _snap_index(sigma_diffusion, grid)
    return {
        "sigma_rs": s,
        "sigma_diffusion": sigma_diffusion,
        "sigma_condition": float(grid[idx].item()),
        "grid_index": idx,
        "grid": {
            "num_points": n,
            "sigma_min": SIGMA_MIN,
            "sigma_max": SIGMA_MAX,
            "rho": RHO,
            "sigma_data": SIGMA_DATA,
        },
    }
